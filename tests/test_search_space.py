"""The declared search space (model/tuning/search_space.py): its table matches the schema, and
the default study draws exactly the trials it drew before the table replaced the hand-written
functions (recorded from that code, written here as literals)."""

import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import FixedTrial

from pneumonia.config import Hyperparameters, SearchSpace, load_config
from pneumonia.model.tuning.records import TuningError
from pneumonia.model.tuning.search_space import (
    SEARCH_SPACE,
    fixed_trial_params,
    hyperparameters_from,
    suggest,
)
from pneumonia.model.tuning.study import create_study

from helpers import PROJECT_ROOT

DEFAULT_STUDY = [
    [
        ("optimizer", "adam"),
        ("base_filters", 16),
        ("dropout", 0.3),
        ("learning_rate", 0.001),
        ("weight_decay", 0.0001),
        ("batch_size", 32),
    ],
    [
        ("optimizer", "rmsprop"),
        ("base_filters", 8),
        ("dropout", 0.1624074561769746),
        ("learning_rate", 0.00016998978382700775),
        ("weight_decay", 1.493656855461763e-06),
        ("rho", 0.9645734676972377),
        ("momentum", 0.541003510568888),
        ("batch_size", 64),
    ],
    [
        ("optimizer", "adam"),
        ("base_filters", 16),
        ("dropout", 0.2216968971838151),
        ("learning_rate", 0.0005958389350068958),
        ("weight_decay", 1.9762189340280066e-05),
        ("batch_size", 32),
    ],
    [
        ("optimizer", "rmsprop"),
        ("base_filters", 16),
        ("dropout", 0.1798695128633439),
        ("learning_rate", 0.0005748924681991981),
        ("weight_decay", 5.987474910461405e-05),
        ("rho", 0.8088255784167996),
        ("momentum", 0.5467903667112946),
        ("batch_size", 64),
    ],
    [
        ("optimizer", "adam"),
        ("base_filters", 8),
        ("dropout", 0.3736932106048628),
        ("learning_rate", 0.00044684675025045853),
        ("weight_decay", 2.3233503515390116e-06),
        ("batch_size", 64),
    ],
    [
        ("optimizer", "rmsprop"),
        ("base_filters", 16),
        ("dropout", 0.31868411173731187),
        ("learning_rate", 0.00018752209455786411),
        ("weight_decay", 0.0008105016126411582),
        ("rho", 0.9472752364386118),
        ("momentum", 0.8455490474077703),
        ("batch_size", 64),
    ],
    [
        ("optimizer", "rmsprop"),
        ("base_filters", 16),
        ("dropout", 0.25547091587579285),
        ("learning_rate", 0.0002516607127550297),
        ("weight_decay", 0.0003063462210622083),
        ("rho", 0.8677831320717819),
        ("momentum", 0.2528410587186427),
        ("batch_size", 64),
    ],
    [
        ("optimizer", "rmsprop"),
        ("base_filters", 8),
        ("dropout", 0.10220884684944097),
        ("learning_rate", 0.0016015312171361203),
        ("weight_decay", 0.00013199942261535007),
        ("rho", 0.9385113619277876),
        ("momentum", 0.6941433120173511),
        ("batch_size", 32),
    ],
    [
        ("optimizer", "adam"),
        ("base_filters", 8),
        ("dropout", 0.2243929286862649),
        ("learning_rate", 0.0003022283475646735),
        ("weight_decay", 0.0001544608907504709),
        ("batch_size", 32),
    ],
    [
        ("optimizer", "rmsprop"),
        ("base_filters", 8),
        ("dropout", 0.40838687198182444),
        ("learning_rate", 0.0005362853964441848),
        ("weight_decay", 3.69997243146381e-05),
        ("rho", 0.8812327934881244),
        ("momentum", 0.02287721406968567),
        ("batch_size", 64),
    ],
    [
        ("optimizer", "adam"),
        ("base_filters", 8),
        ("dropout", 0.3661659686569529),
        ("learning_rate", 0.000412046412978151),
        ("weight_decay", 5.395108834200261e-06),
        ("batch_size", 64),
    ],
    [
        ("optimizer", "rmsprop"),
        ("base_filters", 8),
        ("dropout", 0.43575728177099304),
        ("learning_rate", 0.0006479745583595581),
        ("weight_decay", 0.0006820068343637349),
        ("rho", 0.8836425370549449),
        ("momentum", 0.044518562434226944),
        ("batch_size", 64),
    ],
]

BACKBONE_STUDY = [
    [
        ("optimizer", "rmsprop"),
        ("dropout", 0.3),
        ("fine_tuning_learning_rate", 0.0001),
        ("unfreeze", "all"),
        ("learning_rate", 0.001),
        ("weight_decay", 0.0001),
        ("rho", 0.9),
        ("momentum", 0.0),
        ("batch_size", 32),
    ],
    [
        ("optimizer", "rmsprop"),
        ("dropout", 0.39279757672456206),
        ("fine_tuning_learning_rate", 0.00015751320499779721),
        ("unfreeze", "all"),
        ("learning_rate", 0.00012184186502221769),
        ("weight_decay", 0.0003967605077052988),
        ("rho", 0.9142118522312097),
        ("momentum", 0.637265320016441),
        ("batch_size", 32),
    ],
    [
        ("optimizer", "adam"),
        ("dropout", 0.17336180394137352),
        ("fine_tuning_learning_rate", 4.059611610484306e-05),
        ("unfreeze", "all"),
        ("learning_rate", 0.0002692655251486473),
        ("weight_decay", 6.847920095574779e-05),
        ("batch_size", 64),
    ],
    [
        ("optimizer", "rmsprop"),
        ("dropout", 0.1798695128633439),
        ("fine_tuning_learning_rate", 0.00010677482709481354),
        ("unfreeze", "all"),
        ("learning_rate", 0.0007896186801026692),
        ("weight_decay", 3.247673570627449e-06),
        ("rho", 0.8123598026672032),
        ("momentum", 0.8539969835279999),
        ("batch_size", 16),
    ],
    [
        ("optimizer", "rmsprop"),
        ("dropout", 0.27606099749584057),
        ("fine_tuning_learning_rate", 1.7541893487450798e-05),
        ("unfreeze", "all"),
        ("learning_rate", 0.0022038218939289885),
        ("weight_decay", 5.975027999960295e-06),
        ("rho", 0.9258792340272566),
        ("momentum", 0.28053996848046986),
        ("batch_size", 32),
    ],
    [
        ("optimizer", "adam"),
        ("dropout", 0.4757995766256756),
        ("fine_tuning_learning_rate", 0.0006161049539380963),
        ("unfreeze", 50),
        ("learning_rate", 0.00013511829476450826),
        ("weight_decay", 3.87211803217458e-06),
        ("batch_size", 64),
    ],
]

RMSPROP_TRIAL_FLAT = {
    "model.architecture": "cnn",
    "model.weights": "none",
    "model.depth": 5,
    "model.base_filters": 8,
    "model.convolution": "separable",
    "model.dropout": 0.1624074561769746,
    "optimizer.name": "rmsprop",
    "optimizer.learning_rate": 0.00016998978382700775,
    "optimizer.weight_decay": 1.493656855461763e-06,
    "optimizer.rho": 0.9645734676972377,
    "optimizer.momentum": 0.541003510568888,
    "batch_size": 64,
}


def project_config(folder: Path, overrides: dict | None = None):
    """The project's own params.yaml (without the tests' speed overrides: its search space and
    fixed params are the default study's), in `folder` so that the study database lands there."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    return load_config(folder / "params.yaml", overrides)


def made_up_val_auc(params: dict) -> float:
    """A value that depends on the params, so that TPE, past its startup trials, has something
    to model; the same function recorded the literals above."""
    return (
        params["dropout"]
        + math.log10(params["learning_rate"]) / 10
        + (0.05 if params["optimizer"] == "adam" else 0.0)
        + params["batch_size"] / 1000
    )


def drawn_trials(folder: Path, trials: int, overrides: dict | None = None) -> list:
    """The params of the first `trials` trials of a fresh study, created as the train stage
    creates it (seeded TPE, the fixed params enqueued first), drawn by `suggest`."""
    loaded = project_config(folder, overrides)
    config = loaded.train
    study = create_study(config, loaded.project_root, "train@pinned")

    def objective(trial: optuna.Trial) -> float:
        hyperparameters = suggest(trial, config.tuning.search_space, config.hyperparameters)
        assert hyperparameters_from(trial.params, config.hyperparameters) == hyperparameters
        return made_up_val_auc(trial.params)

    study.optimize(objective, n_trials=trials)
    return [list(trial.params.items()) for trial in study.trials]


def test_the_table_declares_every_key_of_the_search_space_once():
    names = [parameter.name for parameter in SEARCH_SPACE]
    assert sorted(names) == sorted(SearchSpace.model_fields)
    assert len(set(names)) == len(names)
    for parameter in SEARCH_SPACE:  # each path names a field of Hyperparameters
        section, _, field = parameter.path.rpartition(".")
        holder = Hyperparameters.model_fields[section].annotation if section else Hyperparameters
        assert field in holder.model_fields, parameter.path


def test_the_default_study_draws_the_trials_it_always_drew(tmp_path):
    """Trial 0 is the fixed params, 1-9 TPE's seeded startup draws, 10-11 TPE's own."""
    assert drawn_trials(tmp_path, len(DEFAULT_STUDY)) == DEFAULT_STUDY


def test_a_backbone_study_with_rmsprop_draws_the_trials_it_always_drew(tmp_path):
    overrides = {"train.model.architecture": "mobilenetv3small", "train.optimizer.name": "rmsprop"}
    assert drawn_trials(tmp_path, len(BACKBONE_STUDY), overrides) == BACKBONE_STUDY


def test_the_first_trial_lists_the_params_every_trial_has_then_the_conditional_ones(tmp_path):
    """The trials table's system_attrs_fixed_params column writes this mapping as it is."""
    config = project_config(
        tmp_path,
        {"train.model.architecture": "mobilenetv3small", "train.optimizer.name": "rmsprop"},
    ).train
    assert list(fixed_trial_params(config.hyperparameters, config.tuning.search_space)) == [
        "optimizer",
        "dropout",
        "learning_rate",
        "weight_decay",
        "batch_size",
        "fine_tuning_learning_rate",
        "unfreeze",
        "rho",
        "momentum",
    ]


def test_a_trial_becomes_the_mlflow_params_it_always_logged(tmp_path):
    config = project_config(tmp_path).train
    params = dict(DEFAULT_STUDY[1])
    hyperparameters = suggest(
        FixedTrial(params), config.tuning.search_space, config.hyperparameters
    )
    assert hyperparameters.flat() == RMSPROP_TRIAL_FLAT
    assert list(hyperparameters.flat()) == list(RMSPROP_TRIAL_FLAT)


def test_a_trial_missing_a_parameter_it_should_have_is_refused(tmp_path):
    config = project_config(tmp_path).train
    rmsprop = dict(DEFAULT_STUDY[1])
    del rmsprop["momentum"]
    with pytest.raises(TuningError, match="no momentum: it was not drawn from this search space"):
        hyperparameters_from(rmsprop, config.hyperparameters)
    del rmsprop["base_filters"]
    with pytest.raises(TuningError, match="no base_filters, momentum: it was tuned for another"):
        hyperparameters_from(rmsprop, config.hyperparameters)
