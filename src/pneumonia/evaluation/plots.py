"""PNG figures of the evaluation (ROC, precision-recall, calibration, confusion matrix, Grad-CAM
panels). `dvc plots show` draws the same curves from the CSV tables with Vega, so dvc.yaml lists
only the Grad-CAM panels of these; the PNGs are for MLflow (logged as artifacts)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or servers

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from pneumonia.inference.gradcam import CAVEAT, overlay


def _save(figure: plt.Figure, path: Path, laid_out: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not laid_out:
        figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def roc_figure(roc: pd.DataFrame, auc: float, operating: tuple[float, float], path: Path) -> Path:
    """ROC curve with the chosen operating point (1 - specificity, sensitivity)."""
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    axes.plot(roc["fpr"], roc["tpr"], label=f"test ROC (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axes.scatter(*operating, color="red", zorder=3, label="threshold chosen on val")
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right")
    return _save(figure, path)


def precision_recall_figure(
    table: pd.DataFrame, average_precision: float, prevalence: float, path: Path
) -> Path:
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    axes.plot(table["recall"], table["precision"], label=f"test (AP {average_precision:.3f})")
    axes.axhline(prevalence, linestyle=":", color="grey", label="prevalence")
    axes.set(xlabel="recall (sensitivity)", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower left")
    return _save(figure, path)


def calibration_figure(table: pd.DataFrame, ece: float, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect calibration")
    axes.plot(
        table["mean_predicted"], table["fraction_positive"], marker="o", label=f"ECE {ece:.3f}"
    )
    axes.set(
        xlabel="mean predicted probability of pneumonia",
        ylabel="observed share of pneumonia",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    axes.legend(loc="upper left")
    return _save(figure, path)


def confusion_matrix(counts: dict[str, float]) -> np.ndarray:
    """2x2 counts, rows = actual, columns = predicted, in CLASSES order (NORMAL first): the layout
    of scikit-learn's ConfusionMatrixDisplay and of the DVC plot (.dvc/plots/confusion_counts)."""
    return np.array(
        [
            [counts["true_negative"], counts["false_positive"]],
            [counts["false_negative"], counts["true_positive"]],
        ]
    )


def draw_confusion(axes: plt.Axes, counts: dict[str, float], classes: tuple[str, str]) -> None:
    """Actual class on the y axis (top row first), predicted on the x axis, counts in the cells."""
    matrix = confusion_matrix(counts)
    axes.imshow(matrix, cmap="Blues", vmin=0)
    for (row, column), value in np.ndenumerate(matrix):
        colour = "white" if value > matrix.max() / 2 else "black"
        axes.text(column, row, f"{value:.0f}", ha="center", va="center", color=colour)
    axes.set_xticks([0, 1], classes)
    axes.set_yticks([0, 1], classes)
    axes.set(
        xlabel="predicted class", ylabel="actual class", title="test confusion matrix (images)"
    )


def confusion_figure(counts: dict[str, float], classes: tuple[str, str], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(4.4, 4))
    draw_confusion(axes, counts, classes)
    return _save(figure, path)


def gradcam_panel(
    images: np.ndarray,
    heatmaps: np.ndarray,
    probabilities: np.ndarray,
    titles: list[str],
    heading: str,
    path: Path,
) -> Path:
    """One column per image: the X-ray above, its Grad-CAM overlay below, and the map's colour
    bar with what it can and cannot show."""
    columns = len(images)
    figure, axes = plt.subplots(2, columns, figsize=(2.2 * columns + 1.2, 4.8), squeeze=False)
    for column in range(columns):
        grey = images[column, ..., 0]
        axes[0, column].imshow(grey, cmap="gray", vmin=0, vmax=255)
        axes[0, column].set_title(f"{titles[column]}\np={probabilities[column]:.3f}", fontsize=7)
        axes[1, column].imshow(overlay(grey, heatmaps[column]))
        for row in (0, 1):
            axes[row, column].axis("off")
    figure.suptitle(heading, fontsize=9)
    figure.tight_layout()
    figure.subplots_adjust(right=1 - 1.0 / figure.get_figwidth())  # room for the bar
    scale = figure.add_axes((1 - 0.75 / figure.get_figwidth(), 0.08, 0.012, 0.38))
    bar = figure.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap="jet"), cax=scale)
    bar.set_label(f"Grad-CAM, 0-1 relative\n({CAVEAT})", fontsize=6)
    bar.ax.tick_params(labelsize=6)
    return _save(figure, path, laid_out=True)
