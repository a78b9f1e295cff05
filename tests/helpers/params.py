"""The tests' params: the project's own params.yaml with SPEED_OVERRIDES applied, so that no copy
of it is kept in step by hand (a key added, renamed or removed there reaches every test).

A test whose meaning (not just its speed) depends on a value sets that value itself, visibly:
`write_params(folder, {...})`, `fixture_train_config({...})` or a `model_copy(update=...)`, so
that a default changed in params.yaml cannot change what a test checks unseen.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from pneumonia.config import TrainConfig, load_config

from helpers.paths import PROJECT_ROOT

PROJECT_PARAMS = PROJECT_ROOT / "params.yaml"

# Dotted params.yaml key -> the value every test starts from instead, to keep the tests fast.
# Empty: the frozen copy this replaces (tests/fixtures/params.yaml) held the project's values,
# every one of them, so the tests see what they saw. A key here that params.yaml lacks (a param
# renamed there) fails every test that builds params, naming it.
SPEED_OVERRIDES: dict[str, Any] = {}


@cache
def _project_params_text() -> str:
    return PROJECT_PARAMS.read_text()


def unknown_keys(params: Mapping[str, Any], changes: Mapping[str, Any]) -> list[str]:
    """The dotted keys of `changes` that name nothing in `params` (renamed or mistyped)."""
    unknown = []
    for dotted in changes:
        section: Any = params
        for part in dotted.split("."):
            if not isinstance(section, Mapping) or part not in section:
                unknown.append(dotted)
                break
            section = section[part]
    return unknown


def apply_changes(params: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Set each dotted key of `changes` in `params` (a None value deletes the key)."""
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        section = params
        for parent in parents:
            section = section.setdefault(parent, {})
        if value is None:
            del section[key]
        else:
            section[key] = copy.deepcopy(value)
    return params


def speed_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """SPEED_OVERRIDES, once checked against `params` (the project's): a KeyError names any key
    it lacks, rather than the override silently adding a key the schema would then refuse."""
    unknown = unknown_keys(params, SPEED_OVERRIDES)
    if unknown:
        raise KeyError(
            f"tests/helpers/params.py: SPEED_OVERRIDES names {', '.join(unknown)}, which "
            f"{PROJECT_PARAMS.name} does not have; rename it there"
        )
    return SPEED_OVERRIDES


def fixture_params() -> dict[str, Any]:
    """A fresh, mutable copy of the tests' params: params.yaml with SPEED_OVERRIDES applied."""
    params = yaml.safe_load(_project_params_text())
    return apply_changes(params, speed_overrides(params))


def write_params(folder: Path, changes: Mapping[str, Any]) -> Path:
    """folder/params.yaml: the tests' params with `changes` applied; returns its path."""
    params = apply_changes(fixture_params(), changes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder / "params.yaml"


def fixture_train_config(changes: Mapping[str, Any] | None = None) -> TrainConfig:
    """The train section of the tests' params, validated, with `changes` (dotted keys) on top.

    Only the train section, which names no path: this loads the project's own file, so the rest
    would resolve to the project's folders. A test that writes files uses write_params(tmp_path,
    ...) instead.
    """
    overrides = {**speed_overrides(yaml.safe_load(_project_params_text())), **(changes or {})}
    return load_config(PROJECT_PARAMS, overrides).train
