"""Logging the trained Keras model to MLflow (with signature) and the registry; tagging versions."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
from mlflow.models import Model, infer_signature

from pneumonia.console import NODEDEF_LINE, native_stderr_without, without_registry_chatter
from pneumonia.contracts import registry_tags
from pneumonia.errors import PipelineError
from pneumonia.redaction import redact_url

MODEL_ARTIFACT = "model"


class _KerasFlavor:
    """mlflow.keras with the model folder created before saving.

    `mlflow.keras.log_model(..., input_example=...)` fails in MLflow 3.17: the Keras flavor writes
    the example before it creates the folder. Logging through `Model.log` with this flavor keeps
    everything else MLflow does (a LoggedModel with its id, signature, input example, run output
    link, registration).
    """

    __name__ = "mlflow.keras"

    @staticmethod
    def save_model(path: str, **kwargs: Any) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


@dataclass(frozen=True)
class LoggedModel:
    model_id: str
    model_uri: str
    version: str


def log_and_register(
    model: keras.Model, example: np.ndarray, registered_name: str, step: int = 0
) -> LoggedModel:
    """Log the Keras model to the active run with a uint8 signature and an input example, and
    register it as a new version of ``registered_name``. MLflow attaches the run's metrics
    logged at ``step`` (the epoch whose weights the model holds) to the logged model."""
    if mlflow.active_run() is None:
        raise RuntimeError("log_and_register needs an active MLflow run")
    # The raw (N, 1) float32 output, as the signature must describe it: not `score`'s 1-D float64.
    # predict_on_batch, not predict: under op determinism predict's tf.data map logs an error.
    signature = infer_signature(example, np.asarray(model.predict_on_batch(example)))
    # MLflow checks the logged model by predicting the example with it (through Keras' predict).
    with (
        warnings.catch_warnings(),
        native_stderr_without((NODEDEF_LINE,)),
        without_registry_chatter(),
    ):
        warnings.simplefilter("ignore", UserWarning)  # pip-requirement inference chatter
        info = Model.log(
            artifact_path=None,
            name=MODEL_ARTIFACT,
            flavor=_KerasFlavor,
            flavor_name="mlflow.keras",
            registered_model_name=registered_name,
            model=model,
            signature=signature,
            input_example=example,
            step=step,
        )
    return LoggedModel(info.model_id, info.model_uri, str(info.registered_model_version))


def registered_version_of_file(name: str, sha256: str) -> tuple[LoggedModel, str] | None:
    """The first version of `name` registered for a model file with this sha256, with the run
    that logged it; None when these bytes were never registered."""
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(
        f"name = '{name}' and tags.{registry_tags.MODEL_FILE_SHA256_TAG} = '{sha256}'"
    )
    if not versions:
        return None
    first = min(versions, key=lambda version: int(version.version))
    model_id = first.tags.get(registry_tags.MODEL_ID) or first.model_id or ""
    model_uri = f"models:/{model_id}" if model_id else first.source
    return LoggedModel(model_id, model_uri, str(first.version)), first.run_id or ""


class ModelNotInStoreError(PipelineError, LookupError):
    """A model card names a logged model that this tracking store does not hold."""


def require_logged_model(model_id: str, card: Path) -> None:
    """Refuse, before anything is measured, a model card (`card`, train's models/model.json)
    whose logged model is not in the tracking store: the store was deleted or replaced, or
    MLFLOW_TRACKING_URI points elsewhere than when train ran. DVC does not track the store, so
    it sees train as up to date; MLflow would fail mid-stage on a foreign key."""
    if not model_id:
        return
    try:
        mlflow.get_logged_model(model_id)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ModelNotInStoreError(
            f"{card}: its logged model {model_id} is not in the tracking store "
            f"{redact_url(mlflow.get_tracking_uri())} (deleted or replaced since train ran, or "
            "MLFLOW_TRACKING_URI points elsewhere); re-run train (`dvc repro -f train`), or "
            "point MLFLOW_TRACKING_URI at the store train logged to"
        ) from None


def tag_version(name: str, version: str, alias: str | None, tags: dict[str, Any]) -> None:
    """Tag a registered model version and point an alias at it."""
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    if alias:
        client.set_registered_model_alias(name, alias, version)


def describe_model(
    name: str,
    description: str | None,
    *,
    version: str | None = None,
    version_description: str | None = None,
) -> None:
    """Descriptions shown on the registry's pages: the registered model's (only while it has
    none, so an edit made in the UI stays) and one version's (replaced: it describes that
    version's latest evaluation)."""
    client = mlflow.MlflowClient()
    if description and not client.get_registered_model(name).description:
        client.update_registered_model(name, description=description)
    if version is not None and version_description is not None:
        client.update_model_version(name, version, description=version_description)
