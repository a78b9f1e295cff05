"""The store this process logs to: MLflow pointed at the project's store, or at the one the
environment names (resolved by the one rule, checked to answer), with passwords masked in any
traceback a stage dies with."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from types import TracebackType

import mlflow

from pneumonia.console import quiet_console
from pneumonia.redaction import redact_text, tracking_urls
from pneumonia.tracking.locations import (
    REGISTRY_URI_VARIABLE,
    STORE_DIR,
    TRACKING_URI_VARIABLE,
    artifact_root,
    relocate_copied_store,
    resolve_store_uri,
    sqlite_database,
    store_locations,
)
from pneumonia.tracking.reachability import check_reachable


def _redacting_excepthook(
    kind: type[BaseException], error: BaseException, trace: TracebackType | None
) -> None:
    """Print an uncaught exception's traceback as Python does, with store passwords masked."""
    text = "".join(traceback.format_exception(kind, error, trace))
    sys.stderr.write(redact_text(text, *tracking_urls()))
    sys.stderr.flush()


def install_redacting_excepthook() -> None:
    """A traceback that a stage dies with is printed with MLflow passwords masked (idempotent)."""
    if sys.excepthook is not _redacting_excepthook:
        sys.excepthook = _redacting_excepthook


# The project store this process chose by default: set_tracking_uri exports it as
# MLFLOW_TRACKING_URI, which is then not the user's choice (another project's default, in a
# process that opens two).
_exported_default: str | None = None


def use_project_store(project_root: Path) -> tuple[str, str | None]:
    """Point MLflow at the project's store, or at MLFLOW_TRACKING_URI (and MLFLOW_REGISTRY_URI)
    resolved by the one rule (resolve_store_uri) and checked to answer (check_reachable);
    returns the tracking URI and the artifact root for new experiments (None: the server
    decides). The resolved URIs are exported, so subprocesses use the same store."""
    quiet_console()  # MLflow's store set-up lines ("Creating initial MLflow database tables")
    install_redacting_excepthook()
    global _exported_default
    configured = os.environ.get(TRACKING_URI_VARIABLE)
    if configured and configured != _exported_default:
        tracking_uri = resolve_store_uri(configured, project_root)
        check_reachable(tracking_uri)
        root = artifact_root(tracking_uri)
    else:
        tracking_uri, root = store_locations(project_root)
        (project_root / STORE_DIR).mkdir(parents=True, exist_ok=True)
        _exported_default = tracking_uri
    database = sqlite_database(tracking_uri)
    if database is not None:
        for old, new in relocate_copied_store(database).items():
            # stderr: predict's and promote's stdout carry their results.
            print(
                f"mlflow: {database} was copied or moved here: artifacts of {old} now go to {new}",
                file=sys.stderr,
            )
    registry_uri = os.environ.get(REGISTRY_URI_VARIABLE)
    if registry_uri:
        resolved = resolve_store_uri(registry_uri, project_root, REGISTRY_URI_VARIABLE)
        if resolved != tracking_uri:
            check_reachable(resolved, variable=REGISTRY_URI_VARIABLE)
        os.environ[REGISTRY_URI_VARIABLE] = resolved
        mlflow.set_registry_uri(resolved)
    mlflow.set_tracking_uri(tracking_uri)
    return tracking_uri, root
