"""Applying a trained model to new chest X-rays: load it with its operating threshold and
preprocess settings, decode and preprocess images with the training code, score them in batches,
and optionally explain each call with a Grad-CAM overlay.

Used by `pneumonia predict` (files and folders) and by the served MLflow model (image bytes).
A model comes from `models/` (the pipeline's outputs), a `.keras` file with its `model.json` and
`threshold.json` beside it, or any MLflow model URI of the served pyfunc or the Keras flavor.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
from PIL import Image

from pneumonia.config import (
    CLASSES,
    MODEL_CARD_FILE,
    MODEL_FILE,
    THRESHOLD_FILE,
    PreprocessConfig,
)
from pneumonia.errors import PipelineError
from pneumonia.gradcam import gradcam_heatmaps, overlay
from pneumonia.images import ImageDecodeError
from pneumonia.preprocess import (
    POSITIVE_CLASS,
    config_from_settings,
    preprocess_bytes,
    preprocess_file,
)

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
DEFAULT_MODEL = Path("models") / MODEL_FILE
DEFAULT_BATCH_SIZE = 32
OUTPUT_COLUMNS = ("path", "probability", "label", "threshold", "error")
NEGATIVE_CLASS = CLASSES[0]
# MLflow URIs name a scheme (models:/, runs:/, file://, s3://, ...); a bare path does not.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")
_REGISTERED = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/]+))/?$")


class PredictionError(PipelineError, ValueError):
    """The model, its threshold or its preprocess settings cannot be loaded; the message names
    the file or URI and what to do."""


def label_for(probability: float, threshold: float) -> str:
    """An image is called pneumonia when its probability is >= the threshold (as in evaluate)."""
    return POSITIVE_CLASS if probability >= threshold else NEGATIVE_CLASS


@dataclass(frozen=True)
class Classifier:
    """A Keras model with everything needed to apply it to a new image."""

    model: keras.Model
    threshold: float
    preprocess: PreprocessConfig
    source: str  # where the model came from, for messages

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise PredictionError(
                f"{self.source}: threshold must be in [0, 1], got {self.threshold}"
            )
        size = self.preprocess.image_size
        if tuple(self.model.input_shape[1:]) != (size, size, 1):
            raise PredictionError(
                f"{self.source}: the model takes {tuple(self.model.input_shape[1:])} but its "
                f"preprocess settings give ({size}, {size}, 1)"
            )

    def probabilities(self, images: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Probabilities of pneumonia for (N, S, S, 1) uint8 images, float64."""
        if len(images) == 0:
            return np.zeros(0)
        # predict_on_batch, not predict: predict builds a tf.data pipeline on every call, which
        # costs more than the model itself for the one-image requests of serving.
        scores = [
            np.asarray(self.model.predict_on_batch(images[start : start + batch_size]))
            for start in range(0, len(images), batch_size)
        ]
        return np.concatenate(scores).reshape(-1).astype(np.float64)


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


# --- Inputs ---------------------------------------------------------------------------------


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def expand_inputs(inputs: Iterable[str | Path]) -> list[tuple[Path, str | None]]:
    """Files as given (whatever their extension: a named file is meant to be predicted), folders
    searched recursively for .jpeg/.jpg/.png in any case, sorted. Hidden files and macOS
    `__MACOSX` folders are left out of folders. Returns (path, error) pairs: a missing path or a
    folder without images is an error entry, reported like an image that failed."""
    entries: list[tuple[Path, str | None]] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = sorted(
                candidate
                for candidate in path.rglob("*")
                if candidate.is_file()
                and _is_image_name(candidate)
                and "__MACOSX" not in candidate.relative_to(path).parts
            )
            if not found:
                entries.append((path, f"{path}: folder holds no .jpeg, .jpg or .png file"))
            entries.extend((candidate, None) for candidate in found)
        elif path.is_file():
            entries.append((path, None))
        else:
            entries.append((path, f"{path}: file not found"))
    return entries


# --- Scoring --------------------------------------------------------------------------------


class GradcamWriter:
    """Writes one overlay PNG per image into a folder, with unique names (`<stem>.png`, then
    `<stem>-1.png`, ... when two inputs share a name)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._used: set[str] = set()

    def target(self, name: str) -> Path:
        stem, number = Path(name).stem or "image", 0
        candidate = f"{stem}.png"
        while candidate in self._used:
            number += 1
            candidate = f"{stem}-{number}.png"
        self._used.add(candidate)
        return self.folder / candidate

    def write(self, name: str, image: np.ndarray, heatmap: np.ndarray) -> Path:
        path = self.target(name)
        Image.fromarray(overlay(image[..., 0], heatmap)).save(path)
        return path


def classify(
    classifier: Classifier,
    sources: Sequence[tuple[str, Path | bytes]],
    gradcam: GradcamWriter | None = None,
) -> list[Prediction]:
    """Score one batch of images given as files or encoded bytes, named for the output.

    Each image is decoded and preprocessed by the training code (`preprocess_file` /
    `preprocess_bytes`); one that cannot be decoded gets an error and the others are still
    scored, in one model call.
    """
    pixels, decoded, errors = [], [], {}
    for position, (name, source) in enumerate(sources):
        try:
            if isinstance(source, Path):
                array = preprocess_file(source, classifier.preprocess)
            else:
                array = preprocess_bytes(bytes(source), classifier.preprocess, name=name)
        except ImageDecodeError as error:
            errors[position] = str(error)
            continue
        pixels.append(array[..., None])
        decoded.append(position)
    images = np.stack(pixels) if pixels else np.zeros((0, 1, 1, 1), np.uint8)
    scores = dict(zip(decoded, classifier.probabilities(images), strict=True))
    overlays: dict[int, str] = {}
    if gradcam is not None and decoded:
        heatmaps, _ = gradcam_heatmaps(classifier.model, images, classifier.threshold)
        for row, position in enumerate(decoded):
            written = gradcam.write(sources[position][0], images[row], heatmaps[row])
            overlays[position] = str(written)
    results = []
    for position, (name, _) in enumerate(sources):
        if position in errors:
            results.append(Prediction(name, None, None, classifier.threshold, errors[position]))
            continue
        probability = float(scores[position])
        results.append(
            Prediction(
                name,
                probability,
                label_for(probability, classifier.threshold),
                classifier.threshold,
                gradcam=overlays.get(position),
            )
        )
    return results


def predict_paths(
    classifier: Classifier,
    inputs: Iterable[str | Path],
    batch_size: int = DEFAULT_BATCH_SIZE,
    gradcam_dir: Path | None = None,
) -> Iterator[Prediction]:
    """Predictions for files and folders, in input order, batch by batch (streams for large
    folders)."""
    if batch_size < 1:
        raise PredictionError(f"batch size must be >= 1, got {batch_size}")
    gradcam = GradcamWriter(gradcam_dir) if gradcam_dir is not None else None
    batch: list[tuple[str, Path]] = []
    for path, error in expand_inputs(inputs):
        if error is not None:
            yield from classify(classifier, batch, gradcam)
            batch = []
            yield Prediction(str(path), None, None, classifier.threshold, error)
            continue
        batch.append((str(path), path))
        if len(batch) == batch_size:
            yield from classify(classifier, batch, gradcam)
            batch = []
    yield from classify(classifier, batch, gradcam)


# --- Loading a model ------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise PredictionError(f"{path}: not found; {what}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PredictionError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise PredictionError(f"{path}: expected a JSON object")
    return data


def _threshold_from(operating_point: dict[str, Any], path: Path) -> float:
    value = operating_point.get("threshold")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PredictionError(f"{path}: no numeric 'threshold'; re-run the evaluate stage")
    return float(value)


def _check_same_model(card: dict[str, Any], operating_point: dict[str, Any], paths) -> None:
    """threshold.json must have been chosen for this model.keras: after a re-train without
    evaluate, the old threshold belongs to the old model."""
    trained = card.get("mlflow", {})
    evaluated = operating_point.get("model", {}) or {}
    for key_trained, key_evaluated in (("version", "version"), ("model_id", "model_id")):
        ours, theirs = trained.get(key_trained), evaluated.get(key_evaluated)
        if ours and theirs and str(ours) != str(theirs):
            raise PredictionError(
                f"{paths[1]} was chosen for model {key_evaluated} {theirs} but {paths[0]} is "
                f"{key_trained} {ours}; run the evaluate stage (dvc repro) or pass --threshold"
            )


def load_model_file(model_path: Path, threshold: float | None = None) -> Classifier:
    """A `.keras` file with the train stage's `model.json` (preprocess settings) and the evaluate
    stage's `threshold.json` beside it; `threshold` overrides the latter."""
    if not model_path.is_file():
        raise PredictionError(
            f"{model_path}: not found; run the pipeline first (dvc repro) or pass --model "
            "with a .keras file or an MLflow model URI"
        )
    card_path = model_path.with_name(MODEL_CARD_FILE)
    card = _read_json(
        card_path,
        f"it holds the preprocess settings of {model_path}; run the train stage (dvc repro)",
    )
    if threshold is None:
        threshold_path = model_path.with_name(THRESHOLD_FILE)
        operating_point = _read_json(
            threshold_path,
            "the evaluate stage chooses the threshold: run dvc repro, or pass --threshold",
        )
        _check_same_model(card, operating_point, (card_path, threshold_path))
        threshold = _threshold_from(operating_point, threshold_path)
    preprocess = config_from_settings(card.get("preprocess"), card_path)
    model = keras.saving.load_model(model_path, compile=False)
    return Classifier(model, threshold, preprocess, str(model_path))


def _registered_version(uri: str, run_id: str | None):
    """The registry version a URI names (models:/name/version or models:/name@alias), else the
    newest version registered from the same run that evaluate tagged with a threshold."""
    import mlflow

    client = mlflow.MlflowClient()
    match = _REGISTERED.match(uri)
    if match and match["version"]:
        return client.get_model_version(match["name"], match["version"])
    if match and match["alias"]:
        return client.get_model_version_by_alias(match["name"], match["alias"])
    if not run_id:
        return None
    versions = [
        version
        for version in client.search_model_versions(f"run_id = '{run_id}'")
        if "threshold" in version.tags
    ]
    return max(versions, key=lambda version: int(version.version), default=None)


def _load_keras_flavor(uri: str, info, threshold: float | None) -> Classifier:
    import mlflow

    if threshold is None:
        version = _registered_version(uri, info.run_id)
        if version is None or "threshold" not in version.tags:
            raise PredictionError(
                f"{uri}: no registered version with a 'threshold' tag (set by the evaluate "
                "stage); pass --threshold, or use the served model "
                "(models:/pneumonia-classifier@candidate), which carries its threshold"
            )
        threshold = float(version.tags["threshold"])
    # The train run logs the model card beside the model; it holds the preprocess settings.
    with tempfile.TemporaryDirectory() as scratch:
        try:
            card_file = mlflow.artifacts.download_artifacts(
                run_id=info.run_id, artifact_path=MODEL_CARD_FILE, dst_path=scratch
            )
        except Exception as error:  # MlflowException or OSError, depending on the store
            raise PredictionError(
                f"{uri}: cannot read {MODEL_CARD_FILE} (the preprocess settings) from run "
                f"{info.run_id}: {error}"
            ) from error
        card = _read_json(Path(card_file), f"run {info.run_id} logged no model card")
    preprocess = config_from_settings(card.get("preprocess"), f"{uri} ({MODEL_CARD_FILE})")
    model = mlflow.keras.load_model(uri)
    return Classifier(model, threshold, preprocess, uri)


def load_mlflow_model(uri: str, threshold: float | None = None) -> Classifier:
    """An MLflow model URI (models:/name/version, models:/name@alias, models:/<model id>,
    runs:/<run id>/<name>, a local model folder URI): the served pyfunc, which carries its
    threshold and preprocess settings, or the Keras flavor logged by train."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pneumonia.serving import PneumoniaServingModel

    try:
        info = mlflow.models.get_model_info(uri)
    except (MlflowException, OSError) as error:
        raise PredictionError(
            f"{uri}: cannot load this MLflow model ({error}); check the URI and "
            f"MLFLOW_TRACKING_URI (tracking store {mlflow.get_tracking_uri()})"
        ) from error
    if "keras" in info.flavors:
        return _load_keras_flavor(uri, info, threshold)
    loaded = mlflow.pyfunc.load_model(uri)
    wrapped = loaded.unwrap_python_model() if "python_function" in info.flavors else None
    if not isinstance(wrapped, PneumoniaServingModel):
        raise PredictionError(
            f"{uri}: not a pneumonia model (flavors {', '.join(info.flavors)}); expected the "
            "served pyfunc registered by evaluate or the Keras model registered by train"
        )
    classifier = replace(wrapped.classifier, source=uri)
    return classifier if threshold is None else replace(classifier, threshold=threshold)


def is_mlflow_uri(model: str | Path) -> bool:
    return bool(_URI.match(str(model)))


def load_classifier(model: str | Path | None = None, threshold: float | None = None) -> Classifier:
    """`None`: models/model.keras with models/threshold.json; a path: a .keras file; anything
    with a scheme (models:/..., runs:/...): an MLflow model URI."""
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise PredictionError(f"--threshold must be in [0, 1], got {threshold}")
    if model is None:
        return load_model_file(DEFAULT_MODEL, threshold)
    if is_mlflow_uri(model):
        return load_mlflow_model(str(model), threshold)
    return load_model_file(Path(model), threshold)
