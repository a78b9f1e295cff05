"""params.yaml as a validated, typed object: params.yaml -> pydantic models -> functions.

Every stage calls :func:`load_config` once and passes the pieces it needs down. The schema
(schema, train_schema, on the field types of fields and the names of architectures) is the one
description of every param: its type, its choices, its bounds. Unknown keys and sections are
refused with a did-you-mean, and checks that span fields (depth against image size, grace period
against heartbeat) run at load, so a bad param fails before any work with a message naming its
key (messages). Python names equal the YAML names: `train.model.depth` in params.yaml is
`config.train.model.depth`.

The modules, one concern each:
- architectures: the architecture names, read by the schema and model.backbones;
- fields: the strict Section base and the field types several sections share;
- schema, train_schema: the section models and Params, the whole file;
- messages: ConfigError, and how a validation error is told (naming the key, did-you-mean);
- loading: reading params.yaml, overrides, load_config and the partial readers;
- workers: how many processes a `workers` param gives on this machine.

The names below are the ones the rest of the project imports from `pneumonia.config`.
"""

from pneumonia.config.architectures import BACKBONE_MIN_IMAGE_SIZE, IMAGENET, NO_WEIGHTS
from pneumonia.config.fields import MAX_SEED
from pneumonia.config.loading import (
    Config,
    find_project_root,
    load_config,
    parse_override,
    project_paths,
    project_sections,
)
from pneumonia.config.messages import ConfigError
from pneumonia.config.schema import (
    DEFAULT_LIMITS,
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_PIXELS,
    SPLITS,
    DownloadConfig,
    EvaluateConfig,
    ImageInput,
    InputLimits,
    PreprocessConfig,
    SplitConfig,
    ThresholdRule,
)
from pneumonia.config.train_schema import (
    AugmentationConfig,
    Hyperparameters,
    ModelConfig,
    OptimizerConfig,
    SearchSpace,
    TrainConfig,
    TuningConfig,
)
from pneumonia.config.workers import resolve_workers, usable_cores

__all__ = [
    "BACKBONE_MIN_IMAGE_SIZE",
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_PIXELS",
    "IMAGENET",
    "MAX_SEED",
    "NO_WEIGHTS",
    "SPLITS",
    "AugmentationConfig",
    "Config",
    "ConfigError",
    "DownloadConfig",
    "EvaluateConfig",
    "Hyperparameters",
    "ImageInput",
    "InputLimits",
    "ModelConfig",
    "OptimizerConfig",
    "PreprocessConfig",
    "SearchSpace",
    "SplitConfig",
    "ThresholdRule",
    "TrainConfig",
    "TuningConfig",
    "find_project_root",
    "load_config",
    "parse_override",
    "project_paths",
    "project_sections",
    "resolve_workers",
    "usable_cores",
]
