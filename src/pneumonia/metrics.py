"""Metrics of a binary classifier at an operating point, the threshold rules, and confidence
intervals from a bootstrap that resamples patients.

Pure functions over arrays. Labels are 0/1 (1 = PNEUMONIA), scores are predicted probabilities
of pneumonia, and an image is called positive by `contracts.labels.is_positive`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score, roc_curve

from pneumonia.config import ThresholdRule
from pneumonia.contracts.labels import class_names, is_positive

COUNTS = ("true_positive", "false_positive", "true_negative", "false_negative")
RATES = ("accuracy", "sensitivity", "specificity", "precision", "f1")
RANKING = ("roc_auc", "pr_auc", "brier", "ece")
METRICS = RATES + RANKING


def validate(labels: np.ndarray, scores: np.ndarray, name: str = "scores") -> None:
    """Labels 0/1 and finite probabilities of the same length, or a ValueError naming them."""
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(
            f"{name}: labels {labels.shape} and scores {scores.shape} must be 1-D and match"
        )
    if len(labels) == 0:
        raise ValueError(f"{name}: no images to score")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{name}: labels must be 0 (NORMAL) or 1 (PNEUMONIA)")
    if not np.isfinite(scores).all() or scores.min() < 0 or scores.max() > 1:
        raise ValueError(f"{name}: scores must be probabilities in [0, 1] (found NaN or outside)")


def choose_threshold(labels: np.ndarray, scores: np.ndarray, rule: ThresholdRule) -> float:
    """The operating threshold the rule picks on these (validation) scores.

    youden: the threshold maximising sensitivity + specificity - 1 (ties: the highest).
    sensitivity:x: lowering the threshold from the top, the first one whose sensitivity reaches
    x, i.e. the highest threshold with sensitivity >= x and so the best specificity there.
    fixed: the number itself.
    """
    if rule.kind == "fixed":
        return float(rule.value)
    validate(labels, scores, "threshold selection")
    if labels.min() == labels.max():
        raise ValueError(
            "threshold selection needs both classes in the validation split; it has only "
            f"{class_names(labels[:1])[0]} images"
        )
    false_positive_rate, sensitivity, thresholds = roc_curve(
        labels, scores, drop_intermediate=False
    )
    # roc_curve starts at threshold +inf (nothing called positive): not a usable operating point.
    usable = np.isfinite(thresholds)
    false_positive_rate, sensitivity = false_positive_rate[usable], sensitivity[usable]
    thresholds = thresholds[usable]
    if rule.kind == "youden":
        index = int(np.argmax(sensitivity - false_positive_rate))
    elif rule.kind == "sensitivity":
        index = int(np.flatnonzero(sensitivity >= rule.value - 1e-12)[0])
    else:
        raise ValueError(f"unknown threshold rule {rule.kind!r}")
    return float(thresholds[index])


def calibration_bins(
    labels: np.ndarray, scores: np.ndarray, bins: int, weights: np.ndarray | None = None
) -> pd.DataFrame:
    """Equal-width bins of predicted probability: mean prediction, observed pneumonia share and
    weight (image count) per non-empty bin."""
    weights = np.ones(len(labels)) if weights is None else weights
    # Bin b holds [b/bins, (b+1)/bins); a score of exactly 1 goes in the last bin.
    index = np.minimum((scores * bins).astype(int), bins - 1)
    total = np.bincount(index, weights, minlength=bins)
    predicted = np.bincount(index, weights * scores, minlength=bins)
    observed = np.bincount(index, weights * labels, minlength=bins)
    filled = total > 0
    return pd.DataFrame(
        {
            "bin_low": np.arange(bins)[filled] / bins,
            "bin_high": (np.arange(bins)[filled] + 1) / bins,
            "mean_predicted": predicted[filled] / total[filled],
            "fraction_positive": observed[filled] / total[filled],
            "count": total[filled],
        }
    )


def expected_calibration_error(
    labels: np.ndarray, scores: np.ndarray, bins: int = 10, weights: np.ndarray | None = None
) -> float:
    """Image-weighted mean |observed pneumonia share - mean predicted probability| over bins."""
    table = calibration_bins(labels, scores, bins, weights)
    gaps = np.abs(table["fraction_positive"] - table["mean_predicted"])
    return float(np.sum(table["count"] * gaps) / table["count"].sum())


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def binary_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    bins: int = 10,
    weights: np.ndarray | None = None,
) -> dict[str, float]:
    """Rates at the threshold, threshold-free scores (ROC AUC, PR AUC, Brier, ECE) and the
    confusion counts. ``weights`` repeat images (the bootstrap); a rate with an empty
    denominator, or an AUC with one class, is NaN."""
    if weights is not None:
        keep = weights > 0
        labels, scores, weights = labels[keep], scores[keep], weights[keep].astype(float)
    else:
        weights = np.ones(len(labels))
    called = is_positive(scores, threshold)
    positive = labels == 1
    true_positive = float(weights[called & positive].sum())
    false_positive = float(weights[called & ~positive].sum())
    true_negative = float(weights[~called & ~positive].sum())
    false_negative = float(weights[~called & positive].sum())
    both_classes = positive.any() and (~positive).any()
    return {
        "accuracy": _ratio(true_positive + true_negative, weights.sum()),
        "sensitivity": _ratio(true_positive, true_positive + false_negative),
        "specificity": _ratio(true_negative, true_negative + false_positive),
        "precision": _ratio(true_positive, true_positive + false_positive),
        "f1": _ratio(2 * true_positive, 2 * true_positive + false_positive + false_negative),
        "roc_auc": (
            float(roc_auc_score(labels, scores, sample_weight=weights))
            if both_classes
            else float("nan")
        ),
        "pr_auc": (
            float(average_precision_score(labels, scores, sample_weight=weights))
            if both_classes
            else float("nan")
        ),
        "brier": float(brier_score_loss(labels, scores, sample_weight=weights)),
        "ece": expected_calibration_error(labels, scores, bins, weights),
        "true_positive": true_positive,
        "false_positive": false_positive,
        "true_negative": true_negative,
        "false_negative": false_negative,
    }


def bootstrap_weights(groups: Sequence[str] | np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, images) multiplicities: each row draws patients with replacement and repeats
    every image of a drawn patient as often as the patient was drawn."""
    codes, uniques = pd.factorize(np.asarray(groups), sort=True)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(uniques), size=(resamples, len(uniques)))
    offsets = np.arange(resamples)[:, None] * len(uniques)
    per_patient = np.bincount((draws + offsets).ravel(), minlength=resamples * len(uniques))
    return per_patient.reshape(resamples, len(uniques))[:, codes]


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def resampled_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float, weights: np.ndarray, bins: int = 10
) -> dict[str, np.ndarray]:
    """:func:`binary_metrics` for many weightings at once, as matrix products (a Python loop
    over scikit-learn calls takes minutes for 2,000 resamples; this takes well under a second).

    ``weights`` is (resamples, images); each metric comes back as a (resamples,) array. ROC AUC
    counts ties as half (Mann-Whitney), PR AUC is average precision over distinct scores: the
    definitions scikit-learn uses, which the tests check against it.
    """
    weights = np.asarray(weights, dtype=np.float64)
    positive = (labels == 1).astype(np.float64)
    negative = 1.0 - positive
    called = is_positive(scores, threshold).astype(np.float64)
    true_positive = weights @ (called * positive)
    false_positive = weights @ (called * negative)
    true_negative = weights @ ((1 - called) * negative)
    false_negative = weights @ ((1 - called) * positive)
    total = weights.sum(axis=1)
    positives, negatives = true_positive + false_negative, false_positive + true_negative

    # Per distinct score level (ascending): weight of positives and negatives there.
    levels, level = np.unique(scores, return_inverse=True)
    at_level = np.zeros((len(scores), len(levels)))
    at_level[np.arange(len(scores)), level] = 1.0
    positive_at = weights @ (at_level * positive[:, None])
    negative_at = weights @ (at_level * negative[:, None])
    negatives_below = np.cumsum(negative_at, axis=1) - negative_at
    pairs = (positive_at * (negatives_below + 0.5 * negative_at)).sum(axis=1)
    roc_auc = _safe_ratio(pairs, positives * negatives)
    # Average precision: thresholds from the highest score down.
    hits = np.cumsum(positive_at[:, ::-1], axis=1)
    calls = hits + np.cumsum(negative_at[:, ::-1], axis=1)
    precision_curve = np.nan_to_num(_safe_ratio(hits, calls))
    recall_gain = positive_at[:, ::-1]
    pr_auc = _safe_ratio((recall_gain * precision_curve).sum(axis=1), positives)
    pr_auc = np.where(negatives > 0, pr_auc, np.nan)

    brier = _safe_ratio(weights @ (scores - labels) ** 2, total)
    bin_index = np.minimum((scores * bins).astype(int), bins - 1)
    in_bin = np.zeros((len(scores), bins))
    in_bin[np.arange(len(scores)), bin_index] = 1.0
    bin_total = weights @ in_bin
    gaps = np.abs(weights @ (in_bin * labels[:, None]) - weights @ (in_bin * scores[:, None]))
    ece = _safe_ratio(gaps.sum(axis=1), total)
    return {
        "accuracy": _safe_ratio(true_positive + true_negative, total),
        "sensitivity": _safe_ratio(true_positive, positives),
        "specificity": _safe_ratio(true_negative, negatives),
        "precision": _safe_ratio(true_positive, true_positive + false_positive),
        "f1": _safe_ratio(2 * true_positive, 2 * true_positive + false_positive + false_negative),
        "roc_auc": roc_auc,
        "pr_auc": pr_auc,
        "brier": brier,
        "ece": np.where(bin_total.sum(axis=1) > 0, ece, np.nan),
        "true_positive": true_positive,
        "false_positive": false_positive,
        "true_negative": true_negative,
        "false_negative": false_negative,
    }


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high}


def bootstrap_intervals(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: Sequence[str] | np.ndarray,
    threshold: float,
    resamples: int,
    seed: int,
    confidence: float = 0.95,
    bins: int = 10,
) -> tuple[dict[str, Interval], dict[str, int]]:
    """Point estimates with percentile confidence intervals from a patient-level bootstrap.

    Images of one patient are correlated (and the test split has several per patient), so
    resampling images would understate the uncertainty. Returns the intervals and, per metric,
    how many resamples left it undefined (e.g. a resample without normals has no specificity);
    those are left out of its percentiles.
    """
    validate(labels, scores, "bootstrap")
    if len(groups) != len(labels):
        raise ValueError(f"bootstrap: {len(groups)} patient ids for {len(labels)} images")
    point = binary_metrics(labels, scores, threshold, bins)
    samples = resampled_metrics(
        labels, scores, threshold, bootstrap_weights(groups, resamples, seed), bins
    )
    tail = (1 - confidence) / 2 * 100
    intervals, undefined = {}, {}
    for name in METRICS:
        values = samples[name]
        defined = values[np.isfinite(values)]
        undefined[name] = int(len(values) - len(defined))
        low, high = np.percentile(defined, [tail, 100 - tail]) if len(defined) else (np.nan, np.nan)
        intervals[name] = Interval(point[name], float(low), float(high))
    return intervals, undefined
