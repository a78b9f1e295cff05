"""A trained model with everything needed to call a new image, and one image's answer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import numpy as np

from pneumonia.config import PreprocessConfig
from pneumonia.contracts.site_reference import SiteReference
from pneumonia.errors import PipelineError
from pneumonia.model.scoring import DEFAULT_BATCH_SIZE, score
from pneumonia.site.check import OUT_OF_DISTRIBUTION, OutOfDistribution
from pneumonia.site.features import FeatureError, features_and_score_model, features_and_scores

# The operating point a row names when `--threshold` replaced the model's own.
THRESHOLD_OVERRIDE = "--threshold override"
# The operating point of a model whose threshold was chosen on val by an unnamed rule.
VAL_POINT = "val"
# Between the reasons of a row's `flag`.
FLAG_SEPARATOR = "; "


class PredictionError(PipelineError, ValueError):
    """The model, its threshold or its preprocess settings cannot be loaded; the message names
    the file or URI and what to do."""


@dataclass(frozen=True)
class Classifier:
    """A Keras model, the threshold it is applied at (and the name of that operating point), the
    preprocessing it was trained on, and the site reference its out-of-distribution scores are
    measured against (None for a model evaluated before references were written)."""

    model: keras.Model
    threshold: float
    preprocess: PreprocessConfig
    source: str  # where the model came from, for messages
    operating_point: str = VAL_POINT  # OperatingPoint.name, or THRESHOLD_OVERRIDE
    reference: SiteReference | None = None
    # The model with its pooled features as a second output (site.features), built once for the
    # model: one call per batch gives both. Leave it unset; dataclasses.replace carries it over.
    scoring_model: keras.Model | None = field(default=None, repr=False, compare=False)

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
        built_for_model = (
            self.scoring_model is not None and self.scoring_model.inputs[0] is self.model.inputs[0]
        )
        if not built_for_model:
            object.__setattr__(self, "scoring_model", self._features_model())
        detector = None
        if self.reference is not None:
            width = self.feature_width
            if width != self.reference.width:
                raise PredictionError(
                    f"{self.source}: the model's pooled features have {width} values but its "
                    f"site reference has {self.reference.width}; re-run the evaluate stage "
                    "(dvc repro), which writes the reference for the model it evaluates"
                )
            detector = OutOfDistribution(self.reference)
        # Fitted once (the reference's standardization), not per batch.
        object.__setattr__(self, "_out_of_distribution", detector)

    def _features_model(self) -> keras.Model | None:
        try:
            return features_and_score_model(self.model)
        except FeatureError as error:
            if self.reference is None:
                return None  # a model of another design: scores only, no features to compare
            raise PredictionError(f"{self.source}: {error}") from error

    @property
    def at_site_point(self) -> bool:
        """Whether the threshold is a site's own (OperatingPoint.name `site NAME vN`): `--site`,
        or a version served for one site."""
        return self.operating_point.startswith("site ")

    @property
    def feature_width(self) -> int | None:
        if self.scoring_model is None:
            return None
        return int(self.scoring_model.outputs[0].shape[-1])

    def scores(self, images: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """The network's output for (N, S, S, 1) uint8 images, float64: a score that ranks
        images, comparable only between images scored by this model version."""
        return self.features_and_scores(images, batch_size)[1]

    def features_and_scores(
        self, images: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """(pooled features float32 (N, d), or None for a model without them; scores float64),
        from one model call per batch."""
        if self.scoring_model is None:
            return None, score(self.model, images, batch_size)
        return features_and_scores(self.model, images, batch_size, combined=self.scoring_model)

    def out_of_distribution(self, features: np.ndarray | None) -> np.ndarray | None:
        """Each image's out-of-distribution score against the reference (site.check: over 1 is
        farther from the val images than almost all of them are from each other); None without
        a reference."""
        detector: OutOfDistribution | None = self._out_of_distribution  # type: ignore[attr-defined]
        if detector is None or features is None:
            return None
        return detector.scores(features)


@dataclass(frozen=True)
class Prediction:
    """One image's answer; a failed image has an error and no score, label or out-of-distribution
    score. `score` is the network's output (not a calibrated probability), `label` the call at
    the operating point `operating_point` names, `flag` says "out-of-distribution" for an image
    far from the model's val images, and adds a DICOM file's warnings (a lateral view, no
    modality recorded), joined by FLAG_SEPARATOR."""

    path: str
    score: float | None
    label: str | None
    threshold: float
    operating_point: str
    ood_score: float | None = None
    flag: str | None = None
    # A DICOM file's Modality and ViewPosition (imaging.dicom.DicomInfo): the only header values
    # a row carries, never the patient's. None for JPEG and PNG.
    modality: str | None = None
    view: str | None = None
    error: str | None = None
    gradcam: str | None = None

    @classmethod
    def failure(cls, path: str, error: str, classifier: Classifier) -> Prediction:
        return cls(path, None, None, classifier.threshold, classifier.operating_point, error=error)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def out_of_distribution(self) -> bool:
        return self.flag is not None and OUT_OF_DISTRIBUTION in self.flag.split(FLAG_SEPARATOR)

    def row(self) -> dict[str, Any]:
        values = asdict(self)
        if self.gradcam is None:
            del values["gradcam"]
        return values
