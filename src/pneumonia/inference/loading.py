"""The one loader of a trained model with its model card and operating point.

Used by evaluate and shift-check (a model file and its card), by predict (a file, or any MLflow
model URI of the served pyfunc or the Keras flavor) and by the served model.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import keras

from pneumonia.config import PreprocessConfig
from pneumonia.contracts import registry_tags
from pneumonia.contracts.model_card import ModelCardError, card_preprocess, read_model_card
from pneumonia.contracts.operating_point import (
    check_model_file,
    check_same_model,
    read_operating_point,
)
from pneumonia.contracts.paths import MODEL_CARD_FILE, THRESHOLD_FILE
from pneumonia.imaging.transforms import config_from_settings
from pneumonia.inference.classifier import Classifier, PredictionError

# MLflow URIs name a scheme (models:/, runs:/, file://, s3://, ...); a bare path does not.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")
_REGISTERED = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/]+))/?$")


@dataclass(frozen=True)
class CardedModel:
    """A saved Keras model with its model card and the preprocess settings the card records."""

    model: keras.Model
    card: dict[str, Any]
    preprocess: PreprocessConfig
    path: Path


NOT_TRAINED = (
    "run the pipeline first (dvc repro) or pass --model with a .keras file or an MLflow model URI"
)


def load_keras_model(path: Path, missing: str = NOT_TRAINED) -> keras.Model:
    """A saved .keras file, for inference (not compiled); `missing` says what to do without it."""
    if not path.is_file():
        raise PredictionError(f"{path}: not found; {missing}")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many kinds for a damaged or foreign file
        raise PredictionError(
            f"{path}: not a readable Keras model ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'}); re-create it with "
            "dvc repro, or pass another --model"
        ) from error


def load_carded_model(model_path: Path, missing: str = NOT_TRAINED) -> CardedModel:
    """A .keras file with the train stage's model card (model.json) beside it."""
    if not model_path.is_file():
        load_keras_model(model_path, missing)  # the clear "not found" error, before the card's
    card_path = model_path.with_name(MODEL_CARD_FILE)
    card = read_model_card(card_path)
    preprocess = config_from_settings(card_preprocess(card), card_path)
    return CardedModel(load_keras_model(model_path, missing), card, preprocess, model_path)


def load_model_file(model_path: Path, threshold: float | None = None) -> Classifier:
    """A `.keras` file with the train stage's `model.json` (preprocess settings) and the evaluate
    stage's `threshold.json` beside it; `threshold` overrides the latter."""
    if not model_path.is_file():
        load_keras_model(model_path)  # the clear "not found" error
    card_path = model_path.with_name(MODEL_CARD_FILE)
    card = read_model_card(card_path, require_registry=False)
    if threshold is None:
        threshold_path = model_path.with_name(THRESHOLD_FILE)
        point = read_operating_point(threshold_path)
        check_same_model(card, point, card_path, threshold_path)
        check_model_file(point, model_path, threshold_path)
        threshold = point.threshold
    preprocess = config_from_settings(card_preprocess(card), card_path)
    return Classifier(load_keras_model(model_path), threshold, preprocess, str(model_path))


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
        if registry_tags.THRESHOLD in version.tags
    ]
    return max(versions, key=lambda version: int(version.version), default=None)


def _load_keras_flavor(uri: str, info, threshold: float | None) -> Classifier:
    import mlflow

    if threshold is None:
        version = _registered_version(uri, info.run_id)
        if version is None or registry_tags.THRESHOLD not in version.tags:
            raise PredictionError(
                f"{uri}: no registered version with a '{registry_tags.THRESHOLD}' tag (set by "
                "the evaluate stage); pass --threshold, or use the served model "
                "(models:/pneumonia-classifier@candidate), which carries its threshold"
            )
        threshold = float(version.tags[registry_tags.THRESHOLD])
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
        try:
            card = read_model_card(Path(card_file), require_registry=False)
        except ModelCardError as error:
            raise PredictionError(f"{uri}: run {info.run_id}: {error}") from error
    preprocess = config_from_settings(card_preprocess(card), f"{uri} ({MODEL_CARD_FILE})")
    model = mlflow.keras.load_model(uri)
    return Classifier(model, threshold, preprocess, uri)


def load_mlflow_model(uri: str, threshold: float | None = None) -> Classifier:
    """An MLflow model URI (models:/name/version, models:/name@alias, models:/<model id>,
    runs:/<run id>/<name>, a local model folder URI): the served pyfunc, which carries its
    threshold and preprocess settings, or the Keras flavor logged by train."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        info = mlflow.models.get_model_info(uri)
    except (MlflowException, OSError) as error:
        raise PredictionError(
            f"{uri}: cannot load this MLflow model ({error}); check the URI and "
            f"MLFLOW_TRACKING_URI (tracking store {mlflow.get_tracking_uri()})"
        ) from error
    if "keras" in info.flavors:
        return _load_keras_flavor(uri, info, threshold)
    try:
        loaded = mlflow.pyfunc.load_model(uri)
    except (MlflowException, ImportError, OSError) as error:
        raise PredictionError(
            f"{uri}: MLflow cannot load this model ({error}); a served model logged by another "
            "version of this project may need that version's code (mlflow models serve with "
            "--env-manager virtualenv)"
        ) from error
    wrapped = loaded.unwrap_python_model() if "python_function" in info.flavors else None
    # The served pyfunc (inference.serving) holds a Classifier; matched by what it holds, so
    # this module need not import the serving one.
    classifier = getattr(wrapped, "classifier", None)
    if not isinstance(classifier, Classifier):
        raise PredictionError(
            f"{uri}: not a pneumonia model (flavors {', '.join(info.flavors)}); expected the "
            "served pyfunc registered by evaluate or the Keras model registered by train"
        )
    classifier = replace(classifier, source=uri)
    return classifier if threshold is None else replace(classifier, threshold=threshold)


def is_mlflow_uri(model: str | Path) -> bool:
    return bool(_URI.match(str(model)))


def load_classifier(model: str | Path, threshold: float | None = None) -> Classifier:
    """A path: a .keras file with its model.json and threshold.json beside it; anything with a
    scheme (models:/..., runs:/...): an MLflow model URI."""
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise PredictionError(f"--threshold must be in [0, 1], got {threshold}")
    if is_mlflow_uri(model):
        return load_mlflow_model(str(model), threshold)
    return load_model_file(Path(model), threshold)
