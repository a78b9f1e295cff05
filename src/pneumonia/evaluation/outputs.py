"""The evaluate stage's files besides the metrics: PNG figures of the test curves and Grad-CAM
panels of the most confident image of each outcome."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from pneumonia.contracts.labels import CLASSES
from pneumonia.contracts.metrics_report import CONFUSION, VALUE
from pneumonia.contracts.paths import Paths
from pneumonia.evaluation.plots import (
    calibration_figure,
    confusion_figure,
    gradcam_panel,
    precision_recall_figure,
    roc_figure,
)
from pneumonia.evaluation.report import gradcam_examples
from pneumonia.inference.gradcam import gradcam_heatmaps
from pneumonia.progress import track


def write_tables(tables: dict[str, pd.DataFrame], paths: Paths) -> None:
    """The DVC plots' data: one CSV per table, under reports/tables."""
    paths.evaluate_tables.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        table.to_csv(paths.evaluate_table(name), index=False)


def write_figures(
    measured: dict[str, Any], tables: dict[str, pd.DataFrame], prevalence: float, folder: Path
) -> list[Path]:
    """PNG versions of the test curves and confusion matrix at the chosen threshold."""
    operating_point = (1 - measured["specificity"][VALUE], measured["sensitivity"][VALUE])
    return [
        roc_figure(tables["roc"], measured["roc_auc"][VALUE], operating_point, folder / "roc.png"),
        precision_recall_figure(
            tables["precision_recall"],
            measured["pr_auc"][VALUE],
            prevalence,
            folder / "precision_recall.png",
        ),
        calibration_figure(
            tables["calibration"], measured["ece"][VALUE], folder / "calibration.png"
        ),
        confusion_figure(measured[CONFUSION], CLASSES, folder / "confusion_matrix.png"),
    ]


def write_gradcam_panels(
    model: keras.Model,
    images: np.ndarray,
    index: pd.DataFrame,
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    per_outcome: int,
    folder: Path,
) -> dict[str, int]:
    """One Grad-CAM panel per outcome (true/false positive/negative); returns how many images
    each shows (an outcome with no images, e.g. no false negatives, gets no panel)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.png"):  # a panel from an earlier run must not linger
        stale.unlink()
    shown = {}
    examples = gradcam_examples(labels, scores, threshold, per_outcome)
    for outcome in track(examples, "Grad-CAM panels", unit="panels"):
        chosen = examples[outcome]
        shown[outcome] = len(chosen)
        if len(chosen) == 0:
            continue
        heatmaps, probabilities = gradcam_heatmaps(model, images[chosen], threshold)
        names = [Path(index["path"].iloc[i]).name for i in chosen]
        heading = f"{outcome.replace('_', ' ')} (test, threshold {threshold:.3f})"
        gradcam_panel(
            images[chosen], heatmaps, probabilities, names, heading, folder / f"{outcome}.png"
        )
    return shown
