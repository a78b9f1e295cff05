"""What evaluate records outside its files: the val and test datasets and metrics in MLflow
against the trained model, the registry tags promotion compares, the served model (image bytes
in, probability and label at the chosen threshold out), and the operating point that ties the
threshold to the model it was chosen for."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from pneumonia.config import EvaluateConfig
from pneumonia.contracts import registry_tags
from pneumonia.contracts.files import file_sha256
from pneumonia.contracts.metrics_report import AT_0_5, AT_THRESHOLD, THRESHOLD, VALUE
from pneumonia.contracts.model_card import card_preprocess, card_registry
from pneumonia.contracts.operating_point import MODEL_SHA256, OperatingPoint
from pneumonia.contracts.paths import Paths
from pneumonia.evaluation.report import flat_metrics
from pneumonia.inference.serving import encode_png, log_serving_model
from pneumonia.registry import describe_model, tag_version
from pneumonia.tracking import StageRun


def publish_evaluation(
    run: StageRun,
    settings: EvaluateConfig,
    paths: Paths,
    card: dict[str, Any],
    report: dict[str, Any],
    indexes: dict[str, pd.DataFrame],
    example_image: np.ndarray,
    limits: dict[str, int] | None = None,
) -> OperatingPoint:
    """Log, tag and register what evaluate measured; returns the operating point to write.
    `limits` are the served model's input limits (params.yaml's preprocess.max_pixels and
    max_file_bytes)."""
    trained = card_registry(card)
    threshold = report[THRESHOLD][VALUE]
    val_at_threshold = report["val"][AT_THRESHOLD]
    test_at_threshold = report["test"][AT_THRESHOLD]
    datasets = {
        name: run.log_dataset(index, paths.processed_split(name), name, context)
        for name, index, context in (
            ("val", indexes["val"], "validation"),
            ("test", indexes["test"], "test"),
        )
    }
    model_id = trained.model_id or None
    mlflow.log_metrics(
        flat_metrics(val_at_threshold, "val"), model_id=model_id, dataset=datasets["val"]
    )
    mlflow.log_metrics(
        {
            **flat_metrics(test_at_threshold, "test"),
            **flat_metrics(report["test"][AT_0_5], "test_at_0.5"),
        },
        model_id=model_id,
        dataset=datasets["test"],
    )
    point = OperatingPoint(
        threshold=threshold,
        rule=str(settings.threshold),
        val_sensitivity=val_at_threshold["sensitivity"][VALUE],
        val_specificity=val_at_threshold["specificity"][VALUE],
        model={**trained.model, MODEL_SHA256: file_sha256(paths.model)},
        evaluate_run_id=run.run_id,
    )
    # What `pneumonia promote` compares (val only) and `pneumonia predict` reads (threshold).
    version_tags = {
        registry_tags.THRESHOLD: threshold,
        registry_tags.THRESHOLD_RULE: point.rule,
        registry_tags.VAL_ROC_AUC: val_at_threshold["roc_auc"][VALUE],
        registry_tags.VAL_SENSITIVITY: point.val_sensitivity,
        registry_tags.VAL_SPECIFICITY: point.val_specificity,
        registry_tags.VAL_DATASET_DIGEST: datasets["val"].digest,
        registry_tags.EVALUATE_RUN_ID: run.run_id,
    }
    tag_version(trained.registered_model, trained.version, settings.alias, version_tags)
    served = log_serving_model(
        paths.model,
        threshold,
        card_preprocess(card),
        settings.serving_model_name,
        source=point.model,
        example_image=encode_png(example_image),
        limits=limits,
    )
    tag_version(
        settings.serving_model_name,
        served.version,
        settings.alias,
        {
            **version_tags,
            registry_tags.SOURCE_MODEL: trained.registered_model,
            registry_tags.SOURCE_MODEL_VERSION: trained.version,
            registry_tags.SOURCE_MODEL_ID: trained.model_id,
        },
    )
    return replace(
        point,
        serving_model={
            "registered_model": settings.serving_model_name,
            "version": served.version,
            "model_id": served.model_id,
        },
    )


def run_tags(card: dict[str, Any]) -> dict[str, str]:
    """Tags of the evaluate run that name the trained model it measured."""
    trained = card_registry(card)
    return {
        "train_run_id": trained.run_id,
        "model_id": trained.model_id,
        "registered_model": trained.registered_model,
        "registered_model_version": trained.version,
    }


def describe_models(settings: EvaluateConfig, point: OperatingPoint, card_markdown: str) -> None:
    """The model card as the description of both registered versions (the Keras model and the
    served one), and a one-line description of the served model's registry entry."""
    describe_model(
        settings.serving_model_name,
        "The trained network with its operating threshold, served by `mlflow models serve`: PNG or "
        "JPEG chest X-ray bytes in, the probability of pneumonia and a label out. Each version's "
        "description is its model card. Research use only, not a medical device.",
        version=point.serving_model["version"],
        version_description=card_markdown,
    )
    describe_model(
        point.model["registered_model"],
        None,
        version=point.model["version"],
        version_description=card_markdown,
    )


def artifact_paths(paths: Paths) -> list[tuple[Path, str | None]]:
    """What the evaluate run keeps as artifacts, and under which folder."""
    return [
        (paths.metrics, None),
        (paths.model_card_markdown, None),
        (paths.threshold, None),
        (paths.evaluate_reports, "evaluation"),
    ]
