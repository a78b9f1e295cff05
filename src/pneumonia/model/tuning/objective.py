"""The objective each trial runs: draw its hyperparameters, fit on train, score on val, every
trial a nested MLflow run. The test split is never read here."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import mlflow
import optuna
from optuna.trial import TrialState
from optuna_integration import KerasPruningCallback

from pneumonia.config import TrainConfig
from pneumonia.model.backbones import WeightsFile
from pneumonia.model.training import MONITOR, MlflowEpochLogger, SplitArrays, best_epoch, fit
from pneumonia.model.tuning.records import MLFLOW_RUN_ATTRIBUTE, OWNER_ATTRIBUTE, trial_number
from pneumonia.model.tuning.search_space import suggest
from pneumonia.progress import duration, say
from pneumonia.tracking import NOTE_TAG, ProcessIdentity

# Each trial gets a header and a result line from make_objective; Optuna's own INFO lines
# (study created, trial finished with its parameters) would repeat them. Its warnings still show.
optuna.logging.set_verbosity(optuna.logging.WARNING)


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
        # First: from here on, another train stage can tell whether this trial's process lives.
        trial.storage.set_trial_system_attr(
            trial._trial_id, OWNER_ATTRIBUTE, ProcessIdentity.current().as_dict()
        )
        started_trials += 1
        hyperparameters = suggest(trial, config.tuning.search_space, config.hyperparameters)
        number = trial_number(trial.number)
        name = f"trial {started_trials}" + (f"/{planned}" if planned else "")
        if number != started_trials:  # a shared study: say which trial of it
            name += f" (study trial {number})"
        say(f"{name}: {_described(trial.params)}")
        started = time.perf_counter()
        # Not a `with` block: a pruned trial must end as KILLED, not FAILED, and leave the parent
        # run active.
        run = mlflow.start_run(
            run_name=f"trial-{number}",
            nested=True,
            parent_run_id=parent_run_id,
            tags={
                "stage": stage,
                "trial": str(number),
                "optuna_trial": str(trial.number),
                "optuna_study": trial.study.study_name,
            },
            description=f"Trial {number} of study {trial.study.study_name}",
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
            outcome = f"{MONITOR} {value:.4f} (epoch {epoch})"
            return value
        except optuna.TrialPruned:
            state, status, outcome = TrialState.PRUNED, "KILLED", "pruned"
            raise
        finally:
            mlflow.set_tag("trial_state", state.name)
            mlflow.set_tag(
                NOTE_TAG,
                f"Trial {number} of study {trial.study.study_name}: {outcome}; "
                f"{hyperparameters.flat()}",
            )
            mlflow.end_run(status=status)
            say(f"{name}: {outcome} in {duration(time.perf_counter() - started)}")

    return objective
