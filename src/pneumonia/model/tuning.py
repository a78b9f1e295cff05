"""Hyperparameter search with Optuna: seeded TPE, a pruner fed val AUC each epoch, every trial a
nested MLflow run. The objective is val ROC AUC; the test split is never read here."""

from __future__ import annotations

import re
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import optuna
from optuna.trial import FrozenTrial, TrialState
from optuna_integration import KerasPruningCallback
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, ProgrammingError

from pneumonia.config import (
    Hyperparameters,
    ModelConfig,
    OptimizerConfig,
    SearchSpace,
    TrainConfig,
    TuningConfig,
)
from pneumonia.errors import PipelineError
from pneumonia.model.backbones import WeightsFile
from pneumonia.model.training import MONITOR, MlflowEpochLogger, SplitArrays, best_epoch, fit
from pneumonia.progress import duration, say
from pneumonia.tracking import NOTE_TAG, StageRun

# Each trial gets a header and a result line from make_objective; Optuna's own INFO lines
# (study created, trial finished with its parameters) would repeat them. Its warnings still show.
optuna.logging.set_verbosity(optuna.logging.WARNING)

# The trial's user attribute that names its MLflow run.
MLFLOW_RUN_ATTRIBUTE = "mlflow_run_id"
# The study's user attribute marking a fresh study (train.tuning.study_name ""): named by this
# code, run by one train stage, never reopened.
FRESH_STUDY_ATTRIBUTE = "fresh_study"
# The study's user attribute naming the train.model.architecture its trials train: a CNN's and a
# backbone's trials have different hyperparameters, so one study must not hold both.
ARCHITECTURE_ATTRIBUTE = "architecture"
# The objective's name in optuna-dashboard (it is the val ROC AUC, as Keras measures it).
OBJECTIVE_NAMES = [MONITOR]
SCHEMA_ATTEMPTS = 5


class TuningError(PipelineError, RuntimeError):
    """The study produced no usable trial."""


SectionType = TypeVar("SectionType", ModelConfig, OptimizerConfig)


def _with(section: SectionType, changes: dict[str, Any]) -> SectionType:
    """The section with a trial's values, validated like params.yaml (model_copy would not)."""
    return type(section).model_validate({**section.model_dump(), **changes})


def suggest(trial: optuna.Trial, space: SearchSpace, fixed: Hyperparameters) -> Hyperparameters:
    """Sample one configuration; rho and momentum exist only when the optimizer is RMSprop,
    base_filters only for the cnn, the fine-tuning rate and depth only for a backbone."""
    optimizer = trial.suggest_categorical("optimizer", list(space.optimizer))
    rmsprop = optimizer == "rmsprop"
    backbone = fixed.model.is_backbone
    # The CNN's draws in the order they have always been made (base_filters, then dropout): the
    # seeded sampler hands out its random numbers in call order, so another order would give a
    # CNN study other trials, and ship another model, than the ones docs/experiments.md records.
    model = {}
    if not backbone:
        model["base_filters"] = trial.suggest_categorical("base_filters", list(space.base_filters))
    model["dropout"] = trial.suggest_float("dropout", *space.dropout)
    fine_tuning = {}
    if backbone:
        fine_tuning = {
            "learning_rate": trial.suggest_float(
                "fine_tuning_learning_rate", *space.fine_tuning_learning_rate, log=True
            ),
            "unfreeze": trial.suggest_categorical("unfreeze", list(space.unfreeze)),
        }
    return Hyperparameters(
        model=_with(fixed.model, model),
        fine_tuning=_with(fixed.fine_tuning, fine_tuning),
        optimizer=_with(
            fixed.optimizer,
            {
                "name": optimizer,
                "learning_rate": trial.suggest_float(
                    "learning_rate", *space.learning_rate, log=True
                ),
                "weight_decay": trial.suggest_float("weight_decay", *space.weight_decay, log=True),
                "rho": trial.suggest_float("rho", *space.rho) if rmsprop else fixed.optimizer.rho,
                "momentum": (
                    trial.suggest_float("momentum", *space.momentum)
                    if rmsprop
                    else fixed.optimizer.momentum
                ),
            },
        ),
        batch_size=trial.suggest_categorical("batch_size", list(space.batch_size)),
    )


def hyperparameters_from(params: dict[str, Any], fixed: Hyperparameters) -> Hyperparameters:
    """Rebuild the Hyperparameters a trial's params describe (the inverse of `suggest`)."""
    needed = (
        ["fine_tuning_learning_rate", "unfreeze"] if fixed.model.is_backbone else ["base_filters"]
    )
    missing = [name for name in needed if name not in params]
    if missing:
        # A study from before studies recorded their architecture, tuned for another one.
        raise TuningError(
            f"the study's best trial has no {', '.join(missing)}: it was tuned for another "
            f"train.model.architecture than {fixed.model.architecture!r}; name another study "
            "(train.tuning.study_name) or set the architecture it was tuned for"
        )
    rmsprop = params["optimizer"] == "rmsprop"
    model = {"dropout": params["dropout"]}
    fine_tuning = {}
    if fixed.model.is_backbone:
        fine_tuning = {
            "learning_rate": params["fine_tuning_learning_rate"],
            "unfreeze": params["unfreeze"],
        }
    else:
        model["base_filters"] = params["base_filters"]
    return Hyperparameters(
        model=_with(fixed.model, model),
        fine_tuning=_with(fixed.fine_tuning, fine_tuning),
        optimizer=_with(
            fixed.optimizer,
            {
                "name": params["optimizer"],
                "learning_rate": params["learning_rate"],
                "weight_decay": params["weight_decay"],
                "rho": params["rho"] if rmsprop else fixed.optimizer.rho,
                "momentum": params["momentum"] if rmsprop else fixed.optimizer.momentum,
            },
        ),
        batch_size=params["batch_size"],
    )


def fixed_trial_params(fixed: Hyperparameters, space: SearchSpace) -> dict[str, Any] | None:
    """The fixed hyperparameters as a first trial to enqueue, when they lie in the space."""
    params: dict[str, Any] = {
        "optimizer": fixed.optimizer.name,
        "dropout": fixed.model.dropout,
        "learning_rate": fixed.optimizer.learning_rate,
        "weight_decay": fixed.optimizer.weight_decay,
        "batch_size": fixed.batch_size,
    }
    if fixed.model.is_backbone:
        params.update(
            fine_tuning_learning_rate=fixed.fine_tuning.learning_rate,
            unfreeze=fixed.fine_tuning.unfreeze,
        )
        shape_inside = (
            params["unfreeze"] in space.unfreeze
            and space.fine_tuning_learning_rate[0]
            <= params["fine_tuning_learning_rate"]
            <= space.fine_tuning_learning_rate[1]
        )
    else:
        params["base_filters"] = fixed.model.base_filters
        shape_inside = params["base_filters"] in space.base_filters
    if fixed.optimizer.name == "rmsprop":
        params.update(rho=fixed.optimizer.rho, momentum=fixed.optimizer.momentum)
    inside = (
        params["optimizer"] in space.optimizer
        and shape_inside
        and params["batch_size"] in space.batch_size
        and space.dropout[0] <= params["dropout"] <= space.dropout[1]
        and space.learning_rate[0] <= params["learning_rate"] <= space.learning_rate[1]
        and space.weight_decay[0] <= params["weight_decay"] <= space.weight_decay[1]
        and all(
            space_range[0] <= params[name] <= space_range[1]
            for name, space_range in (("rho", space.rho), ("momentum", space.momentum))
            if name in params
        )
    )
    return params if inside else None


def make_pruner(tuning: TuningConfig) -> optuna.pruners.BasePruner:
    if tuning.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if tuning.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=tuning.epochs)
    return optuna.pruners.NopPruner()


def resolve_storage(url: str, project_root: Path) -> str:
    """A relative sqlite path is relative to the project root (shared by DVC temp workspaces)."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url[len(prefix) :].startswith("/"):
        path = (project_root / url[len(prefix) :]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"{prefix}{path}"
    return url


_USER_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def redact_url(url: str) -> str:
    """The storage URL with any password masked, fit to log or print (a URL SQLAlchemy cannot
    parse is masked by pattern, so a typo never prints the password either)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return _USER_PASSWORD.sub(r"\1***@", url)


def _without_password(text: str, url: str) -> str:
    """An error message with the storage password, if any, masked."""
    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        password = None
    return text.replace(str(password), "***") if password else text


def loggable_train_params(train_params: dict[str, Any]) -> dict[str, Any]:
    """params.yaml's train section with the storage password masked, to log to MLflow."""
    tuning = train_params.get("tuning", {})
    if not isinstance(tuning.get("storage"), str):
        return train_params
    return {**train_params, "tuning": {**tuning, "storage": redact_url(tuning["storage"])}}


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
                    f"tuning: could not end MLflow run {run_id} of stale trial {trial.number}: "
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


def make_storage(tuning: TuningConfig, project_root: Path) -> optuna.storages.RDBStorage:
    url = resolve_storage(tuning.storage, project_root)
    # Workers starting together on an empty database all create Optuna's tables; PostgreSQL lets
    # one win and the others fail on a duplicate type or table. Those find the tables on a retry.
    attempt = 1
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    # A worker that dies mid-trial leaves a RUNNING trial; the heartbeat fails it.
                    heartbeat_interval=tuning.heartbeat_interval,
                    grace_period=tuning.grace_period,
                    heartbeat_stale_trial_callback=RequeueStaleTrial(),
                )
        except (IntegrityError, ProgrammingError):
            if attempt == SCHEMA_ATTEMPTS:
                raise
            time.sleep(0.5 * attempt)
            attempt += 1
        except (ArgumentError, ValueError, OperationalError, ImportError) as error:
            detail = _without_password(str(error).strip().splitlines()[0], url)
            raise TuningError(
                f"train.tuning.storage {redact_url(url)}: cannot open the study database "
                f"({type(error).__name__}: {detail}); check the URL and that the database "
                "server is running and reachable"
            ) from None


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


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the trials whose heartbeat is older than the grace period (what Optuna does before
    each trial), running the stale-trial callback on each."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def require_complete_trial(study: optuna.Study, fix: str) -> None:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise TuningError(
            f"study {study.study_name}: no trial completed ({len(study.trials)} tried); {fix}"
        )


def _described(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}"
        for name, value in params.items()
    )


def make_objective(
    config: TrainConfig,
    train: SplitArrays,
    val: SplitArrays,
    parent_run_id: str,
    stage: str = "train",
    planned: int | None = None,
    weights: WeightsFile | None = None,
) -> Callable[[optuna.Trial], float]:
    """The objective; each trial it runs prints a header (`trial 2/4`: the k-th trial of this
    process, of `planned` when known) and a result line."""
    started_trials = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal started_trials
        started_trials += 1
        hyperparameters = suggest(trial, config.tuning.search_space, config.hyperparameters)
        name = f"trial {started_trials}" + (f"/{planned}" if planned else "")
        if trial.number != started_trials - 1:  # a shared study: say which trial of it
            name += f" (study trial {trial.number})"
        say(f"{name}: {_described(trial.params)}")
        started = time.perf_counter()
        # Not a `with` block: a pruned trial must end as KILLED, not FAILED, and leave the parent
        # run active.
        run = mlflow.start_run(
            run_name=f"trial-{trial.number}",
            nested=True,
            parent_run_id=parent_run_id,
            tags={
                "stage": stage,
                "optuna_trial": str(trial.number),
                "optuna_study": trial.study.study_name,
            },
            description=f"Optuna trial {trial.number} of study {trial.study.study_name}",
        )
        # Recorded first, so a worker that finds this trial stale can end its run.
        trial.set_user_attr(MLFLOW_RUN_ATTRIBUTE, run.info.run_id)
        state, status, outcome = TrialState.FAIL, "FAILED", "failed"
        try:
            mlflow.log_params(hyperparameters.flat())
            callbacks = [MlflowEpochLogger(run.info.run_id), KerasPruningCallback(trial, MONITOR)]
            _, history = fit(
                hyperparameters,
                train,
                val,
                config,
                epochs=config.tuning.epochs,
                callbacks=callbacks,
                weights=weights,
            )
            epoch, value = best_epoch(history)
            mlflow.log_metrics({"best_val_auc": value, "best_epoch": epoch})
            state, status = TrialState.COMPLETE, "FINISHED"
            outcome = f"{MONITOR} {value:.4f} (epoch {epoch + 1})"
            return value
        except optuna.TrialPruned:
            state, status, outcome = TrialState.PRUNED, "KILLED", "pruned"
            raise
        finally:
            mlflow.set_tag("trial_state", state.name)
            mlflow.set_tag(
                NOTE_TAG,
                f"Optuna trial {trial.number} of study {trial.study.study_name}: {outcome}; "
                f"{hyperparameters.flat()}",
            )
            mlflow.end_run(status=status)
            say(f"{name}: {outcome} in {duration(time.perf_counter() - started)}")

    return objective


def fail_orphaned_trials(
    storage: optuna.storages.BaseStorage, legacy_prefix: str | None = None
) -> list[tuple[str, int]]:
    """Fail the RUNNING trials of earlier fresh studies (FRESH_STUDY_ATTRIBUTE; before it, a
    fresh study was named `<legacy_prefix>-<id>`), never reopened, so the heartbeat never
    reaches them, whose MLflow trial run is no longer RUNNING: its stage was killed
    (tracking.close_orphaned_runs ended the run). Returns (study, trial number)."""
    client = mlflow.MlflowClient()
    failed = []
    for summary in storage.get_all_studies():
        legacy = legacy_prefix is not None and summary.study_name.startswith(f"{legacy_prefix}-")
        if not (summary.user_attrs.get(FRESH_STUDY_ATTRIBUTE) or legacy):
            continue
        study_id = storage.get_study_id_from_name(summary.study_name)
        for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            run_id = trial.user_attrs.get(MLFLOW_RUN_ATTRIBUTE)
            try:
                ended = run_id is None or client.get_run(run_id).info.status != "RUNNING"
            except mlflow.exceptions.MlflowException:
                ended = True  # the run is gone from this store
            if ended:
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
                failed.append((summary.study_name, trial.number))
    return failed


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
            print(f"train: failed {len(failed)} trial(s) a killed run left RUNNING: {failed}")
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


def study_summary(study: optuna.Study) -> dict[str, Any]:
    states = [trial.state.name for trial in study.trials]
    best = study.best_trial
    return {
        "study_name": study.study_name,
        "trials": len(states),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "best_trial": best.number,
        "best_val_auc": best.value,
        "best_params": best.params,
    }


def card_tuning(summary: dict[str, Any] | None, tuning: TuningConfig) -> dict[str, Any] | None:
    """The study summary for the model card: a fresh study's random name is left out (it is the
    train run's `optuna_study` tag), so the same trials give the same card."""
    if summary is None or tuning.study_name:
        return summary
    return {key: value for key, value in summary.items() if key != "study_name"}


def study_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optuna's optimisation-history and param-importance figures, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    plots = {"optimization_history": optuna_plots.plot_optimization_history}
    if sum(trial.state == TrialState.COMPLETE for trial in study.trials) >= 2:
        plots["param_importances"] = optuna_plots.plot_param_importances
    for name, plot in plots.items():
        try:
            axes = plot(study)
        except (RuntimeError, ValueError) as error:  # e.g. every trial had the same params
            print(f"train: skipped the {name} plot: {error}")
            continue
        path = folder / f"{name}.png"
        axes.figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(axes.figure)
        written.append(path)
    return written


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


def log_study(
    run: StageRun, study: optuna.Study | None, trials_table: Path
) -> dict[str, Any] | None:
    """The study's trials table (a header only without tuning), summary, plots and counts in the
    train run; returns the summary."""
    if study is None:
        trials_table.write_text("number,state,value\n")
        return None
    mlflow.set_tag("optuna_study", study.study_name)
    summary = study_summary(study)
    run.log_json(summary, "tuning/study_summary.json")
    study.trials_dataframe().to_csv(trials_table, index=False)
    with tempfile.TemporaryDirectory() as scratch:
        for plot in study_plots(study, Path(scratch)):
            run.log_artifact(plot, "tuning")
    mlflow.log_metrics(
        {
            "tuning_best_val_auc": summary["best_val_auc"],
            "tuning_trials_complete": summary["complete"],
            "tuning_trials_pruned": summary["pruned"],
        }
    )
    return summary
