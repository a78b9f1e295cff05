"""Loading params.yaml: read it (through pneumonia.params_file), apply overrides, validate it
against the schema and resolve its paths against the folder that holds it."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumonia.config.messages import ConfigError, shown
from pneumonia.config.schema import Params, PathsConfig, PreprocessConfig
from pneumonia.config.train_schema import SQLITE_PREFIX
from pneumonia.contracts.paths import Paths
from pneumonia.errors import remember_paths
from pneumonia.params_file import ParamsFileError, load_yaml, read_yaml_file
from pneumonia.protected import output_problems

# A `dvc exp run --temp` or `--queue` runs in <project>/.dvc/tmp/exps/<name>/; the MLflow store
# and relative dataset paths must still resolve against <project>.
_DVC_TEMP_WORKSPACE = (".dvc", "tmp", "exps")


@dataclass(frozen=True)
class Config:
    """params.yaml, validated, with its paths resolved against the folder that holds it.

    Every section of Params but `paths` is an attribute too (`config.train` is
    `config.sections.train`): the sections are listed once, in Params. `paths` is the resolved
    Paths (`config.sections.paths` keeps the relative text of params.yaml).
    """

    workspace: Path
    project_root: Path
    paths: Paths
    sections: Params
    params: dict[str, Any]  # the file as read (overrides applied), for logging

    def __getattr__(self, name: str) -> Any:
        # Only called for a name the instance lacks; anything but a section is a plain miss
        # (pickle and copy probe instances for optional methods before their fields are set).
        if name in Params.model_fields:
            return getattr(self.sections, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *Params.model_fields})

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
    """params.yaml as a mapping of sections, read by params_file: UTF-8, at most 1 MB, no key
    given twice, aliases expanding to a bounded number of values."""
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; run from the project root")
    try:
        params = read_yaml_file(path) or {}
    except ParamsFileError as error:
        raise ConfigError(str(error)) from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return params


def parse_override(text: str) -> tuple[str, Any]:
    """`train.tuning.n_trials=8` -> ("train.tuning.n_trials", 8); the value is read as YAML, the
    way `dvc exp run -S` reads it."""
    key, separator, value = text.partition("=")
    key = key.strip()
    if not separator or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {shown(text)}: expected KEY=VALUE with a dotted key")
    try:
        return key, load_yaml(value, f"override {shown(text)}")
    except ParamsFileError as error:
        raise ConfigError(
            str(error).replace("not valid YAML", "the value is not valid YAML")
        ) from None


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
    config = Config(
        workspace=workspace,
        project_root=find_project_root(workspace),
        paths=_resolved(validated.paths, workspace),
        sections=validated,
        params=params,
    )
    _check_outputs_are_the_pipelines(config)
    return config


def _check_outputs_are_the_pipelines(config: Config) -> None:
    """Refuse output paths that would delete or overwrite what the pipeline did not lay out: the
    project's own folders (protected.PROTECTED), files git tracks, the local dataset source and
    a SQLite study (download deletes paths.images, DVC deletes every stage's outputs)."""
    extra = []
    if not config.download.is_kaggle:
        extra.append(
            (config.source_path(), f"the dataset ('download.source' {config.download.source})")
        )
    storage = config.train.tuning.storage
    if storage.startswith(SQLITE_PREFIX) and storage[len(SQLITE_PREFIX) :] != ":memory:":
        study_file = storage[len(SQLITE_PREFIX) :].split("?", 1)[0]
        extra.append(
            (config.project_root / study_file, "the Optuna study ('train.tuning.storage')")
        )
    problems = output_problems(config.paths, config.workspace, extra)
    if problems:
        raise ConfigError(
            f"params.yaml: {'; '.join(problems)}. The pipeline deletes or overwrites these paths: "
            "give each a place of its own (the defaults are data/raw/images, data/split, "
            "data/processed, reports and models)"
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
    remember_paths(paths)  # so a full disk or read-only folder names its key
    return Paths(**paths)
