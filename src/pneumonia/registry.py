"""Logging the trained model to MLflow (with signature) and the registry, and its model card."""

from __future__ import annotations

import warnings
from typing import Any

import keras
import mlflow
import numpy as np
from mlflow.models import infer_signature

from pneumonia.config import Config, Hyperparameters
from pneumonia.preprocess import model_input_settings

MODEL_ARTIFACT = "model"


def log_and_register(model: keras.Model, example: np.ndarray, registered_name: str) -> str:
    """Log the Keras model with a uint8 signature and an input example; returns the version."""
    signature = infer_signature(example, model.predict(example, verbose=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pip-requirement inference chatter
        info = mlflow.keras.log_model(
            model,
            name=MODEL_ARTIFACT,
            signature=signature,
            input_example=example,
            registered_model_name=registered_name,
        )
    return str(info.registered_model_version)


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
