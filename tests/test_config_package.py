"""The config package keeps each fact once: the sections are Params' fields (a Config has each
as an attribute without listing them again), the fixed hyperparameters are Hyperparameters' fields
(TrainConfig inherits them), and the architecture names are one registry that the schema accepts
and model.backbones builds."""

from __future__ import annotations

import copy
import inspect
import pickle
import typing

import pytest
import yaml

from pneumonia.config import (
    Config,
    ConfigError,
    Hyperparameters,
    ModelConfig,
    TrainConfig,
    load_config,
)
from pneumonia.config.architectures import ARCHITECTURES, BACKBONE_MIN_IMAGE_SIZE, CNN
from pneumonia.config.schema import Params

from helpers import PROJECT_PARAMS, write_params


def test_a_config_has_every_section_of_params_and_nothing_else(tmp_path):
    config = load_config(write_params(tmp_path, {}))
    assert isinstance(config, Config) and isinstance(config.sections, Params)
    for name in Params.model_fields:
        if name != "paths":  # the resolved Paths, not params.yaml's relative text
            assert getattr(config, name) is getattr(config.sections, name)
            assert name in dir(config)
    assert config.paths.models == tmp_path / config.sections.paths.models
    with pytest.raises(AttributeError, match="'Config' object has no attribute 'evalute'"):
        _ = config.evalute


def test_a_config_survives_pickle_and_copy(tmp_path):
    config = load_config(write_params(tmp_path, {"train.seed": 7}))
    for clone in (pickle.loads(pickle.dumps(config)), copy.deepcopy(config)):
        assert clone == config and clone.train.seed == 7 and clone.paths == config.paths


def test_the_schema_accepts_exactly_the_registrys_architectures(tmp_path):
    accepted = typing.get_args(ModelConfig.model_fields["architecture"].annotation)
    assert accepted == ARCHITECTURES == (CNN, *BACKBONE_MIN_IMAGE_SIZE)
    with pytest.raises(ConfigError, match="must be one of " + ", ".join(ARCHITECTURES)):
        load_config(write_params(tmp_path, {"train.model.architecture": "vgg16"}))


def test_model_backbones_builds_each_backbone_of_the_registry_and_no_other():
    from pneumonia.model import backbones  # loads Keras: imported here, only for this test

    assert list(backbones.BACKBONES) == list(BACKBONE_MIN_IMAGE_SIZE)
    assert set(backbones._APPLICATIONS) == set(BACKBONE_MIN_IMAGE_SIZE)


def test_the_fixed_hyperparameters_are_declared_once_and_keep_params_yamls_order(tmp_path):
    # TrainConfig holds Hyperparameters' fields by inheritance, not by copies of them.
    assert issubclass(TrainConfig, Hyperparameters)
    own = {
        name
        for name in inspect.get_annotations(TrainConfig)
        if name in Hyperparameters.model_fields
    }
    assert not own
    # The keys come in params.yaml's order (the did-you-mean and check-params list them so).
    train = yaml.safe_load(PROJECT_PARAMS.read_text(encoding="utf-8"))["train"]
    assert list(TrainConfig.model_fields) == list(train)
    config = load_config(write_params(tmp_path, {"train.batch_size": 8}))
    fixed = config.train.hyperparameters
    assert type(fixed) is Hyperparameters and fixed.batch_size == 8
    assert fixed.model is config.train.model and fixed.fine_tuning is config.train.fine_tuning
