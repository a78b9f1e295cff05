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
import traceback
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
# The description MLflow's UI shows for a run or an experiment (the "Description" box).
NOTE_TAG = "mlflow.note.content"
# A failed stage run: the error's type and message (the traceback is the artifact below).
ERROR_TAG = "error"
ERROR_TRACEBACK_ARTIFACT = "error/traceback.txt"
# MLflow's limits on a run tag's value (descriptions included) and an experiment tag's.
MAX_RUN_TAG_CHARS = 8000
MAX_EXPERIMENT_TAG_CHARS = 20000
# Run names are `<stage>@<label>`: the DVC experiment, else the commit, else this.
NO_GIT_LABEL = "workspace"
EXPERIMENT_DESCRIPTION = (
    "Pneumonia vs normal on pediatric chest X-rays (Kermany et al. 2018): one run per DVC "
    "stage execution (download, split, preprocess, train, evaluate; tune-worker for scale-out "
    "tuning), named `<stage>@<DVC experiment>` under `dvc exp run` and `<stage>@<git commit>` "
    "otherwise. Optuna trials are runs nested under train. The evaluate run's description is "
    "the model card; its metrics are grouped as val/, test/ and test_at_0.5/. Research use "
    "only, not a medical device."
)


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
    if NOTE_TAG not in experiment.tags:  # a description edited in the UI stays
        mlflow.MlflowClient().set_experiment_tag(
            experiment.experiment_id,
            NOTE_TAG,
            clip(EXPERIMENT_DESCRIPTION, MAX_EXPERIMENT_TAG_CHARS),
        )
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


def run_label(workspace: Path, environ: Mapping[str, str] | None = None) -> str:
    """What tells this pipeline execution from others: the DVC experiment's name under
    `dvc exp run` (DVC sets DVC_EXP_NAME for the stage commands), else the short git commit
    (`dvc repro`, a stage run directly), else `workspace` outside git."""
    environ = os.environ if environ is None else environ
    if environ.get("DVC_EXP_NAME"):
        return environ["DVC_EXP_NAME"]
    commit = git_state(workspace)["git_commit"]
    return commit[:7] if commit != "unknown" else NO_GIT_LABEL


def run_name(stage: str, workspace: Path, environ: Mapping[str, str] | None = None) -> str:
    """`train@q7-depth5` in a DVC experiment, `train@c1093cb` at a commit: the MLflow run's
    name, and the prefix of a fresh Optuna study's name."""
    return f"{stage}@{run_label(workspace, environ)}"


def clip(text: str, limit: int = MAX_RUN_TAG_CHARS) -> str:
    """Text cut to fit a tag, saying that it was cut."""
    if len(text) <= limit:
        return text
    marker = "\n... (cut to fit MLflow's tag limit)"
    return text[: limit - len(marker)] + marker


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

    @property
    def name(self) -> str:
        return self.run.info.run_name

    def describe(self, text: str) -> None:
        """The run's description in the MLflow UI: what the stage did, its key figures."""
        mlflow.set_tag(NOTE_TAG, clip(text))

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


def record_failure(error: BaseException) -> None:
    """On the active run: the error as the `error` tag and at the top of the description, the
    traceback as an artifact (MLflow marks the run FAILED as the `with` block exits)."""
    run = mlflow.active_run()
    if run is None:  # the stage ended its run itself; nothing to record on
        return
    message = f"{type(error).__name__}: {error}".strip()
    mlflow.set_tag(ERROR_TAG, clip(message))
    previous = mlflow.MlflowClient().get_run(run.info.run_id).data.tags.get(NOTE_TAG, "")
    mlflow.set_tag(NOTE_TAG, clip(f"FAILED: {message}\n\n{previous}"))
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    mlflow.log_text(text, ERROR_TRACEBACK_ARTIFACT)


@contextmanager
def stage_run(
    stage: str,
    config: Config,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
) -> Iterator[StageRun]:
    """One MLflow run named `<stage>@<DVC experiment or commit>` (run_name), with its params,
    provenance tags and a description the stage replaces with its result (StageRun.describe).
    A stage that fails leaves its error on the run (record_failure). Runs that a killed stage
    left RUNNING are closed first."""
    experiment_id = configure(config)
    closed = close_orphaned_runs(experiment_id)
    if closed:
        print(f"{stage}: closed {len(closed)} run(s) a killed process left RUNNING: {closed}")
    run_tags = {"stage": stage, **git_state(config.workspace), **process_tags(), **(tags or {})}
    run_tags.update(
        {name: os.environ[name] for name in DVC_ENVIRONMENT_TAGS if os.environ.get(name)}
    )
    name = run_name(stage, config.workspace)
    description = f"The {stage} stage, running or stopped before it wrote its summary ({name})."
    with mlflow.start_run(run_name=name, tags=run_tags, description=description) as run:
        mlflow.log_params(flatten(params))
        try:
            yield StageRun(config, run)
        except BaseException as error:
            try:
                record_failure(error)
            except Exception as problem:  # e.g. the tracking server is what failed: the
                # stage's own error is the one to report
                print(f"{stage}: could not record the error on run {run.info.run_id}: {problem}")
            raise
