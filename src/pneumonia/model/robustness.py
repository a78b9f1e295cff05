"""Acquisition-shift check on val: does the model still rank and call val images well when they
look as if another X-ray unit, exposure or setting had taken them?

Why: val comes from the same archive as train and is nearly saturated (val ROC AUC 0.99+), so it
cannot tell apart choices that behave differently on images acquired differently, which is what
the official test split is known to be. This check re-renders each val image under fixed,
seeded changes of exposure (gamma), contrast, sharpness, noise, resolution and field of view,
*before* preprocessing (so CLAHE and resizing see them as they would see a new image), and
measures ROC AUC and the calls at the Youden threshold of the clean val images. Only val images
are used; test is never read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from pneumonia.config import PreprocessConfig, ThresholdRule
from pneumonia.contracts.labels import binary_labels
from pneumonia.errors import PipelineError
from pneumonia.imaging.decode import load_grayscale
from pneumonia.imaging.transforms import preprocess_image
from pneumonia.metrics import binary_metrics, choose_threshold
from pneumonia.progress import Progress, duration, say, track

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]
REPORTED = ("roc_auc", "sensitivity", "specificity", "balanced_accuracy")
# The check's own threshold rule, not evaluate's: a model's training figures must not change
# (nor train re-run) when only the evaluate stage's operating-point rule is edited.
YOUDEN = ThresholdRule(kind="youden")


class ShiftCheckError(PipelineError, ValueError):
    """The check cannot run on what it was given."""


def _gamma(exponent: float) -> Shift:
    table = np.round(255.0 * (np.arange(256) / 255.0) ** exponent).astype(np.uint8)
    return lambda pixels, _: table[pixels]


def _contrast(factor: float) -> Shift:
    def shift(pixels: np.ndarray, _: np.random.Generator) -> np.ndarray:
        mean = pixels.mean()
        return np.clip(np.round(mean + factor * (pixels - mean)), 0, 255).astype(np.uint8)

    return shift


def _blur(sigma: float) -> Shift:
    return lambda pixels, _: cv2.GaussianBlur(
        pixels, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101
    )


def _noise(sigma: float) -> Shift:
    def shift(pixels: np.ndarray, generator: np.random.Generator) -> np.ndarray:
        noisy = pixels + generator.normal(0.0, sigma, pixels.shape)
        return np.clip(np.round(noisy), 0, 255).astype(np.uint8)

    return shift


def _downsample(scale: float) -> Shift:
    def shift(pixels: np.ndarray, _: np.random.Generator) -> np.ndarray:
        height, width = pixels.shape
        small = cv2.resize(
            pixels,
            (max(1, round(width * scale)), max(1, round(height * scale))),
            interpolation=cv2.INTER_AREA,
        )
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)

    return shift


def _zoom_out(scale: float) -> Shift:
    """The chest smaller in the frame (wider collimation or another distance), black around."""

    def shift(pixels: np.ndarray, _: np.random.Generator) -> np.ndarray:
        height, width = pixels.shape
        new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
        small = cv2.resize(pixels, (new_width, new_height), interpolation=cv2.INTER_AREA)
        frame = np.zeros_like(pixels)
        top, left = (height - new_height) // 2, (width - new_width) // 2
        frame[top : top + new_height, left : left + new_width] = small
        return frame

    return shift


# Strengths are in the source image's pixels and grey levels; moderate, so a radiologist would
# still read every image the same way.
SHIFTS: dict[str, Shift] = {
    "gamma_0.67": _gamma(0.67),
    "gamma_1.5": _gamma(1.5),
    "contrast_0.7": _contrast(0.7),
    "contrast_1.3": _contrast(1.3),
    "blur_1.5": _blur(1.5),
    "noise_8": _noise(8.0),
    "downsample_0.4": _downsample(0.4),
    "zoom_out_0.85": _zoom_out(0.85),
}


@dataclass
class ShiftReport:
    threshold: float  # chosen on the clean val images (Youden unless told otherwise)
    table: pd.DataFrame  # one row per condition ("none" first): REPORTED metrics and counts
    summary: dict[str, float]


def shifted_images(
    sources: list[np.ndarray], config: PreprocessConfig, seed: int
) -> dict[str, np.ndarray]:
    """Every condition ("none" and each shift) of the decoded source images, preprocessed to
    the model's (N, S, S, 1) uint8 input. Noise is seeded per condition, so reruns agree."""
    conditions: dict[str, np.ndarray] = {}
    named = [("none", None), *SHIFTS.items()]
    with Progress("rendering", len(named) * len(sources), "images", indent="  ") as progress:
        for index, (name, shift) in enumerate(named):
            generator = np.random.default_rng([seed, index])
            rows = []
            for pixels in sources:
                changed = pixels if shift is None else shift(pixels, generator)
                rows.append(preprocess_image(Image.fromarray(changed), config))
                progress.update(1, condition=name)
            conditions[name] = np.stack(rows)[..., np.newaxis]
    return conditions


def load_sources(frame: pd.DataFrame, images_dir: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """The val images as decoded grayscale arrays at source resolution, and their labels."""
    if frame.empty:
        raise ShiftCheckError("the acquisition-shift check needs val images; the split is empty")
    sources = [
        np.asarray(load_grayscale(images_dir / path))
        for path in track(frame["path"], "reading", unit="images", indent="  ")
    ]
    labels = binary_labels(frame["label"])
    return sources, labels


def shift_report(
    predict: Callable[[np.ndarray], np.ndarray],
    conditions: dict[str, np.ndarray],
    labels: np.ndarray,
    rule: ThresholdRule = YOUDEN,
) -> ShiftReport:
    """Score every condition; the threshold comes from the clean ("none") scores only."""
    if "none" not in conditions:
        raise ShiftCheckError("conditions must include the clean images under 'none'")
    scores = {
        name: np.asarray(predict(conditions[name])).reshape(-1)
        for name in track(conditions, "scoring", unit="conditions", indent="  ")
    }
    threshold = choose_threshold(labels, scores["none"], rule)
    rows = []
    for name, values in scores.items():
        measured = binary_metrics(labels, values, threshold)
        measured["balanced_accuracy"] = (measured["sensitivity"] + measured["specificity"]) / 2
        rows.append(
            {
                "condition": name,
                **{key: measured[key] for key in REPORTED},
                "mean_score": float(values.mean()),
            }
        )
    table = pd.DataFrame(rows)
    shifted = table[table["condition"] != "none"]
    summary = {
        "val_shift_auc_mean": float(shifted["roc_auc"].mean()),
        "val_shift_auc_min": float(shifted["roc_auc"].min()),
        "val_shift_sensitivity_mean": float(shifted["sensitivity"].mean()),
        "val_shift_specificity_mean": float(shifted["specificity"].mean()),
        "val_shift_balanced_accuracy_mean": float(shifted["balanced_accuracy"].mean()),
    }
    return ShiftReport(threshold=threshold, table=table, summary=summary)


def check_model(
    predict: Callable[[np.ndarray], np.ndarray],
    split_csv: Path,
    images_dir: Path,
    preprocess: PreprocessConfig,
    seed: int,
) -> ShiftReport:
    """The whole check for one model over the val split listed in split_csv, at the Youden
    threshold of the clean val images."""
    if not split_csv.is_file():
        raise ShiftCheckError(f"{split_csv}: not found; run the split stage first (dvc repro)")
    frame = pd.read_csv(split_csv)
    say(f"shift check: {len(frame)} val images under {len(SHIFTS)} acquisition shifts")
    started = time.perf_counter()
    sources, labels = load_sources(frame, images_dir)
    report = shift_report(predict, shifted_images(sources, preprocess, seed), labels)
    say(
        f"shift check: val AUC {report.summary['val_shift_auc_mean']:.4f} on average under the "
        f"shifts (lowest {report.summary['val_shift_auc_min']:.4f}) in "
        f"{duration(time.perf_counter() - started)}"
    )
    return report
