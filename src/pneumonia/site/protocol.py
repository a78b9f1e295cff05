"""The new-site protocol (docs/experiments.md, round 5), pure functions on arrays: the official
test split treated as a new site.

- Calibration on a few labeled patients: for each k, DRAWS seeded draws of k test patients; in
  each, the site threshold is chosen on the drawn patients' labels and scores only
  (statistics.guaranteed_threshold, sensitivity TARGET at CONFIDENCE), and every figure is
  measured on the remaining test patients only, beside the val-chosen threshold on the same
  held-out patients. A k whose draws refuse the guarantee (too few pneumonia images) is also
  calibrated at each of FALLBACK_CONFIDENCES, on the same draws, reported apart and never as the
  0.95 guarantee.
- The check's false alarms: CONTROL_DRAWS draws of about CONTROL_IMAGES held-out val images
  (whole patients) from the reference archive's control part, each tested against its
  reference part as `pneumonia site check` tests a batch; p < significance is a false alarm.
- The check of a whole split (test, unlabeled; the control part whole).

Every figure here is "site-calibrated" or a check's: none of it is the val-only headline, and
none of it chooses anything (the settings are fixed above and in docs/experiments.md, round 5;
none was chosen on test).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pneumonia.contracts.labels import is_positive
from pneumonia.contracts.site_reference import SiteReference
from pneumonia.site import statistics
from pneumonia.site.calibration import DEFAULT_CONFIDENCE, DEFAULT_TARGET
from pneumonia.site.check import MINIMUM_IMAGES, OutOfDistribution, check_site, two_sample_test
from pneumonia.site.reference import group_numbers

LABEL = "site-calibrated"
K_VALUES = (25, 50, 100, 200)
DRAWS = 200
TARGET = DEFAULT_TARGET
CONFIDENCE = DEFAULT_CONFIDENCE
FALLBACK_CONFIDENCES = (0.80, 0.50)
# The k of the headline figures (reports/site/metrics.json).
HEADLINE_K = 100
# A k is skipped when fewer test patients than this would be left to measure on: the held-out
# part is never smaller than the smallest calibration part.
MINIMUM_HELD_OUT_PATIENTS = min(K_VALUES)
CONTROL_DRAWS = 200
CONTROL_IMAGES = 100


def rates(labels: np.ndarray, calls: np.ndarray) -> tuple[float, float]:
    """(sensitivity, specificity) of boolean calls; NaN for a class with no images."""
    labels, calls = np.asarray(labels).astype(bool), np.asarray(calls).astype(bool)
    sensitivity = float(calls[labels].mean()) if labels.any() else math.nan
    specificity = float((~calls[~labels]).mean()) if (~labels).any() else math.nan
    return sensitivity, specificity


def patient_draws(groups: np.ndarray, k: int, draws: int, seed: int) -> Iterator[np.ndarray]:
    """`draws` masks of the images of k patients drawn without replacement (a patient's images
    all in or all out), from a generator seeded by (seed, k), so one k's draws do not depend on
    which other k are run."""
    groups = group_numbers(groups)
    patients = int(groups.max()) + 1 if len(groups) else 0
    if not 0 < k <= patients:
        raise ValueError(f"k = {k}: expected 1 to {patients} (the patients there are)")
    generator = np.random.default_rng([seed, k])
    for _ in range(draws):
        yield np.isin(groups, generator.permutation(patients)[:k])


def site_threshold(labels: np.ndarray, scores: np.ndarray, confidence: float) -> float | None:
    """The threshold `pneumonia site calibrate` chooses on these labeled cases
    (statistics.guaranteed_threshold, sensitivity TARGET), or None where they hold too few
    pneumonia images for the guarantee."""
    try:
        return statistics.guaranteed_threshold(labels, scores, TARGET, confidence).threshold
    except statistics.TooFewPositives:
        return None


@dataclass(frozen=True)
class DrawFigures:
    """The held-out figures of every draw of one k at one confidence (NaN where refused)."""

    k: int
    confidence: float
    thresholds: np.ndarray
    sensitivity: np.ndarray
    specificity: np.ndarray
    val_sensitivity: np.ndarray  # the val-chosen threshold, on the same held-out patients
    val_specificity: np.ndarray
    calibration_positives: np.ndarray

    @property
    def calibrated(self) -> np.ndarray:
        return ~np.isnan(self.thresholds)


def calibrate_draws(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: np.ndarray,
    val_threshold: float,
    k: int,
    *,
    draws: int = DRAWS,
    seed: int = 0,
) -> list[DrawFigures]:
    """Every draw of k patients at CONFIDENCE, and at FALLBACK_CONFIDENCES on the same draws when
    any draw refused. Labels are read from the calibration part only, figures from the rest."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    masks = list(patient_draws(groups, k, draws, seed))
    val_figures = np.array(
        [rates(labels[~mask], is_positive(scores[~mask], val_threshold)) for mask in masks]
    ).reshape(-1, 2)
    positives = np.array([int(labels[mask].sum()) for mask in masks])

    def at(confidence: float) -> DrawFigures:
        thresholds, figures = [], []
        for mask in masks:
            threshold = site_threshold(labels[mask], scores[mask], confidence)
            held_out = ~mask  # the calibration part's scores and labels end here
            thresholds.append(math.nan if threshold is None else threshold)
            figures.append(
                (math.nan, math.nan)
                if threshold is None
                else rates(labels[held_out], is_positive(scores[held_out], threshold))
            )
        figures_array = np.array(figures).reshape(-1, 2)
        return DrawFigures(
            k=k,
            confidence=confidence,
            thresholds=np.array(thresholds),
            sensitivity=figures_array[:, 0],
            specificity=figures_array[:, 1],
            val_sensitivity=val_figures[:, 0],
            val_specificity=val_figures[:, 1],
            calibration_positives=positives,
        )

    results = [at(CONFIDENCE)]
    if not results[0].calibrated.all():
        results += [at(confidence) for confidence in FALLBACK_CONFIDENCES]
    return results


def _mean_sd(values: np.ndarray) -> tuple[float | None, float | None]:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return None, None
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None


def _held(sensitivity: np.ndarray) -> float | None:
    """The share of draws whose held-out sensitivity reached TARGET."""
    measured = sensitivity[~np.isnan(sensitivity)]
    return float((measured >= TARGET).mean()) if len(measured) else None


def summarize(figures: DrawFigures) -> dict[str, Any]:
    """One row of the new-site table: over the draws calibrated at this confidence, the mean and
    sd of the held-out sensitivity and specificity, how often the target held, and the same for
    the val-chosen threshold on the same held-out patients."""
    chosen = figures.calibrated
    row: dict[str, Any] = {
        "k": figures.k,
        "confidence": figures.confidence,
        "guarantee": (
            f"{TARGET:g} at confidence {CONFIDENCE:g}"
            if figures.confidence == CONFIDENCE
            else f"lower confidence {figures.confidence:g}: not the {CONFIDENCE:g} guarantee"
        ),
        "draws": len(chosen),
        "calibrated": int(chosen.sum()),
        "refused": int((~chosen).sum()),
        "positives_needed": statistics.positives_needed(TARGET, figures.confidence),
        "calibration_positives_mean": float(figures.calibration_positives.mean()),
    }
    for name, values in (
        ("site_sensitivity", figures.sensitivity[chosen]),
        ("site_specificity", figures.specificity[chosen]),
        ("site_threshold", figures.thresholds[chosen]),
        ("val_threshold_sensitivity", figures.val_sensitivity[chosen]),
        ("val_threshold_specificity", figures.val_specificity[chosen]),
    ):
        row[f"{name}_mean"], row[f"{name}_sd"] = _mean_sd(values)
    row["target_held"] = _held(figures.sensitivity[chosen])
    row["val_threshold_target_held"] = _held(figures.val_sensitivity[chosen])
    return row


def new_site_table(
    labels: np.ndarray,
    scores: np.ndarray,
    patients: np.ndarray,
    val_threshold: float,
    *,
    k_values: tuple[int, ...] = K_VALUES,
    draws: int = DRAWS,
    seed: int = 0,
) -> dict[str, Any]:
    """The protocol on one labeled split: `rows` (summarize, per k and confidence) and `skipped`
    (each k that would leave fewer than MINIMUM_HELD_OUT_PATIENTS patients held out, and why)."""
    groups = group_numbers(np.asarray(patients))
    count = int(groups.max()) + 1 if len(groups) else 0
    rows, skipped = [], []
    for k in k_values:
        if k + MINIMUM_HELD_OUT_PATIENTS > count:
            skipped.append(
                {
                    "k": k,
                    "reason": f"{count} patient(s) in the split: k = {k} leaves fewer than "
                    f"{MINIMUM_HELD_OUT_PATIENTS} to measure on",
                }
            )
            continue
        for figures in calibrate_draws(
            labels, scores, groups, val_threshold, k, draws=draws, seed=seed
        ):
            rows.append(summarize(figures))
    return {
        "label": LABEL,
        "target_sensitivity": TARGET,
        "confidence": CONFIDENCE,
        "fallback_confidences": list(FALLBACK_CONFIDENCES),
        "draws": draws,
        "patients": count,
        "images": len(groups),
        "minimum_held_out_patients": MINIMUM_HELD_OUT_PATIENTS,
        "val_threshold": float(val_threshold),
        "seed": seed,
        "rows": rows,
        "skipped": skipped,
    }


def plotted_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per k for the plot against k: the highest confidence at which at least half the
    draws were calibrated (else the one with the most), so each point mixes no confidences."""
    by_k: dict[int, list[dict[str, Any]]] = {}
    for row in table["rows"]:
        if row["calibrated"]:
            by_k.setdefault(row["k"], []).append(row)
    plotted = []
    for rows in by_k.values():
        enough = [row for row in rows if 2 * row["calibrated"] >= row["draws"]]
        plotted.append(
            max(enough, key=lambda row: row["confidence"])
            if enough
            else max(rows, key=lambda row: (row["calibrated"], row["confidence"]))
        )
    return plotted


def control_draws(groups: np.ndarray, images: int, draws: int, seed: int) -> Iterator[np.ndarray]:
    """Masks of whole patients drawn in a seeded order until at least `images` images: about
    `images` each (a patient's images are never split)."""
    groups = group_numbers(groups)
    patients = int(groups.max()) + 1
    per_patient = np.bincount(groups, minlength=patients)
    generator = np.random.default_rng([seed, images])
    for _ in range(draws):
        order = generator.permutation(patients)
        taken = int(np.searchsorted(np.cumsum(per_patient[order]), images)) + 1
        yield np.isin(groups, order[:taken])


class ControlTester:
    """The check's p-value for batches of control images, as check_site computes it (the
    reference's two-sample test with its null draws and seed), without the effect size and
    out-of-distribution scores that a false-alarm count does not read. The test is built once,
    and its null distribution, which depends only on the batch size (the seed is the
    reference's), is drawn once per size: 200 batches of about 100 images cost a few null
    draws, not 200. tests/test_site_protocol.py checks the p-values are check_site's."""

    def __init__(self, reference: SiteReference):
        self.record = reference.record
        self.detector = OutOfDistribution(reference)
        self.test = two_sample_test(reference, self.detector)
        self._null: dict[int, np.ndarray] = {}

    def p_value(self, features: np.ndarray) -> float:
        # The steps of the test's own `test` (statistics.PatientSplitMMDTest), the null cached.
        draws, seed = self.record.null_draws, self.record.seed
        sample = self.test.usable(self.detector.standardize(features), seed)
        if len(sample) not in self._null:
            self._null[len(sample)] = self.test.null_statistics(len(sample), draws, seed)
        observed = self.test.statistic(sample)
        return (1 + int((self._null[len(sample)] >= observed).sum())) / (1 + draws)


def control_false_alarms(
    reference: SiteReference,
    *,
    features: np.ndarray | None = None,
    draws: int = CONTROL_DRAWS,
    images: int = CONTROL_IMAGES,
    seed: int = 0,
) -> dict[str, Any]:
    """How often the check flags draws of held-out val images (the control part; `features` may
    replace its features, e.g. shifted, to show the count can rise). Skipped, saying why, when
    the control part holds fewer than `images` images."""
    control = reference.control_features if features is None else np.asarray(features)
    available = len(control)
    if available < max(images, MINIMUM_IMAGES):
        return {
            "skipped": f"the control part holds {available} image(s): a draw needs {images}",
            "draws": 0,
        }
    tester = ControlTester(reference)
    p_values, sizes = [], []
    for mask in control_draws(reference.control_groups, images, draws, seed):
        p_values.append(tester.p_value(control[mask]))
        sizes.append(int(mask.sum()))
    significance = reference.record.significance
    alarms = int((np.array(p_values) < significance).sum())
    # No interval: the draws share one control part (about a third of val), so they are not
    # independent, and the rate is conditional on the one split of val the reference records.
    return {
        "draws": draws,
        "images_target": images,
        "images_mean": float(np.mean(sizes)),
        "control_images": available,
        "significance": significance,
        "false_alarms": alarms,
        "false_alarm_rate": alarms / draws,
        "p_values": [float(value) for value in p_values],
    }


def whole_check(
    reference: SiteReference,
    features: np.ndarray,
    scores: np.ndarray,
    names: list[str] | None = None,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """check_site on a whole split (as `pneumonia site check` reports it), with its sentence;
    skipped, saying why, below check.MINIMUM_IMAGES images."""
    if len(features) < MINIMUM_IMAGES:
        return {
            "skipped": f"{len(features)} image(s): a site check needs at least {MINIMUM_IMAGES}",
            "n_images": len(features),
        }
    result = check_site(reference, features, scores, names, groups=groups)
    return {**result.as_json(), "sentence": result.sentence()}


def headline(
    table: dict[str, Any], test: dict[str, Any], control: dict[str, Any]
) -> dict[str, float | None]:
    """reports/site/metrics.json: a few flat figures (None where not measured, which DVC leaves
    out): the test check, the check's false-alarm rate, and at HEADLINE_K patients and
    CONFIDENCE the site-calibrated held-out figures beside the val-chosen threshold's."""
    row = next(
        (
            row
            for row in table["rows"]
            if row["k"] == HEADLINE_K and row["confidence"] == CONFIDENCE
        ),
        {},
    )
    return {
        "test_shift_p_value": test.get("p_value"),
        "test_classifier_auc": test.get("classifier_auc"),
        "control_false_alarm_rate": control.get("false_alarm_rate"),
        "site_sensitivity": row.get("site_sensitivity_mean"),
        "site_specificity": row.get("site_specificity_mean"),
        "target_held": row.get("target_held"),
        # The means are over the calibrated draws only: how many there were, and refused.
        "calibrated_draws": row.get("calibrated"),
        "refused_draws": row.get("refused"),
        "val_threshold_sensitivity": row.get("val_threshold_sensitivity_mean"),
        "val_threshold_specificity": row.get("val_threshold_specificity_mean"),
    }
