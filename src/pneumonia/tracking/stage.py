"""The stage run itself: the project's experiment (configure), one MLflow run per stage execution
(stage_run) with its params, provenance, process and heartbeat, its description, and the error a
failed stage leaves on it."""

from __future__ import annotations

import json
import os
import traceback
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from pneumonia.config import Config
from pneumonia.redaction import redact_text, tracking_urls
from pneumonia.tracking.liveness import (
    HEARTBEAT_TAG,
    ProcessIdentity,
    RunHeartbeat,
    close_orphaned_runs,
    heartbeat_value,
)
from pneumonia.tracking.provenance import DVC_ENVIRONMENT_TAGS, content_hash, git_state, run_name
from pneumonia.tracking.store import use_project_store

# The description MLflow's UI shows for a run or an experiment (the "Description" box).
NOTE_TAG = "mlflow.note.content"
# MLflow 3's UI opens an experiment on the view its kind names (without it: GenAI traces).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# A failed stage run: the error's type and message (the traceback is the artifact below).
ERROR_TAG = "error"
ERROR_TRACEBACK_ARTIFACT = "error/traceback.txt"
# MLflow's limits on a run tag's value (descriptions included) and an experiment tag's.
MAX_RUN_TAG_CHARS = 8000
MAX_EXPERIMENT_TAG_CHARS = 20000
EXPERIMENT_DESCRIPTION = (
    "Pneumonia vs normal on pediatric chest X-rays (Kermany et al. 2018): one run per DVC "
    "stage execution (download, split, preprocess, train, evaluate, site; tune-worker for "
    "scale-out tuning; site-calibrate@<site> for a site's calibration), named `<stage>@<DVC "
    "experiment>` under `dvc exp run` and `<stage>@<git commit>` otherwise. Optuna trials are "
    "runs nested under train. The evaluate run's description is the model card; its metrics are "
    "grouped as val/, test/ and test_at_0.5/. The site run's figures are site-calibrated: the "
    "test split treated as a new site. Research use only, not a medical device."
)


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
    experiment_tags = {
        NOTE_TAG: clip(EXPERIMENT_DESCRIPTION, MAX_EXPERIMENT_TAG_CHARS),
        EXPERIMENT_KIND_TAG: EXPERIMENT_KIND,
    }
    for tag, value in experiment_tags.items():
        if tag in experiment.tags:  # a description edited in the UI stays
            continue
        try:
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, tag, value)
        except mlflow.exceptions.MlflowException:
            # Workers starting together race to write it too; a PostgreSQL-backed server
            # answers the loser with a unique-key violation once the winner's tag is there.
            if tag not in mlflow.get_experiment(experiment.experiment_id).tags:
                raise
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return experiment.experiment_id


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


def record_failure(error: BaseException) -> None:
    """On the active run: the error as the `error` tag and at the top of the description, the
    traceback as an artifact (MLflow marks the run FAILED as the `with` block exits). Store
    passwords are masked in all three."""
    run = mlflow.active_run()
    if run is None:  # the stage ended its run itself; nothing to record on
        return
    urls = tracking_urls()
    message = redact_text(f"{type(error).__name__}: {error}".strip(), *urls)
    mlflow.set_tag(ERROR_TAG, clip(message))
    previous = mlflow.MlflowClient().get_run(run.info.run_id).data.tags.get(NOTE_TAG, "")
    mlflow.set_tag(NOTE_TAG, clip(f"FAILED: {message}\n\n{previous}"))
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    mlflow.log_text(redact_text(text, *urls), ERROR_TRACEBACK_ARTIFACT)


@contextmanager
def stage_run(
    stage: str,
    config: Config,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
) -> Iterator[StageRun]:
    """One MLflow run named `<stage>@<DVC experiment or commit>` (run_name), with its params,
    provenance tags, its process's identity and heartbeat (RunHeartbeat), and a description the
    stage replaces with its result (StageRun.describe). A stage that fails leaves its error on
    the run (record_failure). Runs whose process is proven gone are closed first
    (close_orphaned_runs)."""
    experiment_id = configure(config)
    closed = close_orphaned_runs(experiment_id)
    if closed:
        print(f"{stage}: closed {len(closed)} run(s) a killed process left RUNNING: {closed}")
    run_tags = {
        "stage": stage,
        **git_state(config.workspace),
        **ProcessIdentity.current().tags(),
        HEARTBEAT_TAG: heartbeat_value(),
        **(tags or {}),
    }
    run_tags.update(
        {name: os.environ[name] for name in DVC_ENVIRONMENT_TAGS if os.environ.get(name)}
    )
    name = run_name(stage, config.workspace)
    description = f"The {stage} stage, running or stopped before it wrote its summary ({name})."
    with mlflow.start_run(run_name=name, tags=run_tags, description=description) as run:
        heartbeat = RunHeartbeat(run.info.run_id, mlflow.get_tracking_uri()).start()
        try:
            mlflow.log_params(flatten(params))
            yield StageRun(config, run)
        except BaseException as error:
            try:
                record_failure(error)
            except Exception as problem:  # e.g. the tracking server is what failed: the
                # stage's own error is the one to report
                detail = redact_text(str(problem), *tracking_urls())
                print(f"{stage}: could not record the error on run {run.info.run_id}: {detail}")
            raise
        finally:
            heartbeat.stop()
