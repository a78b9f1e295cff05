"""Scale-out tuning: `pneumonia tune-worker` processes, on any number of machines, join one
Optuna study in a shared RDB storage (PostgreSQL) and log to one MLflow tracking server.

Optuna coordinates, nothing here schedules: each worker asks the storage for its next trial
(queued ones first), a heartbeat thread keeps its running trial alive, and before each trial a
worker fails the trials whose heartbeat is older than the grace period and queues their params
again (`tuning.RequeueStaleTrial`). Each worker is one MLflow run, `tune-worker`, with each of its
trials a nested run tagged with the study name and trial number.
"""

from __future__ import annotations

import os
import socket
import zlib
from dataclasses import dataclass

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from pneumonia.config import Config, ConfigError, TuningConfig
from pneumonia.model.training_setup import prepare_training, start_training_run
from pneumonia.model.tuning import create_study, make_objective, redact_url, trial_number
from pneumonia.tracking import stage_run

STAGE = "tune-worker"
# Trials that used up budget: a failed trial (a dead worker's, say) does not count.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class WorkerResult:
    study_name: str
    trials: tuple[FrozenTrial, ...]  # the ones this worker ran
    study_finished: int  # complete or pruned trials in the study, from every worker
    best_trial: FrozenTrial | None  # of the whole study

    def describe(self) -> str:
        states = [trial.state.name for trial in self.trials]
        counts = ", ".join(f"{states.count(name)} {name.lower()}" for name in sorted(set(states)))
        line = (
            f"{STAGE}: study {self.study_name}: this worker ran {len(self.trials)} trial(s)"
            f"{f' ({counts})' if counts else ''}; the study has {self.study_finished} finished"
        )
        if self.best_trial is not None:
            best = self.best_trial
            line += f", best val AUC {best.value:.4f} (trial {trial_number(best.number)})"
        return line


def worker_seed(seed: int) -> int:
    """This worker's sampler seed: from train.seed, but different in every process.

    TPE draws its first configurations at random; workers seeded alike would draw the same ones.
    """
    return zlib.crc32(f"{seed}:{socket.gethostname()}:{os.getpid()}".encode())


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda trial: trial.value) if complete else None


def trials_to_run(
    tuning: TuningConfig, n_trials: int | None, study_trials: int | None
) -> int | None:
    """The worker's own trial limit, after checking the study name and both counts: `n_trials`,
    or `train.tuning.n_trials` when neither count is given."""
    if not tuning.study_name:
        raise ConfigError(
            "params.yaml: 'train.tuning.study_name' is empty; workers share a study by its name "
            "(pass --study NAME)"
        )
    for name, value in (("n_trials", n_trials), ("study_trials", study_trials)):
        if value is not None and value < 1:
            raise ConfigError(f"tune-worker: --{name.replace('_', '-')} must be >= 1, got {value}")
    if n_trials is None and study_trials is None:
        n_trials = tuning.n_trials
        if n_trials < 1:
            raise ConfigError(
                "params.yaml: 'train.tuning.n_trials' is 0; pass --n-trials or --study-trials "
                "to say how many trials the worker runs"
            )
    return n_trials


def run_worker(config: Config, n_trials: int | None, study_trials: int | None) -> WorkerResult:
    """Join the study named by `train.tuning.study_name` and run trials.

    Stops after `n_trials` trials of its own, once the study holds `study_trials` finished
    (complete or pruned) trials from every worker, or after `train.tuning.timeout` seconds,
    whichever comes first. With both counts None, it runs `train.tuning.n_trials` trials. Several
    workers stopping on `study_trials` may overshoot it by up to one trial each: a worker that
    is mid-trial when the count is reached finishes that trial.
    """
    settings = config.train
    tuning = settings.tuning
    n_trials = trials_to_run(tuning, n_trials, study_trials)
    setup = prepare_training(config, STAGE)
    seed = worker_seed(settings.seed)
    # study_name is set (checked above): the workers' shared study keeps its name.
    study = create_study(settings, config.project_root, STAGE, seed=seed)
    if study_trials is not None and finished_trials(study) >= study_trials:
        return WorkerResult(study.study_name, (), finished_trials(study), best_trial(study))

    ran: list[FrozenTrial] = []
    callbacks = [lambda _, trial: ran.append(trial)]
    if study_trials is not None:
        callbacks.append(MaxTrialsCallback(study_trials, states=FINISHED))
    params = setup.run_params(
        config, worker={"n_trials": n_trials, "study_trials": study_trials, "sampler_seed": seed}
    )
    tags = {
        "optuna_study": study.study_name,
        "optuna_storage": redact_url(tuning.storage),
        "worker_host": socket.gethostname(),
        "worker_pid": str(os.getpid()),
    }
    with stage_run(STAGE, config, params, tags) as run:
        start_training_run(run, config)
        study.optimize(
            make_objective(
                settings,
                setup.train,
                setup.val,
                run.run_id,
                stage=STAGE,
                planned=n_trials,
                weights=setup.weights,
            ),
            n_trials=n_trials,
            timeout=tuning.timeout or None,
            callbacks=callbacks,
            gc_after_trial=True,
        )
        states = [trial.state for trial in ran]
        best = best_trial(study)
        run.log_metrics(
            {
                "trials_run": len(ran),
                "trials_complete": states.count(TrialState.COMPLETE),
                "trials_pruned": states.count(TrialState.PRUNED),
                "study_trials_finished": finished_trials(study),
                **({"study_best_val_auc": best.value} if best is not None else {}),
            }
        )
        result = WorkerResult(study.study_name, tuple(ran), finished_trials(study), best)
        run.describe(result.describe())
    return result
