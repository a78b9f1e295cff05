"""A trained model with everything needed to call a new image, and one image's answer."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import keras
import numpy as np

from pneumonia.config import PreprocessConfig
from pneumonia.errors import PipelineError
from pneumonia.model.scoring import DEFAULT_BATCH_SIZE, score


class PredictionError(PipelineError, ValueError):
    """The model, its threshold or its preprocess settings cannot be loaded; the message names
    the file or URI and what to do."""


@dataclass(frozen=True)
class Classifier:
    """A Keras model, the threshold it is applied at and the preprocessing it was trained on."""

    model: keras.Model
    threshold: float
    preprocess: PreprocessConfig
    source: str  # where the model came from, for messages

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise PredictionError(
                f"{self.source}: threshold must be in [0, 1], got {self.threshold}"
            )
        size = self.preprocess.image.size
        if tuple(self.model.input_shape[1:]) != (size, size, 1):
            raise PredictionError(
                f"{self.source}: the model takes {tuple(self.model.input_shape[1:])} but its "
                f"preprocess settings give ({size}, {size}, 1)"
            )

    def probabilities(self, images: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Probabilities of pneumonia for (N, S, S, 1) uint8 images, float64."""
        return score(self.model, images, batch_size)


@dataclass(frozen=True)
class Prediction:
    """One image's answer; a failed image has an error and no probability or label."""

    path: str
    probability: float | None
    label: str | None
    threshold: float
    error: str | None = None
    gradcam: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def row(self) -> dict[str, Any]:
        values = asdict(self)
        if self.gradcam is None:
            del values["gradcam"]
        return values
