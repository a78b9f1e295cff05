"""Typed configuration: params.yaml -> frozen dataclasses -> functions.

Every stage calls :func:`load_config` once and passes the pieces it needs down. Values are
validated here, so a bad param fails before any work with a message naming its key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pneumonia.errors import PipelineError

RESIZE_MODES = ("letterbox", "stretch", "crop")
KAGGLE_SOURCE = "kaggle"
SPLITS = ("train", "val", "test")
CLASSES = ("NORMAL", "PNEUMONIA")

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


@dataclass(frozen=True)
class Config:
    workspace: Path
    project_root: Path
    paths: Paths
    tracking: TrackingConfig
    download: DownloadConfig
    split: SplitConfig
    preprocess: PreprocessConfig
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
    names = ("images", "manifest", "data_quality", "split", "processed", "reports")
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


def read_params(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; run from the project root")
    with path.open() as handle:
        params = yaml.safe_load(handle) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return params


def load_config(params_path: Path | str = "params.yaml") -> Config:
    """Read and validate params.yaml; paths resolve against the folder that holds it."""
    params_path = Path(params_path).resolve()
    params = read_params(params_path)
    workspace = params_path.parent
    return Config(
        workspace=workspace,
        project_root=find_project_root(workspace),
        paths=parse_paths(params, workspace),
        tracking=parse_tracking(params),
        download=parse_download(params),
        split=parse_split(params),
        preprocess=parse_preprocess(params),
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
