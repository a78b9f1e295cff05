"""Logging the trained model to MLflow (with signature) and the registry, and its model card."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
from mlflow.models import infer_signature

from pneumonia.config import Config, Hyperparameters
from pneumonia.preprocess import model_input_settings

MODEL_ARTIFACT = "model"


def log_and_register(model: keras.Model, example: np.ndarray, registered_name: str) -> str:
    """Log the Keras model with a uint8 signature and an input example, register it, and return
    the new version.

    `mlflow.keras.log_model(..., input_example=...)` fails in MLflow 3.17: the Keras flavor writes
    the example before it creates the model folder. `save_model` into a folder made beforehand,
    then logging and registering that folder, gives the same MLmodel, signature and example.
    """
    signature = infer_signature(example, model.predict(example, verbose=0))
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_and_register needs an active MLflow run")
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pip-requirement inference chatter
        folder = Path(scratch) / MODEL_ARTIFACT
        folder.mkdir()
        mlflow.keras.save_model(model, str(folder), signature=signature, input_example=example)
        mlflow.log_artifacts(str(folder), MODEL_ARTIFACT)
        version = mlflow.register_model(
            f"runs:/{run.info.run_id}/{MODEL_ARTIFACT}", registered_name
        )
    return str(version.version)


def model_card(
    config: Config,
    hyperparameters: Hyperparameters,
    metrics: dict[str, float],
    study: dict[str, Any] | None,
    run_id: str,
    version: str,
) -> dict[str, Any]:
    """What a user of models/model.keras needs: input contract, choices, provenance."""
    return {
        "input": {
            "shape": [config.preprocess.image_size, config.preprocess.image_size, 1],
            "dtype": "uint8",
            "note": "raw pixels after preprocess; normalisation is inside the model",
        },
        "output": "probability of PNEUMONIA (sigmoid)",
        "preprocess": model_input_settings(config.preprocess),
        "hyperparameters": hyperparameters.flat(),
        "selection": "Optuna on val ROC AUC; final fit early-stopped on val ROC AUC",
        "validation": metrics,
        "tuning": study,
        "mlflow": {
            "run_id": run_id,
            "registered_model": config.train.registered_model_name,
            "version": version,
        },
    }
