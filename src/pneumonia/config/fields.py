"""The building blocks of the schema: the strict Section base every params.yaml mapping is, and
the field types several sections share (seeds, worker counts, names the tools store, paths kept
inside the project, ordered ranges)."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from pneumonia.config.messages import ConfigError, describe_errors, shown


class Section(BaseModel):
    """A mapping of params.yaml: every key known and typed, nothing coerced from another type
    (`true` is not 1, "5" is not 5), no NaN or infinity."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, allow_inf_nan=False, str_strip_whitespace=True
    )

    @classmethod
    def from_section(cls: type[SectionType], data: Any, prefix: str) -> SectionType:
        """Validate one section; errors name their keys under `prefix`."""
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise ConfigError(describe_errors(error, cls, prefix)) from None


SectionType = TypeVar("SectionType", bound=Section)

# Lists in YAML are tuples here (frozen); their items stay strict.
Pair = Annotated[tuple[float, float], Field(strict=False)]
# NumPy's range (keras.utils.set_random_seed seeds NumPy): 2**32 fails after the data loads.
MAX_SEED = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
# More than the usable cores is clamped to them when the stage runs (resolve_workers): one
# params.yaml serves machines of every size.
Workers = Annotated[
    int,
    Field(
        ge=0,
        description="processes (0 = all cores; more than the usable cores are clamped to them)",
    ),
]
Name = Annotated[str, Field(min_length=1)]
# MLflow's SQL stores keep experiment and registered model names in VARCHAR(256) (its own check
# allows a 500-character experiment name, which PostgreSQL and MySQL then refuse); Optuna's keep
# study names in VARCHAR(512).
MAX_EXPERIMENT_NAME = 256
MAX_MODEL_NAME = 256
MAX_STUDY_NAME = 512


def printable(value: str) -> str:
    """A name MLflow or Optuna stores: no control characters (PostgreSQL refuses NUL, and a
    newline would break the one-line messages that quote it)."""
    if any(not character.isprintable() for character in value):
        raise ValueError(f"must not hold control characters (a tab, a newline), got {shown(value)}")
    return value


def _registered_model_name(value: str) -> str:
    # The name goes into models:/<name>/<version> and models:/<name>@<alias> URIs, and into the
    # registry's search filters (name='...'), which a quote breaks.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value) or len(value) > MAX_MODEL_NAME:
        raise ValueError(
            "must be a registered model name of letters, digits, '.', '_' and '-' (at most "
            f"{MAX_MODEL_NAME} characters, the first a letter or digit) such as "
            f"pneumonia-classifier, got {shown(value)}"
        )
    return value


ModelName = Annotated[str, AfterValidator(_registered_model_name)]


def ordered_pair(value: tuple[float, float], low: float, high: float) -> tuple[float, float]:
    if not low <= value[0] <= value[1] <= high:
        raise ValueError(f"must satisfy {low} <= low <= high <= {high}, got {list(value)}")
    return value


@dataclass(frozen=True)
class PairWithin:
    """The check that a `[low, high]` pair is ordered and inside [lowest, highest], as an
    AfterValidator: its bounds stay readable (tools/parameters_doc.py prints them)."""

    lowest: float
    highest: float

    def __call__(self, value: tuple[float, float]) -> tuple[float, float]:
        return ordered_pair(value, self.lowest, self.highest)


def inside_project(value: str) -> str:
    """A path relative to params.yaml's folder that stays inside it: the pipeline writes and
    deletes there, so `../victim` or `/home/me` must never get that far."""
    normal = posixpath.normpath(value.replace("\\", "/"))
    if (
        PurePosixPath(normal).is_absolute()
        or PureWindowsPath(value).is_absolute()
        or value.startswith("~")
        or normal == "."
        or normal == ".."
        or normal.startswith("../")
    ):
        raise ValueError(
            "must be a path inside the project, relative to the folder of params.yaml (such as "
            f"data/raw/images), got {shown(value)}"
        )
    return value


ProjectPath = Annotated[str, Field(min_length=1), AfterValidator(inside_project)]


def _unfreeze(value: Any) -> Any:
    if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(
        f"must be all or a number of layers >= 1 (the top N of the backbone), got {shown(value)}"
    )


# The before-check words the message; the type says what passes (and what the docs show).
Unfreeze = Annotated[Literal["all"] | Annotated[int, Field(ge=1)], BeforeValidator(_unfreeze)]
