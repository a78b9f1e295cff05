"""The set-up the train stage and `pneumonia tune-worker` share: the device line, a backbone's
weights, the train and val arrays (prepare_training, before the MLflow run opens) and the runtime
configuration with the input hashes (start_training_run, once it is open)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import mlflow

from pneumonia.config import Config
from pneumonia.console import device_summary
from pneumonia.model.backbones import WeightsFile, resolve_weights, weights_params
from pneumonia.model.training import SplitArrays, configure_runtime, load_training_splits
from pneumonia.model.tuning import loggable_train_params
from pneumonia.tracking import StageRun

TRAINING_SPLITS = ("train", "val")


@dataclass(frozen=True)
class TrainingSetup:
    weights: WeightsFile | None  # a backbone's weights file; None for the CNN or no weights
    train: SplitArrays
    val: SplitArrays

    def run_params(self, config: Config, **extra: Any) -> dict[str, Any]:
        """The run's params: the train section, the image size the arrays hold, `extra`, and
        the weights file."""
        return {
            "train": loggable_train_params(config.params["train"]),
            "preprocess.image.size": self.train.images.shape[1],
            **extra,
            **weights_params(self.weights),
        }


def prepare_training(config: Config, stage: str) -> TrainingSetup:
    """Name the device, resolve the weights and load train and val, in that order."""
    settings = config.train
    # The first line: the device it trains on (a broken GPU driver shows here as the CPU).
    print(f"{stage}: {device_summary(settings.mixed_precision)}", file=sys.stderr, flush=True)
    # A backbone's weights before the data: without network or cache it fails here in one line,
    # not in a failed trial after the arrays are read.
    weights = resolve_weights(settings.model, config.project_root)
    train, val = load_training_splits(config)
    return TrainingSetup(weights, train, val)


def start_training_run(run: StageRun, config: Config) -> None:
    """Seed and configure the runtime, tag the run with the device facts, hash the inputs."""
    settings = config.train
    mlflow.set_tags(configure_runtime(settings.seed, settings.mixed_precision))
    run.log_hashes("input", [config.paths.processed_split(name) for name in TRAINING_SPLITS])
