"""A study's lifecycle: created (with the fixed hyperparameters as its first trial) or joined,
run by the train stage, or loaded for a refit from its best trial."""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from pneumonia.config import TrainConfig, TuningConfig
from pneumonia.model.backbones import WeightsFile
from pneumonia.model.training import MONITOR, SplitArrays
from pneumonia.model.tuning.objective import make_objective
from pneumonia.model.tuning.orphans import fail_orphaned_trials, fail_stale_trials
from pneumonia.model.tuning.records import (
    ARCHITECTURE_ATTRIBUTE,
    FRESH_STUDY_ATTRIBUTE,
    OBJECTIVE_NAMES,
    TuningError,
    trial_number,
)
from pneumonia.model.tuning.search_space import fixed_trial_params
from pneumonia.model.tuning.storage import make_storage
from pneumonia.progress import duration, say
from pneumonia.redaction import redact_url


def make_pruner(tuning: TuningConfig) -> optuna.pruners.BasePruner:
    if tuning.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if tuning.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=tuning.epochs)
    return optuna.pruners.NopPruner()


def fresh_study_name(prefix: str) -> str:
    """`<prefix>-<8 hex>`: the prefix is the train run's name (`train@<DVC experiment>` or
    `train@<commit>`), so optuna-dashboard lists a study under the experiment that ran it; the
    suffix keeps a re-run of the same experiment from reopening the old study."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_study(
    config: TrainConfig, project_root: Path, fresh_prefix: str, seed: int | None = None
) -> optuna.Study:
    """Create the study, or join it when `train.tuning.study_name` names one that exists (that
    name is kept: tune-workers share the study by it). An empty study_name gets a fresh name
    (fresh_study_name).

    Only the process that creates the study queues the fixed hyperparameters as its first
    trial: the database's unique study name decides which one that is, so workers starting
    together do not each evaluate them.
    """
    tuning = config.tuning
    arguments = {
        "storage": make_storage(tuning, project_root),
        "study_name": tuning.study_name or fresh_study_name(fresh_prefix),
        "sampler": optuna.samplers.TPESampler(seed=config.seed if seed is None else seed),
        "pruner": make_pruner(tuning),
    }
    try:
        study = optuna.create_study(direction="maximize", **arguments)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**arguments)
        check_study_architecture(study, config.model.architecture)
        return study
    study.set_user_attr(ARCHITECTURE_ATTRIBUTE, config.model.architecture)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(OBJECTIVE_NAMES)
    if not tuning.study_name:
        study.set_user_attr(FRESH_STUDY_ATTRIBUTE, True)
    first = fixed_trial_params(config.hyperparameters, tuning.search_space)
    if first is not None:
        study.enqueue_trial(first)
    return study


def check_study_architecture(study: optuna.Study, architecture: str) -> None:
    """Refuse to join or refit a study whose trials train another architecture."""
    recorded = study.user_attrs.get(ARCHITECTURE_ATTRIBUTE)
    if recorded is not None and recorded != architecture:
        raise TuningError(
            f"train.tuning.study_name {study.study_name!r}: its trials train "
            f"train.model.architecture {recorded!r}, not {architecture!r}, and have other "
            f"hyperparameters; name another study, or set train.model.architecture: {recorded}"
        )


def load_tuned_study(tuning: TuningConfig, project_root: Path) -> optuna.Study:
    """The named study, for a refit from its best trial without running trials here."""
    storage = make_storage(tuning, project_root)
    try:
        study = optuna.load_study(study_name=tuning.study_name, storage=storage)
    except KeyError as error:
        raise TuningError(
            f"train.tuning.study_name {tuning.study_name!r}: no such study in "
            f"{redact_url(tuning.storage)}; run `pneumonia tune-worker` on it first, or set "
            "train.tuning.n_trials > 0 to tune here"
        ) from error
    # A dead worker's trial still RUNNING past the grace period is failed now, so the summary
    # counts it as failed rather than in progress.
    fail_stale_trials(study)
    require_complete_trial(
        study, "run tune-worker on it until one completes, or set train.tuning.study_name: ''"
    )
    return study


def require_complete_trial(study: optuna.Study, fix: str) -> None:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise TuningError(
            f"study {study.study_name}: no trial completed ({len(study.trials)} tried); {fix}"
        )


def run_study(
    config: TrainConfig,
    train: SplitArrays,
    val: SplitArrays,
    parent_run_id: str,
    project_root: Path,
    study_prefix: str = "train",
    weights: WeightsFile | None = None,
) -> optuna.Study:
    study = create_study(config, project_root, study_prefix)
    if not config.tuning.study_name:
        storage = make_storage(config.tuning, project_root)
        failed = fail_orphaned_trials(storage, config.registered_model_name)
        if failed:
            named = ", ".join(f"{study} trial {trial_number(number)}" for study, number in failed)
            print(f"train: failed {len(failed)} trial(s) a killed run left RUNNING: {named}")
    say(
        f"tuning: {config.tuning.n_trials} trial(s) of {config.tuning.epochs} epoch(s) on "
        f"{MONITOR}, study {study.study_name}"
        + (f", at most {duration(config.tuning.timeout)}" if config.tuning.timeout else "")
    )
    study.optimize(
        make_objective(
            config, train, val, parent_run_id, planned=config.tuning.n_trials, weights=weights
        ),
        n_trials=config.tuning.n_trials,
        timeout=config.tuning.timeout or None,
        gc_after_trial=True,
    )
    require_complete_trial(
        study,
        "raise train.tuning.timeout or n_trials, or set n_trials: 0 and study_name: '' to use "
        "the fixed params",
    )
    return study


def study_for_training(
    config: TrainConfig,
    train: SplitArrays,
    val: SplitArrays,
    parent_run_id: str,
    project_root: Path,
    study_prefix: str = "train",
    weights: WeightsFile | None = None,
) -> optuna.Study | None:
    """The study whose best trial the train stage refits: one it runs now (tuning.n_trials > 0;
    a fresh one is named `<study_prefix>-<id>`, the prefix being the train run's name), one
    tuning workers ran (n_trials 0 with a study_name), or None (the fixed params)."""
    if config.tuning.n_trials > 0:
        return run_study(config, train, val, parent_run_id, project_root, study_prefix, weights)
    if config.tuning.study_name:
        study = load_tuned_study(config.tuning, project_root)
        check_study_architecture(study, config.model.architecture)
        return study
    return None
