"""MLflow tracking shared by every stage: one run per stage execution, in one local store.

The store is a SQLite database under ``<project>/mlruns/`` with artifacts beside it, resolved
from the project root, so ``dvc exp run --temp`` and ``--queue`` (which run in
``<project>/.dvc/tmp/exps/...``) log to the same place. ``MLFLOW_TRACKING_URI`` overrides it,
for example with a shared tracking server (``http://host:5000``), which then chooses where
artifacts go.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from pneumonia.config import Config
from pneumonia.contracts.files import file_sha256

STORE_DIR = "mlruns"
DATABASE_NAME = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
# Which process owns a run: a RUNNING run whose process is gone on this host was killed.
PROCESS_HOST_TAG = "process.host"
PROCESS_ID_TAG = "process.pid"
ENDED_BECAUSE_TAG = "ended_because"
# DVC sets these for stage commands run by `dvc exp run`; logged so runs map to experiments.
DVC_ENVIRONMENT_TAGS = ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE")


def store_locations(project_root: Path) -> tuple[str, str]:
    """(tracking URI, artifact root URI) of the project's local store."""
    store = (project_root / STORE_DIR).resolve()
    return f"sqlite:///{store / DATABASE_NAME}", (store / ARTIFACTS_DIR).as_uri()


def use_project_store(project_root: Path) -> tuple[str, str | None]:
    """Point MLflow at the project's store, or at MLFLOW_TRACKING_URI when set; returns the
    tracking URI and the artifact root for new experiments (None: the server decides)."""
    tracking_uri, artifact_root = store_locations(project_root)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        tracking_uri, artifact_root = os.environ["MLFLOW_TRACKING_URI"], None
    else:
        (project_root / STORE_DIR).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    return tracking_uri, artifact_root


def configure(config: Config) -> str:
    """Point MLflow at the project's store (or MLFLOW_TRACKING_URI) and its experiment; returns
    the experiment id."""
    _, artifact_root = use_project_store(config.project_root)
    name = config.mlflow.experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        try:
            mlflow.create_experiment(name, artifact_location=artifact_root)
        except mlflow.exceptions.MlflowException:
            # Tuning workers starting together on one tracking server race to create it; the
            # loser uses the winner's.
            if mlflow.get_experiment_by_name(name) is None:
                raise
        experiment = mlflow.get_experiment_by_name(name)
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return experiment.experiment_id


def content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's sorted (relative path, file sha256) list."""
    if path.is_file():
        return file_sha256(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{child.relative_to(path).as_posix()}\0{content_hash(child)}\n".encode())
        return digest.hexdigest()
    raise FileNotFoundError(f"{path}: not found; run the upstream stage first (dvc repro)")


def git_state(workspace: Path) -> dict[str, str]:
    """Commit and dirty flag of the workspace; empty values outside a git repository."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=workspace, capture_output=True, text=True, check=False
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit or "unknown", "git_dirty": str(bool(dirty)).lower()}


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class StageRun:
    """The active MLflow run of one stage, with helpers for what every stage logs."""

    def __init__(self, config: Config, run: mlflow.ActiveRun):
        self.config = config
        self.run = run

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def _relative(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.config.workspace).as_posix()
        except ValueError:
            return str(path)

    def log_hashes(self, kind: str, paths: list[Path]) -> None:
        """Tags `input.<path>` / `output.<path>` = content sha256, to chain runs of one pipeline."""
        mlflow.set_tags({f"{kind}.{self._relative(p)}": content_hash(p) for p in paths})

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        mlflow.log_metrics({key: float(value) for key, value in metrics.items()})

    def log_json(self, data: Any, artifact_file: str) -> None:
        mlflow.log_text(json.dumps(data, indent=2, sort_keys=True), artifact_file)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path)

    def log_dataset(
        self, frame: pd.DataFrame, source: Path, name: str, context: str
    ) -> mlflow.data.dataset.Dataset:
        """Record a table as an MLflow input dataset (schema, digest, row count, source path);
        returns it, so metrics can name the dataset they were measured on."""
        with warnings.catch_warnings():
            # MLflow warns that a local path fits two equivalent source types, and that integer
            # columns cannot hold NaN; neither applies to these tables.
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(frame, source=str(source.resolve()), name=name)
            mlflow.log_input(dataset, context=context)
        return dataset


def process_tags() -> dict[str, str]:
    return {PROCESS_HOST_TAG: socket.gethostname(), PROCESS_ID_TAG: str(os.getpid())}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def close_orphaned_runs(experiment_id: str) -> list[str]:
    """End as KILLED the runs left RUNNING by a process of this host that is gone (a stage killed
    mid-run), and the RUNNING runs nested under them; returns their ids. Runs of live processes
    and of other hosts (tuning workers elsewhere) are left alone."""
    client = mlflow.MlflowClient()
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'")
    host, closed = socket.gethostname(), []
    for run in running:
        tags = run.data.tags
        pid = tags.get(PROCESS_ID_TAG, "")
        if tags.get(PROCESS_HOST_TAG) == host and pid.isdigit() and not _process_alive(int(pid)):
            closed.append(run.info.run_id)
            reason = f"process {pid} on {host} ended without closing the run (killed)"
            client.set_tag(run.info.run_id, ENDED_BECAUSE_TAG, reason)
            client.set_terminated(run.info.run_id, status="KILLED")
    for run in running:
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent in closed and run.info.run_id not in closed:
            closed.append(run.info.run_id)
            client.set_tag(
                run.info.run_id, ENDED_BECAUSE_TAG, f"its parent run {parent} was killed"
            )
            client.set_terminated(run.info.run_id, status="KILLED")
    return closed


@contextmanager
def stage_run(
    stage: str,
    config: Config,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
) -> Iterator[StageRun]:
    """One MLflow run named after the stage, with its params and provenance tags. Runs that a
    killed stage left RUNNING are closed first."""
    experiment_id = configure(config)
    closed = close_orphaned_runs(experiment_id)
    if closed:
        print(f"{stage}: closed {len(closed)} run(s) a killed process left RUNNING: {closed}")
    run_tags = {"stage": stage, **git_state(config.workspace), **process_tags(), **(tags or {})}
    run_tags.update(
        {name: os.environ[name] for name in DVC_ENVIRONMENT_TAGS if os.environ.get(name)}
    )
    with mlflow.start_run(run_name=stage, tags=run_tags) as run:
        mlflow.log_params(flatten(params))
        yield StageRun(config, run)
