"""The evaluate stage's figures: val and test scored, the threshold chosen on val, test measured at
it (and at 0.5 for comparison) with patient-bootstrap intervals, and the tables behind the plots.
Everything but `score_and_measure` is a pure function of labels and scores."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

from pneumonia.config import EvaluateConfig
from pneumonia.contracts.labels import class_names, is_positive
from pneumonia.contracts.metrics_report import (
    AT_0_5,
    AT_THRESHOLD,
    CI_HIGH,
    CI_LOW,
    HIGH,
    LOW,
    THRESHOLD,
    VALUE,
)
from pneumonia.errors import PipelineError
from pneumonia.metrics import (
    COUNTS,
    binary_metrics,
    bootstrap_intervals,
    calibration_bins,
    choose_threshold,
)
from pneumonia.model.scoring import score
from pneumonia.progress import Progress, duration

OUTCOMES = ("true_positive", "false_positive", "true_negative", "false_negative")
DEFAULT_THRESHOLD = 0.5


class EvaluationError(PipelineError, ValueError):
    """The model or its inputs do not fit together; the message names the files."""


def check_model_input(model: keras.Model, images: np.ndarray, model_path: Path, arrays: Path):
    """The arrays must be what the model was trained on: same shape, raw uint8 pixels."""
    expected = tuple(model.input_shape[1:])
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise EvaluationError(
            f"{model_path} takes images of shape {expected} but {arrays} holds "
            f"{tuple(images.shape[1:])}; preprocess and train disagree (was "
            "preprocess.image.size changed without retraining?): run dvc repro"
        )
    if images.dtype != np.uint8:
        raise EvaluationError(f"{arrays}: expected uint8 pixels, found {images.dtype}")


def measure(
    labels: np.ndarray, scores: np.ndarray, patients: np.ndarray, threshold: float, settings
) -> dict[str, Any]:
    """Every metric at one threshold with its patient-bootstrap interval, and the confusion
    counts; resamples that leave a metric undefined are counted, not hidden."""
    intervals, undefined = bootstrap_intervals(
        labels,
        scores,
        patients,
        threshold,
        resamples=settings.bootstrap,
        seed=settings.seed,
        confidence=settings.confidence,
        bins=settings.calibration_bins,
    )
    point = binary_metrics(labels, scores, threshold, settings.calibration_bins)
    result: dict[str, Any] = {THRESHOLD: threshold}
    result.update({name: interval.as_dict() for name, interval in intervals.items()})
    result["confusion"] = {name: int(point[name]) for name in COUNTS}
    undefined = {name: count for name, count in undefined.items() if count}
    if undefined:
        result["undefined_resamples"] = undefined
    return result


def split_summary(labels: np.ndarray, patients: np.ndarray) -> dict[str, int]:
    return {
        "images": len(labels),
        "patients": int(pd.Series(patients).nunique()),
        "pneumonia": int(labels.sum()),
        "normal": int(len(labels) - labels.sum()),
    }


def evaluation_report(
    settings: EvaluateConfig,
    threshold: float,
    val: tuple[np.ndarray, np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> dict[str, Any]:
    """The detail report (reports/evaluate/metrics_detail.json): the val operating point, val
    and test at it and test at 0.5, with intervals; reports/metrics.json holds its headline
    (contracts.metrics_report.headline_metrics).

    ``val`` and ``test`` are (labels, scores, patient ids).
    """
    report: dict[str, Any] = {
        THRESHOLD: {"rule": str(settings.threshold), VALUE: threshold, "chosen_on": "val"},
        "bootstrap": {
            "unit": "patient",
            "resamples": settings.bootstrap,
            "confidence": settings.confidence,
            "seed": settings.seed,
        },
        "val": {
            **split_summary(val[0], val[2]),
            AT_THRESHOLD: measure(*val, threshold, settings),
        },
        "test": {
            **split_summary(test[0], test[2]),
            AT_THRESHOLD: measure(*test, threshold, settings),
            AT_0_5: measure(*test, DEFAULT_THRESHOLD, settings),
        },
    }
    return report


def flat_metrics(section: dict[str, Any], prefix: str) -> dict[str, float]:
    """MLflow metric names for one measured section: `<prefix>/<metric>` with its interval bounds
    `<prefix>/<metric>_low` and `_high`, and the confusion counts. The `/` makes the MLflow UI
    chart each prefix (val, test, test_at_0.5) as one group."""
    flat = {f"{prefix}/{THRESHOLD}": section[THRESHOLD]}
    for name, value in section.items():
        if isinstance(value, dict) and VALUE in value:
            flat[f"{prefix}/{name}"] = value[VALUE]
            flat[f"{prefix}/{name}_{LOW}"] = value[CI_LOW]
            flat[f"{prefix}/{name}_{HIGH}"] = value[CI_HIGH]
    flat.update({f"{prefix}/{name}": count for name, count in section["confusion"].items()})
    return {name: value for name, value in flat.items() if np.isfinite(value)}


def curve_tables(labels: np.ndarray, scores: np.ndarray, bins: int) -> dict[str, pd.DataFrame]:
    """ROC, precision-recall and calibration tables (the DVC plots' data)."""
    false_positive_rate, sensitivity, roc_thresholds = roc_curve(labels, scores)
    precision, recall, pr_thresholds = precision_recall_curve(labels, scores)
    return {
        "roc": pd.DataFrame(
            {
                "fpr": false_positive_rate,
                "tpr": sensitivity,
                # The first point (nothing called positive) has threshold +inf: left empty.
                "threshold": np.where(np.isfinite(roc_thresholds), roc_thresholds, np.nan),
            }
        ),
        "precision_recall": pd.DataFrame(
            {
                "recall": recall,
                "precision": precision,
                # The last point (recall 0) has no threshold.
                "threshold": np.append(pr_thresholds, np.nan),
            }
        ),
        "calibration": calibration_bins(labels, scores, bins),
    }


def outcomes(labels: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    called, positive = is_positive(scores, threshold), labels == 1
    return np.select(
        [called & positive, called & ~positive, ~called & ~positive],
        ["true_positive", "false_positive", "true_negative"],
        "false_negative",
    )


def predictions_table(
    index: pd.DataFrame, labels: np.ndarray, scores: np.ndarray, threshold: float
) -> pd.DataFrame:
    """One row per test image: what it is, what the model said, and which outcome that is
    (DVC draws the confusion matrix from `actual` and `predicted`)."""
    return pd.DataFrame(
        {
            "path": index["path"],
            "patient_id": index["patient_id"],
            "actual": class_names(labels),
            "probability": np.round(scores, 6),
            "predicted": class_names(is_positive(scores, threshold)),
            "outcome": outcomes(labels, scores, threshold),
        }
    )


def gradcam_examples(
    labels: np.ndarray, scores: np.ndarray, threshold: float, per_outcome: int
) -> dict[str, np.ndarray]:
    """Indices of the most confident images of each outcome: the surest hits and the worst
    mistakes are the ones worth looking at."""
    kinds = outcomes(labels, scores, threshold)
    chosen = {}
    for outcome in OUTCOMES:
        members = np.flatnonzero(kinds == outcome)
        # Called positive: most confident = highest score; called negative: lowest score.
        descending = outcome in ("true_positive", "false_positive")
        order = np.argsort(-scores[members] if descending else scores[members], kind="stable")
        chosen[outcome] = members[order[:per_outcome]]
    return chosen


def score_and_measure(
    model: keras.Model,
    splits: dict[str, tuple[np.ndarray, np.ndarray, pd.DataFrame]],
    settings: EvaluateConfig,
) -> tuple[dict[str, Any], np.ndarray]:
    """Score val and test (`splits` maps each to images, labels and index), choose the threshold
    on val, and measure both: the detail report, and the test scores."""
    started = time.perf_counter()
    scored = {}
    for name, (images, labels, index) in splits.items():
        with Progress(f"scoring {name}", len(images), "images") as progress:
            scores = score(model, images, on_batch=progress.update)
        scored[name] = (labels, scores, index["patient_id"].to_numpy())
    threshold = choose_threshold(scored["val"][0], scored["val"][1], settings.threshold)
    with Progress("bootstrap", announce=True) as step:
        report = evaluation_report(settings, threshold, scored["val"], scored["test"])
        step.close(
            f"bootstrap: {settings.bootstrap} patient resamples for val and test in "
            f"{duration(step.elapsed)}"
        )
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report, scored["test"][1]
