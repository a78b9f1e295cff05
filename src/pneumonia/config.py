"""Typed configuration: params.yaml -> frozen dataclasses -> functions.

Every stage calls :func:`load_config` once and passes the pieces it needs down. Values are
validated here, so a bad param fails before any work with a message naming its key.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from pneumonia.errors import PipelineError

RESIZE_MODES = ("letterbox", "stretch", "crop")
KAGGLE_SOURCE = "kaggle"
SPLITS = ("train", "val", "test")
CLASSES = ("NORMAL", "PNEUMONIA")
# File names in `paths.models`: the model, train's model card, evaluate's operating threshold.
MODEL_FILE = "model.keras"
MODEL_CARD_FILE = "model.json"
THRESHOLD_FILE = "threshold.json"

# A `dvc exp run --temp` or `--queue` runs in <project>/.dvc/tmp/exps/<name>/; the MLflow store
# and relative dataset paths must still resolve against <project>.
_DVC_TEMP_WORKSPACE = (".dvc", "tmp", "exps")


class ConfigError(PipelineError, ValueError):
    """A param in params.yaml is missing or out of range; the message names its key."""


@dataclass(frozen=True)
class Paths:
    images: Path
    manifest: Path
    data_quality: Path
    split: Path
    processed: Path
    reports: Path
    models: Path

    def split_csv(self, split: str) -> Path:
        return self.split / f"{split}.csv"

    def processed_split(self, split: str) -> Path:
        return self.processed / split

    @property
    def processed_meta(self) -> Path:
        return self.processed / "meta.json"

    def stage_summary(self, stage: str) -> Path:
        return self.reports / f"{stage}.json"

    @property
    def samples(self) -> Path:
        return self.reports / "samples"

    @property
    def model(self) -> Path:
        return self.models / MODEL_FILE

    @property
    def model_card(self) -> Path:
        return self.models / MODEL_CARD_FILE

    @property
    def train_reports(self) -> Path:
        return self.reports / "train"

    @property
    def threshold(self) -> Path:
        return self.models / THRESHOLD_FILE

    @property
    def metrics(self) -> Path:
        return self.reports / "metrics.json"

    @property
    def evaluate_reports(self) -> Path:
        return self.reports / "evaluate"


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str


@dataclass(frozen=True)
class DownloadConfig:
    source: str
    kaggle_dataset: str
    kaggle_version: int
    workers: int

    @property
    def is_kaggle(self) -> bool:
        return self.source == KAGGLE_SOURCE

    @property
    def kaggle_handle(self) -> str:
        return f"{self.kaggle_dataset}/versions/{self.kaggle_version}"


@dataclass(frozen=True)
class SplitConfig:
    val_fraction: float
    seed: int


@dataclass(frozen=True)
class PreprocessConfig:
    image_size: int
    resize: str
    clahe: bool
    clahe_clip_limit: float
    clahe_tile_grid: int
    workers: int
    sample_grid: int


OPTIMIZERS = ("adam", "rmsprop")
CONVOLUTIONS = ("plain", "separable")
PRUNERS = ("median", "hyperband", "none")
CLASS_WEIGHTS = ("balanced", "none")
LEARNING_RATE_SCHEDULES = ("constant", "cosine")
MIXED_PRECISION = ("auto", "off")


@dataclass(frozen=True)
class ArchitectureConfig:
    depth: int  # convolution blocks, each halving the resolution
    base_filters: int  # filters of the first block; doubled per block, capped at 8x
    convolution: str  # plain | separable
    dropout: float  # before the classifier


@dataclass(frozen=True)
class OptimizerConfig:
    name: str  # adam | rmsprop
    learning_rate: float
    weight_decay: float
    rho: float  # rmsprop only
    momentum: float  # rmsprop only


@dataclass(frozen=True)
class Hyperparameters:
    """What one training run (a trial, or the final fit) is configured with."""

    architecture: ArchitectureConfig
    optimizer: OptimizerConfig
    batch_size: int

    def flat(self) -> dict[str, Any]:
        values = {
            **{f"model.{k}": v for k, v in asdict(self.architecture).items()},
            **{f"optimizer.{k}": v for k, v in asdict(self.optimizer).items()},
            "batch_size": self.batch_size,
        }
        if self.optimizer.name != "rmsprop":
            del values["optimizer.rho"], values["optimizer.momentum"]
        return values


@dataclass(frozen=True)
class AugmentationConfig:
    rotation: float
    shift: float
    zoom: float
    contrast: float
    brightness: float = 0.0  # fraction of the value range added or subtracted (exposure)
    blur: float = 0.0  # largest Gaussian blur sigma, in pixels (sharpness of the detector)
    aspect: float = 0.0  # width-only zoom: the copy stretched every original to a square


@dataclass(frozen=True)
class SearchSpace:
    optimizer: tuple[str, ...]
    learning_rate: tuple[float, float]
    batch_size: tuple[int, ...]
    dropout: tuple[float, float]
    weight_decay: tuple[float, float]
    rho: tuple[float, float]
    momentum: tuple[float, float]
    base_filters: tuple[int, ...]


@dataclass(frozen=True)
class TuningConfig:
    n_trials: int
    timeout: int  # seconds, 0 = none
    epochs: int
    pruner: str
    storage: str
    study_name: str
    heartbeat_interval: int  # seconds between a running trial's heartbeats in the storage
    grace_period: int  # seconds without a heartbeat before a RUNNING trial is failed as stale
    search_space: SearchSpace


MAX_ENSEMBLE = 10


@dataclass(frozen=True)
class TrainConfig:
    seed: int
    epochs: int
    ensemble: int  # members fitted with seeds seed, seed + 1, ...; their probabilities averaged
    early_stopping_patience: int
    class_weight: str
    label_smoothing: float  # targets become 1 - s/2 and s/2: penalises over-confident calls
    mixed_precision: str
    registered_model_name: str
    fixed: Hyperparameters
    augmentation: AugmentationConfig
    tuning: TuningConfig
    # cosine: the learning rate decays to 0 over each fit's epochs (trials and final fit alike)
    learning_rate_schedule: str = "constant"


THRESHOLD_RULES = ("youden", "sensitivity:<x>", "a number in (0, 1)")


@dataclass(frozen=True)
class ThresholdRule:
    """How evaluate picks the operating threshold on val: youden, sensitivity or fixed."""

    kind: str
    value: float | None = None

    def __str__(self) -> str:
        if self.kind == "youden":
            return "youden"
        return f"sensitivity:{self.value}" if self.kind == "sensitivity" else str(self.value)


@dataclass(frozen=True)
class EvaluateConfig:
    threshold: ThresholdRule
    bootstrap: int  # patient-level resamples for the confidence intervals
    confidence: float
    seed: int
    calibration_bins: int
    gradcam_examples: int  # per outcome (true/false positive/negative)
    alias: str  # registry alias set on the evaluated model versions
    serving_model_name: str  # registered name of the served (image bytes in) pyfunc model


@dataclass(frozen=True)
class Config:
    workspace: Path
    project_root: Path
    paths: Paths
    tracking: TrackingConfig
    download: DownloadConfig
    split: SplitConfig
    preprocess: PreprocessConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    params: dict[str, Any]

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


def _section(params: dict[str, Any], name: str) -> dict[str, Any]:
    section = params.get(name)
    if not isinstance(section, dict):
        raise ConfigError(f"params.yaml: section '{name}' is missing or not a mapping")
    return section


def _take(section: dict[str, Any], prefix: str, key: str, kind: type) -> Any:
    full_key = f"{prefix}.{key}"
    if key not in section:
        raise ConfigError(f"params.yaml: '{full_key}' is missing")
    value = section[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise ConfigError(
            f"params.yaml: '{full_key}' must be {kind.__name__}, got {value!r} "
            f"({type(value).__name__})"
        )
    return value


def _reject_unknown(section: dict[str, Any], prefix: str, known: set[str]) -> None:
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(
            f"params.yaml: unknown key(s) {', '.join(f'{prefix}.{k}' for k in unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )


def _workers(section: dict[str, Any], prefix: str) -> int:
    workers = _take(section, prefix, "workers", int)
    if workers < 0:
        raise ConfigError(f"params.yaml: '{prefix}.workers' must be >= 0 (0 = all cores)")
    return workers


def parse_paths(params: dict[str, Any], workspace: Path) -> Paths:
    section = _section(params, "paths")
    names = ("images", "manifest", "data_quality", "split", "processed", "reports", "models")
    _reject_unknown(section, "paths", set(names))
    return Paths(**{name: workspace / _take(section, "paths", name, str) for name in names})


def parse_tracking(params: dict[str, Any]) -> TrackingConfig:
    section = _section(params, "mlflow")
    _reject_unknown(section, "mlflow", {"experiment"})
    experiment = _take(section, "mlflow", "experiment", str).strip()
    if not experiment:
        raise ConfigError("params.yaml: 'mlflow.experiment' must not be empty")
    return TrackingConfig(experiment=experiment)


def parse_download(params: dict[str, Any]) -> DownloadConfig:
    section = _section(params, "download")
    _reject_unknown(section, "download", {"source", "kaggle_dataset", "kaggle_version", "workers"})
    source = _take(section, "download", "source", str).strip()
    if not source:
        raise ConfigError(
            "params.yaml: 'download.source' is empty; use 'kaggle' or a path to a local folder "
            "or .zip in the Kaggle layout"
        )
    dataset = _take(section, "download", "kaggle_dataset", str)
    if dataset.count("/") != 1:
        raise ConfigError(
            f"params.yaml: 'download.kaggle_dataset' must be 'owner/name', got {dataset!r}"
        )
    version = _take(section, "download", "kaggle_version", int)
    if version < 1:
        raise ConfigError("params.yaml: 'download.kaggle_version' must be >= 1")
    return DownloadConfig(source, dataset, version, _workers(section, "download"))


def parse_split(params: dict[str, Any]) -> SplitConfig:
    section = _section(params, "split")
    _reject_unknown(section, "split", {"val_fraction", "seed"})
    fraction = _take(section, "split", "val_fraction", float)
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"params.yaml: 'split.val_fraction' must be in (0, 1), got {fraction}")
    return SplitConfig(val_fraction=fraction, seed=_take(section, "split", "seed", int))


def parse_preprocess(params: dict[str, Any]) -> PreprocessConfig:
    section = _section(params, "preprocess")
    known = {
        "image_size",
        "resize",
        "clahe",
        "clahe_clip_limit",
        "clahe_tile_grid",
        "workers",
        "sample_grid",
    }
    _reject_unknown(section, "preprocess", known)
    size = _take(section, "preprocess", "image_size", int)
    if not 16 <= size <= 2048:
        raise ConfigError(f"params.yaml: 'preprocess.image_size' must be in [16, 2048], got {size}")
    resize = _take(section, "preprocess", "resize", str)
    if resize not in RESIZE_MODES:
        raise ConfigError(
            f"params.yaml: 'preprocess.resize' must be one of {', '.join(RESIZE_MODES)}, "
            f"got {resize!r}"
        )
    clip_limit = _take(section, "preprocess", "clahe_clip_limit", float)
    if clip_limit <= 0:
        raise ConfigError("params.yaml: 'preprocess.clahe_clip_limit' must be > 0")
    tile_grid = _take(section, "preprocess", "clahe_tile_grid", int)
    if not 1 <= tile_grid <= size:
        raise ConfigError(
            f"params.yaml: 'preprocess.clahe_tile_grid' must be in [1, image_size], got {tile_grid}"
        )
    sample_grid = _take(section, "preprocess", "sample_grid", int)
    if sample_grid < 0:
        raise ConfigError("params.yaml: 'preprocess.sample_grid' must be >= 0")
    return PreprocessConfig(
        image_size=size,
        resize=resize,
        clahe=_take(section, "preprocess", "clahe", bool),
        clahe_clip_limit=clip_limit,
        clahe_tile_grid=tile_grid,
        workers=_workers(section, "preprocess"),
        sample_grid=sample_grid,
    )


def _number(section: dict[str, Any], prefix: str, key: str, low: float, high: float) -> float:
    value = _take(section, prefix, key, float)
    if not low <= value <= high:
        raise ConfigError(f"params.yaml: '{prefix}.{key}' must be in [{low}, {high}], got {value}")
    return value


def _choice(section: dict[str, Any], prefix: str, key: str, choices: tuple[str, ...]) -> str:
    value = _take(section, prefix, key, str)
    if value not in choices:
        raise ConfigError(
            f"params.yaml: '{prefix}.{key}' must be one of {', '.join(choices)}, got {value!r}"
        )
    return value


def _range(section: dict[str, Any], prefix: str, key: str, low: float, high: float):
    value = section.get(key)
    full_key = f"{prefix}.{key}"
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(f"params.yaml: '{full_key}' must be a [low, high] pair, got {value!r}")
    first, second = float(value[0]), float(value[1])
    if not low <= first <= second <= high:
        raise ConfigError(
            f"params.yaml: '{full_key}' must satisfy {low} <= low <= high <= {high}, got {value}"
        )
    return first, second


def _options(section: dict[str, Any], prefix: str, key: str, kind: type, allowed=None) -> tuple:
    value = section.get(key)
    full_key = f"{prefix}.{key}"
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(
            f"params.yaml: '{full_key}' must be a non-empty list of {kind.__name__}, got {value!r}"
        )
    for item in value:
        if allowed is not None and item not in allowed:
            raise ConfigError(
                f"params.yaml: '{full_key}' has {item!r}; allowed: {', '.join(map(str, allowed))}"
            )
        if kind is int and item < 1:
            raise ConfigError(f"params.yaml: '{full_key}' values must be >= 1, got {item}")
    return tuple(value)


def _subsection(section: dict[str, Any], prefix: str, key: str, known: set[str]):
    sub = section.get(key)
    if not isinstance(sub, dict):
        raise ConfigError(f"params.yaml: '{prefix}.{key}' is missing or not a mapping")
    _reject_unknown(sub, f"{prefix}.{key}", known)
    return sub, f"{prefix}.{key}"


def parse_architecture(section: dict[str, Any], prefix: str) -> ArchitectureConfig:
    depth = _take(section, prefix, "depth", int)
    if not 1 <= depth <= 7:
        raise ConfigError(f"params.yaml: '{prefix}.depth' must be in [1, 7], got {depth}")
    filters = _take(section, prefix, "base_filters", int)
    if not 1 <= filters <= 512:
        raise ConfigError(
            f"params.yaml: '{prefix}.base_filters' must be in [1, 512], got {filters}"
        )
    return ArchitectureConfig(
        depth=depth,
        base_filters=filters,
        convolution=_choice(section, prefix, "convolution", CONVOLUTIONS),
        dropout=_number(section, prefix, "dropout", 0.0, 0.95),
    )


def parse_optimizer(section: dict[str, Any], prefix: str) -> OptimizerConfig:
    learning_rate = _take(section, prefix, "learning_rate", float)
    if not 0 < learning_rate <= 1:
        raise ConfigError(
            f"params.yaml: '{prefix}.learning_rate' must be in (0, 1], got {learning_rate}"
        )
    return OptimizerConfig(
        name=_choice(section, prefix, "name", OPTIMIZERS),
        learning_rate=learning_rate,
        weight_decay=_number(section, prefix, "weight_decay", 0.0, 1.0),
        rho=_number(section, prefix, "rho", 0.0, 0.9999),
        momentum=_number(section, prefix, "momentum", 0.0, 0.9999),
    )


def _positive(section: dict[str, Any], prefix: str, key: str, minimum: int = 1) -> int:
    value = _take(section, prefix, key, int)
    if value < minimum:
        raise ConfigError(f"params.yaml: '{prefix}.{key}' must be >= {minimum}, got {value}")
    return value


def _ensemble_size(section: dict[str, Any]) -> int:
    size = _positive(section, "train", "ensemble")
    if size > MAX_ENSEMBLE:
        raise ConfigError(
            f"params.yaml: 'train.ensemble' must be <= {MAX_ENSEMBLE} (each member is a full "
            f"fit), got {size}"
        )
    return size


def parse_train(params: dict[str, Any]) -> TrainConfig:
    section = _section(params, "train")
    known = {
        "seed",
        "epochs",
        "ensemble",
        "early_stopping_patience",
        "class_weight",
        "label_smoothing",
        "learning_rate_schedule",
        "mixed_precision",
        "registered_model_name",
        "model",
        "optimizer",
        "batch_size",
        "augmentation",
        "tuning",
    }
    _reject_unknown(section, "train", known)
    model, model_prefix = _subsection(
        section, "train", "model", {"depth", "base_filters", "convolution", "dropout"}
    )
    optimizer, optimizer_prefix = _subsection(
        section, "train", "optimizer", {"name", "learning_rate", "weight_decay", "rho", "momentum"}
    )
    augmentation, augmentation_prefix = _subsection(
        section,
        "train",
        "augmentation",
        {"rotation", "shift", "zoom", "contrast", "brightness", "blur", "aspect"},
    )
    tuning, tuning_prefix = _subsection(
        section,
        "train",
        "tuning",
        {
            "n_trials",
            "timeout",
            "epochs",
            "pruner",
            "storage",
            "study_name",
            "heartbeat_interval",
            "grace_period",
            "search_space",
        },
    )
    space, space_prefix = _subsection(
        tuning,
        tuning_prefix,
        "search_space",
        {
            "optimizer",
            "learning_rate",
            "batch_size",
            "dropout",
            "weight_decay",
            "rho",
            "momentum",
            "base_filters",
        },
    )
    registered = _take(section, "train", "registered_model_name", str).strip()
    if not registered:
        raise ConfigError("params.yaml: 'train.registered_model_name' must not be empty")
    storage = _take(tuning, tuning_prefix, "storage", str).strip()
    if "://" not in storage:
        raise ConfigError(
            f"params.yaml: '{tuning_prefix}.storage' must be an Optuna RDB URL such as "
            f"sqlite:///studies/optuna.db or postgresql://user@host/db, got {storage!r}"
        )
    heartbeat_interval = _positive(tuning, tuning_prefix, "heartbeat_interval")
    grace_period = _positive(tuning, tuning_prefix, "grace_period")
    # Every worker judges the others' trials by its own grace period: a grace shorter than two
    # heartbeats would fail live trials whose heartbeat is merely a little late.
    if grace_period < 2 * heartbeat_interval:
        raise ConfigError(
            f"params.yaml: '{tuning_prefix}.grace_period' ({grace_period}) must be at least twice "
            f"'{tuning_prefix}.heartbeat_interval' ({heartbeat_interval})"
        )
    return TrainConfig(
        seed=_take(section, "train", "seed", int),
        epochs=_positive(section, "train", "epochs"),
        ensemble=_ensemble_size(section),
        early_stopping_patience=_positive(section, "train", "early_stopping_patience"),
        class_weight=_choice(section, "train", "class_weight", CLASS_WEIGHTS),
        label_smoothing=_number(section, "train", "label_smoothing", 0.0, 0.5),
        learning_rate_schedule=_choice(
            section, "train", "learning_rate_schedule", LEARNING_RATE_SCHEDULES
        ),
        mixed_precision=_choice(section, "train", "mixed_precision", MIXED_PRECISION),
        registered_model_name=registered,
        fixed=Hyperparameters(
            architecture=parse_architecture(model, model_prefix),
            optimizer=parse_optimizer(optimizer, optimizer_prefix),
            batch_size=_positive(section, "train", "batch_size"),
        ),
        augmentation=AugmentationConfig(
            rotation=_number(augmentation, augmentation_prefix, "rotation", 0.0, 0.5),
            shift=_number(augmentation, augmentation_prefix, "shift", 0.0, 0.5),
            zoom=_number(augmentation, augmentation_prefix, "zoom", 0.0, 0.9),
            contrast=_number(augmentation, augmentation_prefix, "contrast", 0.0, 0.9),
            brightness=_number(augmentation, augmentation_prefix, "brightness", 0.0, 0.5),
            blur=_number(augmentation, augmentation_prefix, "blur", 0.0, 5.0),
            aspect=_number(augmentation, augmentation_prefix, "aspect", 0.0, 0.5),
        ),
        tuning=TuningConfig(
            n_trials=_positive(tuning, tuning_prefix, "n_trials", minimum=0),
            timeout=_positive(tuning, tuning_prefix, "timeout", minimum=0),
            epochs=_positive(tuning, tuning_prefix, "epochs"),
            pruner=_choice(tuning, tuning_prefix, "pruner", PRUNERS),
            storage=storage,
            study_name=_take(tuning, tuning_prefix, "study_name", str).strip(),
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            search_space=SearchSpace(
                optimizer=_options(space, space_prefix, "optimizer", str, OPTIMIZERS),
                learning_rate=_range(space, space_prefix, "learning_rate", 1e-7, 1.0),
                batch_size=_options(space, space_prefix, "batch_size", int),
                dropout=_range(space, space_prefix, "dropout", 0.0, 0.95),
                weight_decay=_range(space, space_prefix, "weight_decay", 1e-12, 1.0),
                rho=_range(space, space_prefix, "rho", 0.0, 0.9999),
                momentum=_range(space, space_prefix, "momentum", 0.0, 0.9999),
                base_filters=_options(space, space_prefix, "base_filters", int),
            ),
        ),
    )


def parse_threshold_rule(value: Any, key: str = "evaluate.threshold") -> ThresholdRule:
    """`youden`, `sensitivity:<x>` with x in (0, 1], or a fixed number in (0, 1)."""
    problem = (
        f"params.yaml: '{key}' must be youden, sensitivity:<x> with 0 < x <= 1 (e.g. "
        f"sensitivity:0.95), or a fixed threshold in (0, 1); got {value!r}"
    )
    if isinstance(value, bool):
        raise ConfigError(problem)
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "youden":
            return ThresholdRule("youden")
        if text.startswith("sensitivity:"):
            try:
                target = float(text.split(":", 1)[1])
            except ValueError:
                raise ConfigError(problem) from None
            if not 0.0 < target <= 1.0:
                raise ConfigError(problem)
            return ThresholdRule("sensitivity", target)
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(problem) from None
    if not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ConfigError(problem)
    return ThresholdRule("fixed", float(value))


def parse_evaluate(params: dict[str, Any]) -> EvaluateConfig:
    section = _section(params, "evaluate")
    known = {
        "threshold",
        "bootstrap",
        "confidence",
        "seed",
        "calibration_bins",
        "gradcam_examples",
        "alias",
        "serving_model_name",
    }
    _reject_unknown(section, "evaluate", known)
    if "threshold" not in section:
        raise ConfigError("params.yaml: missing 'evaluate.threshold'")
    alias = _take(section, "evaluate", "alias", str).strip()
    # MLflow refuses aliases that read as a version (v3) or as `latest`.
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", alias) or re.fullmatch(
        r"(?i)v\d+|latest", alias
    ):
        raise ConfigError(
            f"params.yaml: 'evaluate.alias' must be a name such as candidate, got {alias!r}"
        )
    serving_name = _take(section, "evaluate", "serving_model_name", str).strip()
    # The name goes into models:/<name>/<version> and models:/<name>@<alias> URIs.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", serving_name):
        raise ConfigError(
            "params.yaml: 'evaluate.serving_model_name' must be a registered model name of "
            f"letters, digits, '.', '_' and '-' such as pneumonia-classifier, got {serving_name!r}"
        )
    return EvaluateConfig(
        threshold=parse_threshold_rule(section["threshold"]),
        bootstrap=_positive(section, "evaluate", "bootstrap", minimum=100),
        confidence=_number(section, "evaluate", "confidence", 0.5, 0.999),
        seed=_take(section, "evaluate", "seed", int),
        calibration_bins=_positive(section, "evaluate", "calibration_bins", minimum=2),
        gradcam_examples=_positive(section, "evaluate", "gradcam_examples", minimum=0),
        alias=alias,
        serving_model_name=serving_name,
    )


def read_params(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; run from the project root")
    with path.open() as handle:
        params = yaml.safe_load(handle) or {}
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
    workspace = params_path.parent
    train, evaluate = parse_train(params), parse_evaluate(params)
    # One registered name per flavor: promotion compares versions of one kind of model.
    if evaluate.serving_model_name == train.registered_model_name:
        raise ConfigError(
            "params.yaml: 'evaluate.serving_model_name' must differ from "
            f"'train.registered_model_name' (both {train.registered_model_name!r})"
        )
    return Config(
        workspace=workspace,
        project_root=find_project_root(workspace),
        paths=parse_paths(params, workspace),
        tracking=parse_tracking(params),
        download=parse_download(params),
        split=parse_split(params),
        preprocess=parse_preprocess(params),
        train=train,
        evaluate=evaluate,
        params=params,
    )


def resolve_workers(workers: int) -> int:
    """0 means every core this process may use."""
    if workers > 0:
        return workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
