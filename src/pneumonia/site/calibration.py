"""Choosing a site's operating point on labeled cases of its own: the highest threshold whose
sensitivity has an exact one-sided lower bound of at least the target (site.statistics), and
what it measured on those cases."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from scipy.stats import binomtest

from pneumonia.contracts.labels import is_positive
from pneumonia.contracts.model_reference import ModelReference
from pneumonia.contracts.operating_point import Interval, OperatingPoint, SiteCalibration
from pneumonia.site import statistics

RULE = (
    "highest threshold whose one-sided exact (Clopper-Pearson) lower bound on sensitivity, over "
    "the calibration pneumonia images, is at least the target"
)
DEFAULT_TARGET = 0.95
DEFAULT_CONFIDENCE = 0.95


def exact_interval(successes: int, trials: int, confidence: float) -> Interval:
    """A proportion with its two-sided exact (Clopper-Pearson) interval."""
    if trials == 0:
        return Interval(value=float("nan"), low=0.0, high=1.0)
    interval = binomtest(successes, trials).proportion_ci(
        confidence_level=confidence, method="exact"
    )
    return Interval(value=successes / trials, low=float(interval.low), high=float(interval.high))


def calibrate_site(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    site: str,
    model: ModelReference,
    folder: str,
    target: float = DEFAULT_TARGET,
    confidence: float = DEFAULT_CONFIDENCE,
) -> OperatingPoint:
    """The site's operating point (version unset: site.points numbers it when it is stored).
    Raises statistics.TooFewPositives, naming how many pneumonia images the guarantee needs."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    chosen = statistics.guaranteed_threshold(labels, scores, target, confidence)
    calls = is_positive(scores, chosen.threshold)
    negatives = int((~labels).sum())
    correct_negatives = int((~calls[~labels]).sum())
    calibration = SiteCalibration(
        rule=RULE,
        target_sensitivity=target,
        confidence=confidence,
        positives=chosen.positives,
        negatives=negatives,
        detected=chosen.detected,
        sensitivity_lower_bound=chosen.lower_bound,
        sensitivity=exact_interval(chosen.detected, chosen.positives, confidence),
        specificity=exact_interval(correct_negatives, negatives, confidence),
        folder=folder,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return OperatingPoint(
        threshold=chosen.threshold,
        model=model,
        rule=f"site sensitivity >= {target:g} at confidence {confidence:g}",
        chosen_on="site",
        site=site,
        calibration=calibration,
    )
