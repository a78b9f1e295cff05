"""Store locations: the one rule that places a store URI against the project root, the project's
own store, and a copied or moved store re-pointed at its own artifacts."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlparse

from pneumonia.errors import PipelineError
from pneumonia.redaction import redact_url

STORE_DIR = "mlruns"
DATABASE_NAME = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"
REGISTRY_URI_VARIABLE = "MLFLOW_REGISTRY_URI"
# Where MLflow's SQLite schema records absolute artifact locations (relocate_copied_store).
ARTIFACT_LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
)
# Store URIs that MLflow reads as a name, not a path.
NAMED_STORES = ("databricks", "databricks-uc", "uc")


class StoreLocationError(PipelineError, ValueError):
    """A store URI whose location cannot be told."""


def store_locations(project_root: Path) -> tuple[str, str]:
    """(tracking URI, artifact root URI) of the project's local store."""
    store = (project_root / STORE_DIR).resolve()
    return f"sqlite:///{store / DATABASE_NAME}", (store / ARTIFACTS_DIR).as_uri()


def resolve_sqlite_url(url: str, project_root: Path) -> str:
    """A `sqlite:///relative/path` URL made absolute against the project root (its folder
    created); any other URL as it is. Shared with the Optuna storage (tuning.resolve_storage)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    path, separator, query = url[len(prefix) :].partition("?")
    if not path or path.startswith("/") or path == ":memory:":
        return url
    absolute = (project_root / unquote(path)).resolve()
    absolute.parent.mkdir(parents=True, exist_ok=True)
    return f"{prefix}{absolute}{separator}{query}"


def resolve_store_uri(uri: str, project_root: Path, variable: str = TRACKING_URI_VARIABLE) -> str:
    """The one rule for a store location: a relative SQLite URI, a relative `file:` URI or a
    bare relative path is relative to the project root (config.project_root, above any DVC
    temp workspace), never to the working folder. Servers and databases are left as they are.
    A `file://name` URI (a host, not a path) is refused with the fix."""
    if uri.startswith("sqlite:"):
        return resolve_sqlite_url(uri, project_root)
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StoreLocationError(
                f"{variable} {redact_url(uri)}: '{parsed.netloc}' is read as a host, not a "
                f"folder; write file:///absolute/path, or a path relative to the project root "
                f"({project_root}) such as file:{parsed.netloc}{parsed.path}"
            )
        path = Path(unquote(parsed.path))
        return path.as_uri() if path.is_absolute() else (project_root / path).resolve().as_uri()
    if uri in NAMED_STORES:
        return uri
    if not parsed.scheme or len(parsed.scheme) == 1:  # a bare path (or a Windows drive)
        path = Path(os.path.expanduser(uri))
        return path.as_uri() if path.is_absolute() else (project_root / path).resolve().as_uri()
    return uri


def sqlite_database(uri: str) -> Path | None:
    """The database file of an absolute `sqlite:////path` URI; None for anything else."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = unquote(uri[len(prefix) :].partition("?")[0])
    return Path(path) if path.startswith("/") else None


def _local_path(location: str) -> Path | None:
    """The local folder an artifact location names (`file:///x` or `/x`); None otherwise."""
    if location.startswith("file:"):
        parsed = urlparse(location)
        return Path(unquote(parsed.path)) if parsed.netloc in ("", "localhost") else None
    return Path(location) if location.startswith("/") else None


def relocate_copied_store(database: Path) -> dict[str, str]:
    """Re-point a copied or moved local store at its own artifacts; returns {old: new} location
    of each experiment moved.

    MLflow stores absolute artifact locations (an experiment's, and each run's, logged model's
    and model version's under it), and offers no call to change them. An experiment whose
    location is a project store's `<project>/mlruns/artifacts` (or `.../artifacts/<its id>`)
    while this database lives elsewhere came with a copied or moved store: its locations are
    rewritten to the `artifacts/` folder beside this database, so new runs log here and old ones
    read the copies here. Any other artifact root (a server's `/srv/artifacts`) is left alone.
    When only the database was copied (the artifacts are still where they were, and not here),
    only the experiment's location moves: old runs keep reading their files there, new ones log
    here.
    """
    if not database.is_file():
        return {}
    artifacts = database.parent.resolve() / ARTIFACTS_DIR
    connection = sqlite3.connect(database, timeout=60)
    try:
        listed = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        tables = {name for (name,) in listed}
        if "experiments" not in tables:
            return {}
        moves: dict[str, str] = {}
        alone: set[str] = set()
        rows = connection.execute("SELECT experiment_id, artifact_location FROM experiments")
        for experiment_id, location in rows.fetchall():
            old = _local_path(location or "")
            if old is None:
                continue
            # Only a project store's own shape (<project>/mlruns/artifacts): a database shared
            # with a server's artifact root elsewhere (/srv/artifacts) is not this project's.
            if old.name == ARTIFACTS_DIR and old.parent.name == STORE_DIR:
                new = artifacts  # as configure creates them: the store's artifacts/
            elif (
                old.parent.name == ARTIFACTS_DIR
                and old.parent.parent.name == STORE_DIR
                and old.name == str(experiment_id)
            ):
                new = artifacts / old.name  # MLflow's default form, <artifact root>/<id>
            else:
                continue
            if os.path.realpath(old) == os.path.realpath(new):
                continue
            moves[location] = new.as_uri() if location.startswith("file:") else str(new)
            # The database copied alone: its runs' files are still where they were, and stay
            # listed there; only what is logged from now on goes beside the copy.
            if old.exists() and not new.exists():
                alone.add(location)
        if not moves:
            return {}
        columns = {
            table: {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
            for table in {table for table, _ in ARTIFACT_LOCATION_COLUMNS} & tables
        }
        connection.execute("BEGIN IMMEDIATE")  # one writer; others wait (timeout above)
        for old_prefix, new_prefix in moves.items():
            for table, column in ARTIFACT_LOCATION_COLUMNS:
                if column not in columns.get(table, ()):
                    continue
                if old_prefix in alone and table != "experiments":
                    continue
                # The location itself, or anything under it (`<location>/<run id>/...`).
                connection.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                    f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                    (
                        new_prefix,
                        len(old_prefix) + 1,
                        old_prefix,
                        len(old_prefix) + 1,
                        f"{old_prefix}/",
                    ),
                )
        connection.commit()
    finally:
        connection.close()
    return moves


def artifact_root(tracking_uri: str) -> str | None:
    """Where new experiments keep their artifacts: beside a SQLite database; a server or a file
    store decides for itself (None)."""
    database = sqlite_database(tracking_uri)
    return (database.parent / ARTIFACTS_DIR).as_uri() if database is not None else None
