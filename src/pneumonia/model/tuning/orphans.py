"""Trials a dead process left RUNNING: a stale heartbeat's callback that ends their MLflow runs
and queues their params again, and the proof-only check that fails the orphans of earlier
fresh studies."""

from __future__ import annotations

import warnings

import mlflow
import optuna
from optuna.trial import FrozenTrial, TrialState

from pneumonia.model.tuning.records import (
    FRESH_STUDY_ATTRIBUTE,
    MLFLOW_RUN_ATTRIBUTE,
    OWNER_ATTRIBUTE,
    trial_number,
)
from pneumonia.tracking import ProcessIdentity


class RequeueStaleTrial:
    """Heartbeat-stale callback, run by the worker that finds a dead worker's RUNNING trial.

    The dead worker can no longer end its MLflow runs, so its trial run is ended here as FAILED
    (tag `trial_state` FAIL, like the Optuna trial), and its `tune-worker` run too. Then Optuna's
    RetryHeartbeatStaleTrialCallback queues the same params once more, so the configuration is
    still evaluated. One retry only: a configuration that kills its worker twice (out of GPU
    memory, say) stays failed.
    """

    def __init__(self, max_retry: int = 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get(MLFLOW_RUN_ATTRIBUTE)
        if run_id:
            try:
                end_lost_runs(run_id)
            except mlflow.exceptions.MlflowException as error:
                # The dead worker may have logged to another tracking server; the study is
                # what matters here, so go on.
                print(
                    f"tuning: could not end MLflow run {run_id} of stale trial "
                    f"{trial_number(trial.number)}: "
                    f"{error}"
                )
        self.retry(study, trial)


def end_lost_runs(trial_run_id: str) -> None:
    """End a dead worker's trial run, and its parent run, as FAILED."""
    client = mlflow.MlflowClient()
    client.set_tag(trial_run_id, "trial_state", TrialState.FAIL.name)
    client.set_terminated(trial_run_id, status="FAILED")
    parent_id = client.get_run(trial_run_id).data.tags.get("mlflow.parentRunId")
    if parent_id and client.get_run(parent_id).info.status == "RUNNING":
        client.set_terminated(parent_id, status="FAILED")


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the trials whose heartbeat is older than the grace period (what Optuna does before
    each trial), running the stale-trial callback on each."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def fail_orphaned_trials(
    storage: optuna.storages.BaseStorage, legacy_prefix: str | None = None
) -> list[tuple[str, int]]:
    """Fail the RUNNING trials of earlier fresh studies (FRESH_STUDY_ATTRIBUTE; before it, a
    fresh study was named `<legacy_prefix>-<id>`) whose process is proven gone; returns (study,
    trial number). A fresh study is never reopened, so Optuna's own check, which runs only in
    the study being optimized, never reaches them.

    The proof, and nothing less (another experiment's live trial must never be failed, as under
    `dvc queue start -j 2`):
    - the trial's Optuna heartbeat is older than the storage's grace period
      (train.tuning.grace_period; Optuna's own test, `_get_stale_trial_ids`), or
    - its owner (OWNER_ATTRIBUTE, recorded as its objective starts) ran on this machine in this
      PID namespace and is gone (tracking.ProcessIdentity.is_gone).
    A trial with neither a heartbeat nor an owner (asked by hand, or just asked) is not
    evidence, nor is the state of its MLflow run, which the objective ends before Optuna records
    the result, and which may live in another tracking store. The trials' MLflow runs are
    tracking.close_orphaned_runs' business.
    """
    heartbeat = isinstance(storage, optuna.storages.RDBStorage) and (
        storage.get_heartbeat_interval() is not None
    )
    failed = []
    for summary in storage.get_all_studies():
        legacy = legacy_prefix is not None and summary.study_name.startswith(f"{legacy_prefix}-")
        if not (summary.user_attrs.get(FRESH_STUDY_ATTRIBUTE) or legacy):
            continue
        study_id = storage.get_study_id_from_name(summary.study_name)
        stale = set(storage._get_stale_trial_ids(study_id)) if heartbeat else set()
        for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            owner = trial.system_attrs.get(OWNER_ATTRIBUTE)
            gone = isinstance(owner, dict) and ProcessIdentity.from_dict(owner).is_gone()
            if trial._trial_id not in stale and not gone:
                continue
            try:
                if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                    failed.append((summary.study_name, trial.number))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # it finished meanwhile, or another stage failed it first
    return failed
