import time

import mlflow
import numpy as np
import optuna
import pytest
from optuna.trial import FixedTrial, TrialState

from pneumonia.config import load_config
from pneumonia.model.training import MONITOR, SplitArrays, best_epoch, fit
from pneumonia.model.tuning.objective import make_objective
from pneumonia.model.tuning.records import TuningError
from pneumonia.model.tuning.search_space import fixed_trial_params, hyperparameters_from, suggest
from pneumonia.model.tuning.storage import resolve_storage
from pneumonia.model.tuning.study import create_study

from helpers import fixture_train_config, write_params

# The CNN's search space (base_filters drawn, no fine-tuning params), whatever params.yaml's
# default architecture: these tests and BASE are about it.
CONFIG = fixture_train_config({"train.model.architecture": "cnn"})
SPACE = CONFIG.tuning.search_space
BASE = {
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "weight_decay": 1e-5,
    "batch_size": 16,
    "dropout": 0.2,
    "base_filters": 8,
}


def test_rmsprop_only_params_are_sampled_only_for_rmsprop():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"adam": set(), "rmsprop": set()}
    for _ in range(30):
        trial = study.ask()
        hyperparameters = suggest(trial, SPACE, CONFIG.hyperparameters)
        seen[hyperparameters.optimizer.name] |= set(trial.params)
        study.tell(trial, 0.5)
    assert {"rho", "momentum"} <= seen["rmsprop"]
    assert not {"rho", "momentum"} & seen["adam"]


def test_the_cnn_draws_its_params_in_their_historical_order():
    """The seeded sampler hands out random numbers in call order: the CNN's order is what makes
    a default study draw the trials docs/experiments.md records (and ship that model)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    orders = set()
    for _ in range(20):
        trial = study.ask()
        suggest(trial, SPACE, CONFIG.hyperparameters)
        orders.add(tuple(trial.params))
        study.tell(trial, 0.5)
    head = ("optimizer", "base_filters", "dropout", "learning_rate", "weight_decay")
    assert orders == {(*head, "batch_size"), (*head, "rho", "momentum", "batch_size")}


def test_suggest_and_hyperparameters_from_are_inverse():
    params = {**BASE, "optimizer": "rmsprop", "rho": 0.85, "momentum": 0.5}
    hyperparameters = suggest(FixedTrial(params), SPACE, CONFIG.hyperparameters)
    assert hyperparameters.optimizer.rho == 0.85 and hyperparameters.optimizer.momentum == 0.5
    assert hyperparameters.model.base_filters == 8
    assert hyperparameters_from(params, CONFIG.hyperparameters) == hyperparameters
    assert "optimizer.rho" not in suggest(FixedTrial(BASE), SPACE, CONFIG.hyperparameters).flat()


def test_fixed_params_are_enqueued_only_when_inside_the_space():
    assert (
        fixed_trial_params(CONFIG.hyperparameters, SPACE)["optimizer"]
        == CONFIG.hyperparameters.optimizer.name
    )
    outside = CONFIG.hyperparameters.model_copy(update={"batch_size": 7})
    assert fixed_trial_params(outside, SPACE) is None
    rmsprop = CONFIG.hyperparameters.model_copy(
        update={"optimizer": CONFIG.optimizer.model_copy(update={"name": "rmsprop"})}
    )
    assert fixed_trial_params(rmsprop, SPACE)["rho"] == CONFIG.hyperparameters.optimizer.rho
    high_rho = rmsprop.model_copy(
        update={"optimizer": rmsprop.optimizer.model_copy(update={"rho": 0.999})}
    )
    assert fixed_trial_params(high_rho, SPACE) is None


def test_relative_sqlite_storage_lives_in_the_project(tmp_path):
    assert resolve_storage("sqlite:///optuna/s.db", tmp_path) == f"sqlite:///{tmp_path}/optuna/s.db"
    assert (tmp_path / "optuna").is_dir()
    url = "postgresql://user@db.example/optuna"
    assert resolve_storage(url, tmp_path) == url


def tiny_arrays(count: int, seed: int) -> SplitArrays:
    """Learnable toy X-rays: pneumonia images are brighter in the middle."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    images = rng.integers(0, 120, size=(count, 16, 16, 1)).astype(np.uint8)
    images[labels == 1, 4:12, 4:12] += 100
    return SplitArrays(images, labels.astype(np.uint8))


TINY = CONFIG.model_copy(
    update={
        "model": CONFIG.model.model_copy(update={"depth": 2, "base_filters": 4}),
        "batch_size": 8,
        "tuning": CONFIG.tuning.model_copy(update={"epochs": 3}),
    }
)


class PruneAfterFirstEpoch(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def test_pruner_stops_a_trial_through_the_keras_callback(capsys):
    # Logs to this test's own store (conftest.py's isolated_mlflow).
    mlflow.set_experiment("tuning-test")
    study = optuna.create_study(direction="maximize", pruner=PruneAfterFirstEpoch())
    with mlflow.start_run(run_name="train") as parent:
        objective = make_objective(TINY, tiny_arrays(32, 0), tiny_arrays(16, 1), parent.info.run_id)
        study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED
    # A header, the epoch's line (printed before the pruning callback stops the fit), the result.
    lines = capsys.readouterr().err.splitlines()
    assert lines[-3].startswith("trial 1: optimizer ")
    assert lines[-2].startswith("  epoch 1/3: loss ") and "val_auc" in lines[-2]
    assert lines[-1].startswith("trial 1: pruned in ")
    # Reported once, then pruned; at step 0, as Optuna counts steps (its own 0-based way).
    assert list(trial.intermediate_values) == [0]
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert children["tags.trial_state"].tolist() == ["PRUNED"]
    assert children["status"].tolist() == ["KILLED"]  # pruned, not failed
    history = mlflow.MlflowClient().get_metric_history(children["run_id"][0], MONITOR)
    assert [metric.step for metric in history] == [1]  # MLflow steps are epoch numbers


@pytest.mark.slow  # two full 8-epoch fits: real training, the slowest unit test
def test_same_seed_gives_the_same_val_auc_on_cpu():
    train, val = tiny_arrays(48, 0), tiny_arrays(24, 1)
    values = []
    for _ in range(2):
        _, history = fit(TINY.hyperparameters, train, val, TINY, epochs=8, callbacks=[])
        values.append(best_epoch(history)[1])
    assert round(values[0], 4) == round(values[1], 4)
    assert values[0] > 0.5  # it learns the toy signal at all


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask/tell by hand
def test_only_proven_orphans_of_fresh_studies_are_failed(tmp_path):
    """A fresh study is never reopened, so Optuna's heartbeat check never reaches the trial a
    killed stage left RUNNING; the next train stage fails it, but only on proof: a stale Optuna
    heartbeat, or an owner process on this machine that is gone. No heartbeat, no owner, an
    ended MLflow run or a run in another store prove nothing (another experiment's live trial,
    under `dvc queue start -j 2`)."""
    import dataclasses

    from pneumonia.model.tuning.orphans import fail_orphaned_trials
    from pneumonia.model.tuning.records import (
        FRESH_STUDY_ATTRIBUTE,
        MLFLOW_RUN_ATTRIBUTE,
        OWNER_ATTRIBUTE,
    )
    from pneumonia.tracking import ProcessIdentity

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=2)
    client = mlflow.MlflowClient()
    ended = client.create_run(client.create_experiment("trials")).info.run_id
    client.set_terminated(ended, status="FINISHED")  # as the objective ends it before `tell`
    here = ProcessIdentity.current()
    # The same pid under another start time: the process that ran it is gone, the pid reused.
    reused = dataclasses.replace(here, start_time=str(int(here.start_time) - 1))
    elsewhere = dataclasses.replace(reused, boot_id="another-machine")

    def running_trial(study: optuna.Study, owner: ProcessIdentity | None = None, run=None):
        trial = study.ask()
        if owner is not None:
            storage.set_trial_system_attr(trial._trial_id, OWNER_ATTRIBUTE, owner.as_dict())
        if run is not None:
            trial.set_user_attr(MLFLOW_RUN_ATTRIBUTE, run)
        return trial

    fresh = optuna.create_study(storage=storage, study_name="train@q7-depth5-1234abcd")
    fresh.set_user_attr(FRESH_STUDY_ATTRIBUTE, True)
    running_trial(fresh)  # just asked: no heartbeat, no owner yet
    running_trial(fresh, run=ended)  # its run ended, Optuna not yet told
    running_trial(fresh, run="not-in-this-store")
    running_trial(fresh, owner=here)  # alive
    running_trial(fresh, owner=elsewhere)  # another machine: its heartbeat will tell
    running_trial(fresh, owner=reused)  # gone
    stale = running_trial(fresh, owner=elsewhere)
    storage.record_heartbeat(stale._trial_id)
    legacy = optuna.create_study(storage=storage, study_name="pneumonia-cnn-0badc0de")
    running_trial(legacy, owner=reused)
    named = optuna.create_study(storage=storage, study_name="shared-study")
    running_trial(named, owner=reused)  # a named study: Optuna's heartbeat's job, not this

    assert sorted(fail_orphaned_trials(storage, "pneumonia-cnn")) == [
        ("pneumonia-cnn-0badc0de", 0),
        ("train@q7-depth5-1234abcd", 5),
    ]
    time.sleep(3.5)  # the grace period (2 s; SQLite counts whole seconds) passes unbeaten
    assert fail_orphaned_trials(storage, "pneumonia-cnn") == [("train@q7-depth5-1234abcd", 6)]
    states = [trial.state for trial in fresh.trials]
    assert states == [TrialState.RUNNING] * 5 + [TrialState.FAIL] * 2
    assert named.trials[0].state == TrialState.RUNNING
    fresh.tell(0, 0.5)  # the live ones finish as they would have
    assert fresh.trials[0].state == TrialState.COMPLETE


def test_a_fresh_study_is_named_after_the_train_run_and_a_named_one_keeps_its_name(tmp_path):
    """optuna-dashboard lists studies by name: a fresh one carries the DVC experiment (the
    train run's name) and a unique suffix; a shared one keeps train.tuning.study_name. Both
    name their objective."""
    import re

    from pneumonia.model.tuning.records import FRESH_STUDY_ATTRIBUTE

    storage = "sqlite:///studies/optuna.db"  # under the project root
    fresh = load_config(write_params(tmp_path, {"train.tuning.storage": storage}))
    first = create_study(fresh.train, fresh.project_root, "train@q7-depth5")
    again = create_study(fresh.train, fresh.project_root, "train@q7-depth5")
    assert re.fullmatch(r"train@q7-depth5-[0-9a-f]{8}", first.study_name)
    assert again.study_name != first.study_name  # a re-run does not reopen the old study
    assert first.metric_names == ["val_auc"]
    assert first.user_attrs[FRESH_STUDY_ATTRIBUTE] is True

    shared = load_config(
        write_params(
            tmp_path, {"train.tuning.storage": storage, "train.tuning.study_name": "big-run"}
        )
    )
    created = create_study(shared.train, shared.project_root, "tune-worker")
    joined = create_study(shared.train, shared.project_root, "tune-worker")
    assert created.study_name == joined.study_name == "big-run"
    assert joined.metric_names == ["val_auc"]
    assert FRESH_STUDY_ATTRIBUTE not in joined.user_attrs
    assert len(joined.trials) == 1  # the fixed params, queued once by the creator


def test_a_named_study_refuses_another_architecture(tmp_path):
    shared = {"train.tuning.storage": "sqlite:///s.db", "train.tuning.study_name": "shared"}
    cnn = load_config(write_params(tmp_path, shared))
    create_study(cnn.train, cnn.project_root, "train")
    backbone = load_config(
        write_params(
            tmp_path,
            {
                **shared,
                "preprocess.image.size": 32,
                "train.model.architecture": "mobilenetv3small",
            },
        )
    )
    with pytest.raises(TuningError, match=r"architecture 'cnn', not 'mobilenetv3small'"):
        create_study(backbone.train, backbone.project_root, "train")
    # A study from before the architecture was recorded: its best trial's params say it.
    with pytest.raises(TuningError, match="no fine_tuning_learning_rate, unfreeze"):
        hyperparameters_from(BASE, backbone.train.hyperparameters)
