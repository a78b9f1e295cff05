"""params.yaml as a validated, typed object: params.yaml -> pydantic models -> functions.

Every stage calls :func:`load_config` once and passes the pieces it needs down. The schema below
is the one description of every param: its type, its choices, its bounds. Unknown keys and
sections are refused with a did-you-mean, and checks that span fields (depth against image
size, grace period against heartbeat) run at load, so a bad param fails before any work with a
message naming its key. Python names equal the YAML names: `train.model.depth` in params.yaml
is `config.train.model.depth`.
"""

from __future__ import annotations

import copy
import difflib
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal, TypeVar

import annotated_types
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from pneumonia.contracts.paths import Paths
from pneumonia.errors import PipelineError

KAGGLE_SOURCE = "kaggle"
SPLITS = ("train", "val", "test")
MAX_ENSEMBLE = 10
# A `dvc exp run --temp` or `--queue` runs in <project>/.dvc/tmp/exps/<name>/; the MLflow store
# and relative dataset paths must still resolve against <project>.
_DVC_TEMP_WORKSPACE = (".dvc", "tmp", "exps")


class ConfigError(PipelineError, ValueError):
    """A param in params.yaml is missing or out of range; the message names its key."""


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
Seed = Annotated[int, Field(ge=0)]
Workers = Annotated[int, Field(ge=0, description="processes; 0 = all cores")]
Name = Annotated[str, Field(min_length=1)]


def _ordered_pair(value: tuple[float, float], low: float, high: float) -> tuple[float, float]:
    if not low <= value[0] <= value[1] <= high:
        raise ValueError(f"must satisfy {low} <= low <= high <= {high}, got {list(value)}")
    return value


def _inside_project(value: str) -> str:
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
            f"data/raw/images), got {value!r}"
        )
    return value


ProjectPath = Annotated[str, Field(min_length=1), AfterValidator(_inside_project)]


class PathsConfig(Section):
    images: ProjectPath
    manifest: ProjectPath
    data_quality: ProjectPath
    split: ProjectPath
    processed: ProjectPath
    reports: ProjectPath
    models: ProjectPath

    @model_validator(mode="after")
    def _images_hold_nothing_else(self) -> PathsConfig:
        # download deletes and re-creates paths.images: no other output may live in it.
        images = PurePosixPath(posixpath.normpath(self.images))
        for name, value in self.model_dump().items():
            other = PurePosixPath(posixpath.normpath(value))
            if name != "images" and (other == images or images in other.parents):
                raise _FieldError(
                    name,
                    f"({value!r}) must not be inside 'paths.images' ({self.images!r}): the "
                    "download stage deletes and re-creates that folder",
                )
        return self


class MlflowConfig(Section):
    experiment: Name


class DownloadConfig(Section):
    source: str
    kaggle_dataset: Annotated[str, Field(pattern=r"^[^/\s]+/[^/\s]+$")]
    kaggle_version: Annotated[int, Field(ge=1)]
    workers: Workers
    # The originals are 0.1-3 MB; the cap keeps a zip bomb or a padded file off the disk.

    @field_validator("source")
    @classmethod
    def _source_given(cls, value: str) -> str:
        if not value:
            raise ValueError(
                "is empty; use 'kaggle' or a path to a local folder or .zip in the Kaggle layout"
            )
        return value

    @property
    def is_kaggle(self) -> bool:
        return self.source == KAGGLE_SOURCE

    @property
    def kaggle_handle(self) -> str:
        return f"{self.kaggle_dataset}/versions/{self.kaggle_version}"


class SplitConfig(Section):
    val_fraction: Annotated[float, Field(gt=0, lt=1)]
    seed: Seed


# The input limits' defaults, for what has no params.yaml: a served model logged before the
# limits existed, and `pneumonia predict` run outside a project. The dataset's originals are
# 0.1-3 MB and at most a few megapixels.
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_FILE_BYTES = 50_000_000
# Below this an image cannot hold an X-ray the model can read (it is itself 16-2048 px).
MIN_MAX_PIXELS = 32 * 32


class PreprocessConfig(Section):
    image_size: Annotated[int, Field(ge=16, le=2048)]
    resize: Literal["letterbox", "stretch", "crop"]
    clahe: bool
    clahe_clip_limit: Annotated[float, Field(gt=0)]
    clahe_tile_grid: Annotated[int, Field(ge=1)]
    workers: Workers
    sample_grid: Annotated[int, Field(ge=0)]
    # Input limits, checked before decoding wherever an image is read (download, preprocess,
    # predict, the served model); they change no pixel of an image they let through.
    max_pixels: Annotated[
        int, Field(ge=MIN_MAX_PIXELS, description="width x height, read from the header")
    ]
    max_file_bytes: Annotated[int, Field(ge=1, description="bytes of one encoded image")]

    @model_validator(mode="after")
    def _tiles_fit(self) -> PreprocessConfig:
        if self.clahe_tile_grid > self.image_size:
            raise _FieldError(
                "clahe_tile_grid",
                f"must be in [1, 'preprocess.image_size'] ([1, {self.image_size}]), got "
                f"{self.clahe_tile_grid}",
            )
        return self


# `cnn` is the project's own network (model.network), trained from scratch; the others are Keras
# Applications backbones (model.backbones), each with Keras's own smallest input side.
CNN = "cnn"
BACKBONE_MIN_IMAGE_SIZE = {
    "densenet121": 32,
    "efficientnetv2b0": 32,
    "resnet50v2": 32,
    "convnext_tiny": 32,
    "mobilenetv3small": 32,
}
Architecture = Literal[
    "cnn", "densenet121", "efficientnetv2b0", "resnet50v2", "convnext_tiny", "mobilenetv3small"
]
IMAGENET, NO_WEIGHTS = "imagenet", "none"


class ModelConfig(Section):
    architecture: Architecture
    # imagenet (Keras's download and cache), none (random), or a weights file (a backbone only).
    weights: Name
    # The cnn's own; a backbone ignores them.
    depth: Annotated[int, Field(ge=1, le=7, description="blocks, each halving the resolution")]
    base_filters: Annotated[int, Field(ge=1, le=512, description="doubled per block, to 8x")]
    convolution: Literal["plain", "separable"]
    dropout: Annotated[float, Field(ge=0, le=0.95)]

    @property
    def is_backbone(self) -> bool:
        return self.architecture != CNN

    @model_validator(mode="after")
    def _weights_fit_architecture(self) -> ModelConfig:
        if not self.is_backbone and self.weights != NO_WEIGHTS:
            raise _FieldError(
                "weights",
                f"must be none for architecture cnn (trained from scratch), got "
                f"{self.weights!r}; pretrained weights need a backbone such as "
                "'train.model.architecture: densenet121'",
            )
        return self


def _unfreeze(value: Any) -> Any:
    if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(
        f"must be all or a number of layers >= 1 (the top N of the backbone), got {value!r}"
    )


Unfreeze = Annotated[str | int, BeforeValidator(_unfreeze)]


class FineTuningConfig(Section):
    """A backbone's two phases (the cnn ignores them): warm-up with the backbone frozen, then
    fine-tuning with `unfreeze` of it trainable, each early-stopped on val AUC."""

    warmup_epochs: Annotated[int, Field(ge=0, description="backbone frozen; 0 skips")]
    learning_rate: Annotated[float, Field(gt=0, le=1, description="of the fine-tuning phase")]
    unfreeze: Unfreeze


class OptimizerConfig(Section):
    name: Literal["adam", "rmsprop"]
    learning_rate: Annotated[float, Field(gt=0, le=1)]
    weight_decay: Annotated[float, Field(ge=0, le=1)]
    rho: Annotated[float, Field(ge=0, le=0.9999, description="rmsprop only")]
    momentum: Annotated[float, Field(ge=0, le=0.9999, description="rmsprop only")]


class Hyperparameters(Section):
    """What one training run (a trial, or the final fit) is configured with."""

    model: ModelConfig
    optimizer: OptimizerConfig
    batch_size: Annotated[int, Field(ge=1)]
    fine_tuning: FineTuningConfig

    def flat(self) -> dict[str, Any]:
        """`model.architecture`, `optimizer.name`, ..., `batch_size`: the names MLflow logs,
        only those that apply (the cnn's shape, or a backbone's fine-tuning)."""
        values = {
            **{f"model.{key}": value for key, value in self.model.model_dump().items()},
            **{f"optimizer.{key}": value for key, value in self.optimizer.model_dump().items()},
            "batch_size": self.batch_size,
        }
        if self.model.is_backbone:
            for key in CNN_ONLY:
                del values[f"model.{key}"]
            values.update(
                {
                    f"fine_tuning.{key}": value
                    for key, value in self.fine_tuning.model_dump().items()
                }
            )
        if self.optimizer.name != "rmsprop":
            del values["optimizer.rho"], values["optimizer.momentum"]
        return values


# The model params that only the cnn reads.
CNN_ONLY = ("depth", "base_filters", "convolution")


class AugmentationConfig(Section):
    rotation: Annotated[float, Field(ge=0, le=0.5, description="fraction of a full turn")]
    shift: Annotated[float, Field(ge=0, le=0.5, description="fraction of the side")]
    zoom: Annotated[float, Field(ge=0, le=0.9)]
    contrast: Annotated[float, Field(ge=0, le=0.9)]
    brightness: Annotated[float, Field(ge=0, le=0.5, description="fraction of 255 (exposure)")]
    blur: Annotated[float, Field(ge=0, le=5, description="largest Gaussian sigma, pixels")]
    aspect: Annotated[float, Field(ge=0, le=0.5, description="width-only zoom")]


Optimizers = Annotated[tuple[Literal["adam", "rmsprop"], ...], Field(strict=False, min_length=1)]
Choices = Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(strict=False, min_length=1)]


class SearchSpace(Section):
    optimizer: Optimizers
    learning_rate: Pair  # log scale
    batch_size: Choices
    dropout: Pair
    weight_decay: Pair  # log scale
    rho: Pair  # rmsprop only
    momentum: Pair  # rmsprop only
    base_filters: Choices  # cnn only
    # A backbone only: the fine-tuning phase's learning rate (log scale) and unfrozen depth.
    fine_tuning_learning_rate: Pair
    unfreeze: Annotated[tuple[Unfreeze, ...], Field(strict=False, min_length=1)]

    @field_validator("fine_tuning_learning_rate")
    @classmethod
    def _fine_tuning_learning_rate(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _ordered_pair(value, 1e-9, 1.0)

    @field_validator("learning_rate")
    @classmethod
    def _learning_rate(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _ordered_pair(value, 1e-7, 1.0)

    @field_validator("dropout")
    @classmethod
    def _dropout(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _ordered_pair(value, 0.0, 0.95)

    @field_validator("weight_decay")
    @classmethod
    def _weight_decay(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _ordered_pair(value, 1e-12, 1.0)

    @field_validator("rho", "momentum")
    @classmethod
    def _rmsprop(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _ordered_pair(value, 0.0, 0.9999)


class TuningConfig(Section):
    n_trials: Annotated[int, Field(ge=0, description="0 skips tuning")]
    timeout: Annotated[int, Field(ge=0, description="seconds for the study; 0 = no limit")]
    epochs: Annotated[int, Field(ge=1)]
    pruner: Literal["median", "hyperband", "none"]
    storage: str
    study_name: str
    heartbeat_interval: Annotated[int, Field(ge=1, description="seconds")]
    grace_period: Annotated[int, Field(ge=1, description="seconds")]
    search_space: SearchSpace

    @field_validator("storage")
    @classmethod
    def _rdb_url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError(
                "must be an Optuna RDB URL such as sqlite:///studies/optuna.db or "
                "postgresql://user@host/db"
            )
        prefix = "sqlite:///"
        if value.startswith(prefix) and value[len(prefix) :] != ":memory:":
            try:
                _inside_project(value[len(prefix) :])
            except ValueError:
                raise ValueError(
                    "must keep a SQLite study inside the project (sqlite:///studies/optuna.db, "
                    "relative to the project root); share a study across machines through a "
                    f"database server (postgresql://user@host/db), got {value!r}"
                ) from None
        return value

    @model_validator(mode="after")
    def _grace_covers_heartbeats(self) -> TuningConfig:
        # Every worker judges the others' trials by its own grace period: a grace shorter than
        # two heartbeats would fail live trials whose heartbeat is merely a little late.
        if self.grace_period < 2 * self.heartbeat_interval:
            raise _FieldError(
                "grace_period",
                f"({self.grace_period}) must be at least twice 'train.tuning.heartbeat_interval' "
                f"({self.heartbeat_interval})",
            )
        return self


class TrainConfig(Section):
    seed: Seed
    epochs: Annotated[int, Field(ge=1, description="final fit with the chosen hyperparameters")]
    ensemble: Annotated[int, Field(ge=1, le=MAX_ENSEMBLE, description="each member a full fit")]
    early_stopping_patience: Annotated[int, Field(ge=1)]
    class_weight: Literal["balanced", "none"]
    label_smoothing: Annotated[float, Field(ge=0, le=0.5)]
    learning_rate_schedule: Literal["constant", "cosine"]
    mixed_precision: Literal["auto", "off"]
    registered_model_name: Name
    # The fixed hyperparameters: used as they are when tuning.n_trials is 0, and as the first
    # trial.
    model: ModelConfig
    optimizer: OptimizerConfig
    batch_size: Annotated[int, Field(ge=1)]
    fine_tuning: FineTuningConfig
    augmentation: AugmentationConfig
    tuning: TuningConfig

    @property
    def hyperparameters(self) -> Hyperparameters:
        return Hyperparameters(
            model=self.model,
            optimizer=self.optimizer,
            batch_size=self.batch_size,
            fine_tuning=self.fine_tuning,
        )


_THRESHOLD_PROBLEM = (
    "must be youden, sensitivity:<x> with 0 < x <= 1 (e.g. sensitivity:0.95), or a fixed "
    "threshold in (0, 1); got {value!r}"
)


class ThresholdRule(BaseModel):
    """How evaluate picks the operating threshold on val: youden, sensitivity or fixed."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    kind: Literal["youden", "sensitivity", "fixed"]
    value: float | None = None

    @model_validator(mode="after")
    def _value_fits_kind(self) -> ThresholdRule:
        fits = {
            "youden": self.value is None,
            "sensitivity": self.value is not None and 0.0 < self.value <= 1.0,
            "fixed": self.value is not None and 0.0 < self.value < 1.0,
        }[self.kind]
        if not fits:
            raise ValueError(_THRESHOLD_PROBLEM.format(value=f"{self.kind}:{self.value}"))
        return self

    @classmethod
    def parse(cls, value: Any) -> ThresholdRule:
        """From params.yaml: `youden`, `sensitivity:<x>`, or a number in (0, 1) (a number may
        arrive as text from `dvc exp run -S`)."""
        if isinstance(value, ThresholdRule):
            return value
        problem = _THRESHOLD_PROBLEM.format(value=value)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(problem)
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "youden":
                return cls(kind="youden")
            if text.startswith("sensitivity:"):
                try:
                    target = float(text.split(":", 1)[1])
                except ValueError:
                    raise ValueError(problem) from None
                if not 0.0 < target <= 1.0:
                    raise ValueError(problem)
                return cls(kind="sensitivity", value=target)
            try:
                value = float(text)
            except ValueError:
                raise ValueError(problem) from None
        if not 0.0 < float(value) < 1.0:
            raise ValueError(problem)
        return cls(kind="fixed", value=float(value))

    def __str__(self) -> str:
        if self.kind == "youden":
            return "youden"
        return f"sensitivity:{self.value}" if self.kind == "sensitivity" else str(self.value)


class EvaluateConfig(Section):
    threshold: ThresholdRule
    bootstrap: Annotated[int, Field(ge=100, description="patient-level resamples")]
    confidence: Annotated[float, Field(ge=0.5, le=0.999)]
    seed: Seed
    calibration_bins: Annotated[int, Field(ge=2)]
    gradcam_examples: Annotated[int, Field(ge=0, description="per outcome")]
    alias: str
    serving_model_name: str

    @field_validator("threshold", mode="before")
    @classmethod
    def _rule(cls, value: Any) -> ThresholdRule:
        return ThresholdRule.parse(value)

    @field_validator("alias")
    @classmethod
    def _alias(cls, value: str) -> str:
        # MLflow refuses aliases that read as a version (v3) or as `latest`.
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", value) or re.fullmatch(
            r"(?i)v\d+|latest", value
        ):
            raise ValueError(f"must be a name such as candidate, got {value!r}")
        return value

    @field_validator("serving_model_name")
    @classmethod
    def _registered_name(cls, value: str) -> str:
        # The name goes into models:/<name>/<version> and models:/<name>@<alias> URIs.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(
                "must be a registered model name of letters, digits, '.', '_' and '-' such as "
                f"pneumonia-classifier, got {value!r}"
            )
        return value


class Params(Section):
    """The whole of params.yaml; an unknown section (a typo such as `evalute:`) is refused."""

    paths: PathsConfig
    mlflow: MlflowConfig
    download: DownloadConfig
    split: SplitConfig
    preprocess: PreprocessConfig
    train: TrainConfig
    evaluate: EvaluateConfig

    @model_validator(mode="after")
    def _sections_agree(self) -> Params:
        model, size = self.train.model, self.preprocess.image_size
        depth = model.depth
        if model.is_backbone and size < BACKBONE_MIN_IMAGE_SIZE[model.architecture]:
            minimum = BACKBONE_MIN_IMAGE_SIZE[model.architecture]
            raise _FieldError(
                "preprocess.image_size",
                f"({size}) is too small for 'train.model.architecture' {model.architecture} "
                f"(needs >= {minimum}, Keras's minimum for it); raise it or use architecture cnn",
            )
        if not model.is_backbone and size < 2**depth:
            raise _FieldError(
                "train.model.depth",
                f"{depth} halves the image {depth} times; 'preprocess.image_size' {size} is "
                f"too small (needs >= {2**depth})",
            )
        # One registered name per flavor: promotion compares versions of one kind of model.
        if self.evaluate.serving_model_name == self.train.registered_model_name:
            raise _FieldError(
                "evaluate.serving_model_name",
                f"must differ from 'train.registered_model_name' (both "
                f"{self.train.registered_model_name!r})",
            )
        return self


# --- Errors that name their key ---------------------------------------------------------------


class _FieldError(ValueError):
    """A cross-field check's failure, naming the (dotted) key it blames, relative to the model
    that raised it."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _field(root: type[BaseModel], location: tuple) -> tuple[FieldInfo | None, type | None]:
    """The FieldInfo at a validation error's location, and the model that holds (or would hold,
    for an unknown key) the last key."""
    model: type[BaseModel] | None = root
    holder: type[BaseModel] | None = root
    info = None
    for part in location:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None, model
        holder, info = model, model.model_fields[part]
        annotation = info.annotation
        nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        model = annotation if nested else None
    return info, holder


def _bounds(info: FieldInfo | None, context: dict[str, Any]) -> str:
    """`in [1, 7]`, `in (0, 1)`, `>= 0` ...: a field's whole range, from its metadata (else the
    one bound the error names)."""
    low = high = None
    for item in (
        info.metadata
        if info is not None
        else [
            annotated_types.Ge(context["ge"]) if "ge" in context else None,
            annotated_types.Gt(context["gt"]) if "gt" in context else None,
            annotated_types.Le(context["le"]) if "le" in context else None,
            annotated_types.Lt(context["lt"]) if "lt" in context else None,
        ]
    ):
        if isinstance(item, annotated_types.Ge):
            low = f"[{item.ge}"
        elif isinstance(item, annotated_types.Gt):
            low = f"({item.gt}"
        elif isinstance(item, annotated_types.Le):
            high = f"{item.le}]"
        elif isinstance(item, annotated_types.Lt):
            high = f"{item.lt})"
    if low and high:
        return f"in {low}, {high}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1:]}"
    return f"{'<=' if high[-1] == ']' else '<'} {high[:-1]}"


def _did_you_mean(key: str, model: type[BaseModel] | None) -> str:
    if model is None:
        return ""
    known = list(model.model_fields)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{hint} (known: {', '.join(known)})"


def _describe(error: dict[str, Any], root: type[BaseModel], prefix: str) -> str:
    location = tuple(error["loc"])
    kind, given = error["type"], error.get("input")
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _FieldError):
        location = (*location, *cause.key.split("."))
    key = ".".join(str(part) for part in (*([prefix] if prefix else []), *location))
    info, holder = _field(root, location)
    if kind == "extra_forbidden":
        return f"unknown key '{key}'{_did_you_mean(str(location[-1]), holder)}"
    if kind == "missing":
        return f"'{key}' is missing"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"'{key}' must be {_bounds(info, error['ctx'])}, got {given!r}"
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'", error["ctx"]["expected"])
        # YAML 1.1 reads on/off/yes/no unquoted as booleans.
        quote = (
            "; quote it in YAML, as YAML reads it as a boolean" if isinstance(given, bool) else ""
        )
        return f"'{key}' must be one of {', '.join(expected)}, got {given!r}{quote}"
    if kind in ("int_type", "int_from_float"):
        return f"'{key}' must be an integer, got {given!r} ({type(given).__name__})"
    if kind == "float_type":
        return f"'{key}' must be a number, got {given!r} ({type(given).__name__})"
    if kind == "finite_number":
        return f"'{key}' must be a finite number, got {given!r}"
    if kind == "bool_type":
        return f"'{key}' must be true or false, got {given!r}"
    if kind == "string_type":
        return f"'{key}' must be text, got {given!r} ({type(given).__name__})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"'{key}' must be a mapping of keys, got {given!r}"
    if kind in ("tuple_type", "too_short", "too_long"):
        return f"'{key}' must be a list ({error['msg'].lower()}), got {given!r}"
    if kind == "string_too_short":
        return f"'{key}' must not be empty"
    if kind == "string_pattern_mismatch":
        return f"'{key}' must look like owner/name, got {given!r}"
    if kind == "value_error" and cause is not None:
        return f"'{key}' {cause}"
    return f"'{key}': {error['msg']}, got {given!r}"


def describe_errors(error: ValidationError, root: type[BaseModel], prefix: str = "") -> str:
    """One line per problem, each naming its dotted key."""
    errors = error.errors()
    # A list whose item failed also fails as a whole (too short after validation): report the
    # item only.
    locations = [tuple(item["loc"]) for item in errors]
    errors = [
        item
        for item in errors
        if not any(
            len(other) > len(item["loc"]) and other[: len(item["loc"])] == tuple(item["loc"])
            for other in locations
        )
    ]
    lines = [_describe(item, root, prefix) for item in errors]
    return "params.yaml: " + "; ".join(dict.fromkeys(lines))


# --- Loading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """params.yaml, validated, with its paths resolved against the folder that holds it."""

    workspace: Path
    project_root: Path
    paths: Paths
    mlflow: MlflowConfig
    download: DownloadConfig
    split: SplitConfig
    preprocess: PreprocessConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    params: dict[str, Any]  # the file as read (overrides applied), for logging

    def source_path(self) -> Path:
        """The local dataset folder or zip named by download.source, resolved like a user means it.

        A relative path is relative to the project root (not to a DVC temp workspace).
        """
        if self.download.is_kaggle:
            raise ConfigError("download.source is 'kaggle', not a local path")
        path = Path(os.path.expanduser(self.download.source))
        return path if path.is_absolute() else (self.project_root / path).resolve()


def find_project_root(start: Path) -> Path:
    """The project that owns `start`: above any DVC temp workspace, else the nearest DVC repo."""
    start = start.resolve()
    parts = start.parts
    for index in range(len(parts) - len(_DVC_TEMP_WORKSPACE) + 1):
        if parts[index : index + len(_DVC_TEMP_WORKSPACE)] == _DVC_TEMP_WORKSPACE:
            return Path(*parts[:index])
    for candidate in (start, *start.parents):
        if (candidate / ".dvc").is_dir() or (candidate / "dvc.yaml").is_file():
            return candidate
    return start


def read_params(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; run from the project root")
    try:
        with path.open() as handle:
            params = yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return params


def parse_override(text: str) -> tuple[str, Any]:
    """`train.tuning.n_trials=8` -> ("train.tuning.n_trials", 8); the value is read as YAML, the
    way `dvc exp run -S` reads it."""
    key, separator, value = text.partition("=")
    key = key.strip()
    if not separator or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a dotted key")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({error})") from error


def apply_overrides(params: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of params with dotted keys set; a mistyped key is then rejected by validation."""
    params = copy.deepcopy(params)
    for dotted, value in overrides.items():
        *parents, key = dotted.split(".")
        section = params
        for depth, parent in enumerate(parents, start=1):
            section = section.setdefault(parent, {})
            if not isinstance(section, dict):
                raise ConfigError(
                    f"override {dotted}: '{'.'.join(parents[:depth])}' is not a mapping"
                )
        section[key] = value
    return params


def load_config(
    params_path: Path | str = "params.yaml", overrides: Mapping[str, Any] | None = None
) -> Config:
    """Read and validate params.yaml; paths resolve against the folder that holds it.

    `overrides` maps dotted keys to values that replace the file's (like `dvc exp run -S`); they
    are validated with the rest.
    """
    params_path = Path(params_path).resolve()
    params = apply_overrides(read_params(params_path), overrides or {})
    validated = Params.from_section(params, "")
    workspace = params_path.parent
    return Config(
        workspace=workspace,
        project_root=find_project_root(workspace),
        paths=_resolved(validated.paths, workspace),
        mlflow=validated.mlflow,
        download=validated.download,
        split=validated.split,
        preprocess=validated.preprocess,
        train=validated.train,
        evaluate=validated.evaluate,
        params=params,
    )


def project_paths(params_path: Path | str = "params.yaml") -> Paths:
    """The artifact paths of a project from its params.yaml's `paths` section alone, for tools
    that only need to find the pipeline's outputs (a typo elsewhere must not stop them)."""
    params_path = Path(params_path).resolve()
    section = PathsConfig.from_section(read_params(params_path).get("paths"), "paths")
    return _resolved(section, params_path.parent)


def project_sections(params_path: Path | str = "params.yaml") -> tuple[Paths, PreprocessConfig]:
    """The `paths` and `preprocess` sections alone, read once: what predict needs to find the
    pipeline's model and apply the project's input limits."""
    params_path = Path(params_path).resolve()
    params = read_params(params_path)
    paths = PathsConfig.from_section(params.get("paths"), "paths")
    preprocess = PreprocessConfig.from_section(params.get("preprocess"), "preprocess")
    return _resolved(paths, params_path.parent), preprocess


def _resolved(section: PathsConfig, workspace: Path) -> Paths:
    """The paths against the workspace; one that a symbolic link takes outside it is refused."""
    paths = {name: workspace / value for name, value in section.model_dump().items()}
    root = workspace.resolve()
    for name, path in paths.items():
        target = path.resolve()
        if target != root and root not in target.parents:
            raise ConfigError(
                f"params.yaml: 'paths.{name}' ({section.model_dump()[name]!r}) leads to {target} "
                f"through a symbolic link, outside the project {root}; the pipeline writes and "
                "deletes there, so point it at a folder inside the project"
            )
    return Paths(**paths)


def resolve_workers(workers: int) -> int:
    """0 means every core this process may use."""
    if workers > 0:
        return workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
