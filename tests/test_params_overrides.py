"""The tests' params are the project's params.yaml plus named speed overrides (issue 24, item 5):
no copy of params.yaml kept in step by hand, and an override of a renamed param fails loudly."""

from __future__ import annotations

import pytest
import yaml

from pneumonia.config import ConfigError, load_config

from helpers import (
    PROJECT_PARAMS,
    SPEED_OVERRIDES,
    TINY_PROJECT_CHANGES,
    apply_changes,
    fixture_params,
    fixture_train_config,
    write_params,
)
from helpers import params as params_overrides


def project_params() -> dict:
    return yaml.safe_load(PROJECT_PARAMS.read_text())


@pytest.mark.parametrize(
    "overrides",
    [SPEED_OVERRIDES, TINY_PROJECT_CHANGES],
    ids=["SPEED_OVERRIDES", "TINY_PROJECT_CHANGES"],
)
def test_the_speed_overrides_name_only_keys_params_yaml_has(overrides):
    assert params_overrides.unknown_keys(project_params(), overrides) == []


def test_a_renamed_or_mistyped_key_is_named():
    changes = {"train.epochs": 1, "train.epoch": 1, "train.epochs.count": 1, "trian.seed": 1}
    assert params_overrides.unknown_keys(project_params(), changes) == [
        "train.epoch",
        "train.epochs.count",
        "trian.seed",
    ]


def test_a_speed_override_of_a_param_params_yaml_lacks_fails_every_builder(monkeypatch, tmp_path):
    monkeypatch.setitem(params_overrides.SPEED_OVERRIDES, "train.epoch", 1)
    for build in (fixture_params, lambda: write_params(tmp_path, {}), fixture_train_config):
        with pytest.raises(KeyError, match=r"SPEED_OVERRIDES names train\.epoch, which params"):
            build()


def test_the_tests_params_are_the_projects_with_the_speed_overrides(tmp_path):
    expected = apply_changes(project_params(), SPEED_OVERRIDES)
    assert fixture_params() == expected
    # A fresh copy each time: a test's edits do not reach the next.
    edited = fixture_params()
    edited["train"]["epochs"] = -1
    assert fixture_params() == expected
    # The file and the train config are the same params, each test's changes on top.
    written = load_config(write_params(tmp_path, {"train.epochs": 3})).train
    assert written == fixture_train_config({"train.epochs": 3})
    assert written.epochs == 3


def test_a_change_to_the_train_config_is_validated():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.epoch'"):
        fixture_train_config({"train.epoch": 3})
