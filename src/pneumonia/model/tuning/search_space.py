"""The tuned hyperparameters, declared once in SEARCH_SPACE, and the three things done with it:
draw a trial's values (suggest), turn a trial's values into Hyperparameters
(hyperparameters_from), and offer the fixed hyperparameters as the first trial
(fixed_trial_params).

A parameter's name is the Optuna trial param's and the train.tuning.search_space key's: studies
already stored are read by these names, so they do not change."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import optuna
from pydantic import BaseModel

from pneumonia.config import Hyperparameters, SearchSpace
from pneumonia.model.tuning.records import TuningError


@dataclass(frozen=True)
class Condition:
    """When a parameter belongs to a trial, judged from the fixed hyperparameters (the
    architecture is not tuned) or from the values the trial holds for the parameters declared
    before it (its optimizer)."""

    description: str
    holds: Callable[[Mapping[str, Any], Hyperparameters], bool]
    # Whether a trial lacking the parameter was tuned for another train.model.architecture.
    architecture: bool = False


ONLY_CNN = Condition("cnn only", lambda values, fixed: not fixed.model.is_backbone, True)
ONLY_BACKBONE = Condition("backbone only", lambda values, fixed: fixed.model.is_backbone, True)
ONLY_RMSPROP = Condition("rmsprop only", lambda values, fixed: values.get("optimizer") == "rmsprop")


@dataclass(frozen=True)
class Parameter:
    """One tuned hyperparameter.

    Its range is train.tuning.search_space.<name>: a list of choices (`categorical`), or a
    `[low, high]` pair (`float`, drawn on a log scale when `log`)."""

    name: str
    # Where the value goes in Hyperparameters: `<section>.<field>`, or a top-level field.
    path: str
    kind: Literal["categorical", "float"]
    log: bool = False
    only: Condition | None = None

    def applies(self, values: Mapping[str, Any], fixed: Hyperparameters) -> bool:
        return self.only is None or self.only.holds(values, fixed)

    def draw(self, trial: optuna.Trial, space: SearchSpace) -> Any:
        bounds = getattr(space, self.name)
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(bounds))
        return trial.suggest_float(self.name, *bounds, log=self.log)

    def contains(self, space: SearchSpace, value: Any) -> bool:
        bounds = getattr(space, self.name)
        if self.kind == "categorical":
            return value in bounds
        return bounds[0] <= value <= bounds[1]

    def value_in(self, hyperparameters: Hyperparameters) -> Any:
        return functools.reduce(getattr, self.path.split("."), hyperparameters)


# The order is the draw order. The seeded sampler hands out its random numbers in call order, so
# another order would give a study other trials, and ship another model, than the ones
# docs/experiments.md records (tests/test_search_space.py pins the default study's draws). A new
# parameter goes last; a condition may read only the parameters above it.
SEARCH_SPACE: tuple[Parameter, ...] = (
    Parameter("optimizer", "optimizer.name", "categorical"),
    Parameter("base_filters", "model.base_filters", "categorical", only=ONLY_CNN),
    Parameter("dropout", "model.dropout", "float"),
    Parameter(
        "fine_tuning_learning_rate",
        "fine_tuning.learning_rate",
        "float",
        log=True,
        only=ONLY_BACKBONE,
    ),
    Parameter("unfreeze", "fine_tuning.unfreeze", "categorical", only=ONLY_BACKBONE),
    Parameter("learning_rate", "optimizer.learning_rate", "float", log=True),
    Parameter("weight_decay", "optimizer.weight_decay", "float", log=True),
    Parameter("rho", "optimizer.rho", "float", only=ONLY_RMSPROP),
    Parameter("momentum", "optimizer.momentum", "float", only=ONLY_RMSPROP),
    Parameter("batch_size", "batch_size", "categorical"),
)


def suggest(trial: optuna.Trial, space: SearchSpace, fixed: Hyperparameters) -> Hyperparameters:
    """Draw one configuration, in SEARCH_SPACE's order; the rest stays as `fixed` has it."""
    values: dict[str, Any] = {}
    for parameter in SEARCH_SPACE:
        if parameter.applies(values, fixed):
            values[parameter.name] = parameter.draw(trial, space)
    return _applied(values, fixed)


def hyperparameters_from(params: Mapping[str, Any], fixed: Hyperparameters) -> Hyperparameters:
    """Rebuild the Hyperparameters a trial's params describe (the inverse of `suggest`)."""
    missing = [
        parameter
        for parameter in SEARCH_SPACE
        if parameter.applies(params, fixed) and parameter.name not in params
    ]
    if missing:
        names = ", ".join(parameter.name for parameter in missing)
        if any(parameter.only and parameter.only.architecture for parameter in missing):
            # A study from before studies recorded their architecture, tuned for another one.
            raise TuningError(
                f"the study's best trial has no {names}: it was tuned for another "
                f"train.model.architecture than {fixed.model.architecture!r}; name another study "
                "(train.tuning.study_name) or set the architecture it was tuned for"
            )
        raise TuningError(
            f"the study's best trial has no {names}: it was not drawn from this search space; "
            "name another study (train.tuning.study_name)"
        )
    return _applied(params, fixed)


def fixed_trial_params(fixed: Hyperparameters, space: SearchSpace) -> dict[str, Any] | None:
    """The fixed hyperparameters as a first trial to enqueue, when they lie in the space."""
    values: dict[str, Any] = {}
    for parameter in SEARCH_SPACE:
        if parameter.applies(values, fixed):
            values[parameter.name] = parameter.value_in(fixed)
    if not all(
        parameter.contains(space, values[parameter.name])
        for parameter in SEARCH_SPACE
        if parameter.name in values
    ):
        return None
    # The parameters every trial has, then the conditional ones: the order the trials table's
    # system_attrs_fixed_params column has always written this mapping in (the sampler reads it
    # by name, so the order changes no draw).
    conditional = {parameter.name: parameter.only is not None for parameter in SEARCH_SPACE}
    return {name: values[name] for name in sorted(values, key=conditional.__getitem__)}


def _applied(values: Mapping[str, Any], fixed: Hyperparameters) -> Hyperparameters:
    """`fixed` with the values of the parameters that apply to it."""
    sections: dict[str, dict[str, Any]] = {}
    fields: dict[str, Any] = {}
    for parameter in SEARCH_SPACE:
        if parameter.applies(values, fixed):
            section, _, field = parameter.path.rpartition(".")
            target = sections.setdefault(section, {}) if section else fields
            target[field] = values[parameter.name]
    for name, current in fixed:
        if isinstance(current, BaseModel):
            # Validated like params.yaml (model_copy would not validate).
            changed = {**current.model_dump(), **sections.get(name, {})}
            fields[name] = type(current).model_validate(changed)
        else:
            fields.setdefault(name, current)
    return Hyperparameters(**fields)
