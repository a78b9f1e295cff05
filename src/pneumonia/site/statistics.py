"""The statistics of the site workflow, pure functions on arrays: a two-sample test in the model's
feature space (MMD with permutations), its readable effect size (a cross-fitted classifier
two-sample test's ROC AUC), a per-image out-of-distribution score (k-th nearest reference
neighbour), and the exact one-sided binomial bound behind a site's sensitivity guarantee.

The settings are fixed in docs/experiments.md (round 5) before any run; the defaults below are
those settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist
from scipy.stats import binomtest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

PERMUTATIONS = 1000
SIGNIFICANCE = 0.05
NEIGHBOURS = 5
TYPICAL_QUANTILE = 0.99
CROSS_FIT_FOLDS = 5
# Permutations scored together: a (pooled, chunk) block of the kernel product at a time.
_PERMUTATION_CHUNK = 250


@dataclass(frozen=True)
class Standardizer:
    """Per-feature mean and scale of the reference; a feature constant there gets scale 1."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, reference: np.ndarray) -> Standardizer:
        reference = _matrix(reference, "reference features")
        scale = reference.std(axis=0)
        return cls(reference.mean(axis=0), np.where(scale > 0, scale, 1.0))

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float64) - self.mean) / self.scale


def _matrix(features: np.ndarray, name: str, minimum: int = 1) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (images, features), got {array.shape}")
    if len(array) < minimum:
        raise ValueError(f"{name}: needs at least {minimum} rows, got {len(array)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: holds NaN or infinite values")
    return array


@dataclass(frozen=True)
class TwoSampleTest:
    statistic: float  # MMD^2 (biased), in the standardized feature space
    p_value: float
    permutations: int


def mmd_permutation_test(
    reference: np.ndarray,
    sample: np.ndarray,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> TwoSampleTest:
    """MMD with a Gaussian kernel, bandwidth the median pairwise distance of the pooled rows
    (unchanged by any permutation, so the test stays exact), p-value by permuting which rows are
    the sample: (1 + #{permuted >= observed}) / (1 + permutations)."""
    reference = _matrix(reference, "reference features", 2)
    sample = _matrix(sample, "site features", 2)
    if reference.shape[1] != sample.shape[1]:
        raise ValueError(
            f"features differ in width: reference {reference.shape[1]}, site {sample.shape[1]}"
        )
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1, got {permutations}")
    pooled = np.concatenate([reference, sample])
    squared = cdist(pooled, pooled, "sqeuclidean")
    upper = squared[np.triu_indices(len(pooled), 1)]
    bandwidth = float(np.median(upper[upper > 0])) if (upper > 0).any() else 1.0
    kernel = np.exp(-squared / bandwidth)
    sizes = (len(reference), len(sample))

    def statistics(membership: np.ndarray) -> np.ndarray:
        # membership: (pooled, m) of booleans, True = in the sample; MMD^2 = w' K w per column.
        weights = np.where(membership, 1.0 / sizes[1], -1.0 / sizes[0])
        return np.einsum("ij,ij->j", kernel @ weights, weights)

    observed = np.zeros((len(pooled), 1), dtype=bool)
    observed[sizes[0] :] = True
    statistic = float(statistics(observed)[0])
    generator = np.random.default_rng(seed)
    exceed = 0
    for start in range(0, permutations, _PERMUTATION_CHUNK):
        count = min(_PERMUTATION_CHUNK, permutations - start)
        membership = np.zeros((len(pooled), count), dtype=bool)
        for column in range(count):
            membership[generator.permutation(len(pooled))[: sizes[1]], column] = True
        # A tolerance, so that ties of the observed labelling with itself count as ties.
        exceed += int((statistics(membership) >= statistic - 1e-12).sum())
    return TwoSampleTest(statistic, (1 + exceed) / (1 + permutations), permutations)


def classifier_two_sample_auc(
    reference: np.ndarray, sample: np.ndarray, folds: int = CROSS_FIT_FOLDS, seed: int = 0
) -> float:
    """How well a logistic regression tells the sample's rows from the reference's, as the ROC
    AUC of its out-of-fold scores (each row scored by a model fitted without it): 0.5 when they
    cannot be told apart, 1.0 when every row can."""
    reference = _matrix(reference, "reference features", 2)
    sample = _matrix(sample, "site features", 2)
    features = np.concatenate([reference, sample])
    membership = np.r_[np.zeros(len(reference)), np.ones(len(sample))]
    folds = max(2, min(folds, len(reference), len(sample)))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(
        LogisticRegression(max_iter=2000),
        features,
        membership,
        cv=splitter,
        method="predict_proba",
    )[:, 1]
    return float(roc_auc_score(membership, scores))


def kth_neighbour_distances(
    reference: np.ndarray, query: np.ndarray, k: int = NEIGHBOURS, *, leave_one_out: bool = False
) -> np.ndarray:
    """Each query row's Euclidean distance to its k-th nearest reference row; with
    `leave_one_out` the query is the reference itself and a row is not its own neighbour."""
    reference = _matrix(reference, "reference features", k + int(leave_one_out))
    query = _matrix(query, "features", 0) if len(query) == 0 else _matrix(query, "features")
    if len(query) == 0:
        return np.zeros(0)
    distances = cdist(query, reference)
    if leave_one_out:
        np.fill_diagonal(distances, np.inf)
    return np.partition(distances, k - 1, axis=1)[:, k - 1]


def typical_distance(
    reference: np.ndarray, k: int = NEIGHBOURS, quantile: float = TYPICAL_QUANTILE
) -> float:
    """The `quantile` of the reference rows' own leave-one-out k-th neighbour distances: the
    out-of-distribution score's unit (a score over 1 is farther than that)."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    distances = kth_neighbour_distances(reference, reference, k, leave_one_out=True)
    return float(np.quantile(distances, quantile))


def sensitivity_lower_bound(detected: int, positives: int, confidence: float) -> float:
    """The one-sided exact (Clopper-Pearson) lower confidence bound on a sensitivity measured as
    `detected` of `positives` (scipy's binomtest, alternative 'greater')."""
    if positives < 1:
        return 0.0
    interval = binomtest(detected, positives, alternative="greater").proportion_ci(
        confidence_level=confidence, method="exact"
    )
    return float(interval.low)


def positives_needed(target: float, confidence: float) -> int:
    """The fewest positives for which catching all of them bounds sensitivity at >= target with
    this confidence: (1 - confidence) ** (1 / n) >= target."""
    if not 0.0 < target < 1.0 or not 0.0 < confidence < 1.0:
        raise ValueError(f"target and confidence must be in (0, 1), got {target} and {confidence}")
    needed = max(1, math.ceil(math.log(1.0 - confidence) / math.log(target)))
    # The closed form, checked against the exact bound itself (rounding at the boundary).
    while sensitivity_lower_bound(needed, needed, confidence) < target:
        needed += 1
    while needed > 1 and sensitivity_lower_bound(needed - 1, needed - 1, confidence) >= target:
        needed -= 1
    return needed


@dataclass(frozen=True)
class GuaranteedThreshold:
    threshold: float
    detected: int
    positives: int
    lower_bound: float


class TooFewPositives(ValueError):
    """The calibration cases hold fewer positives than the guarantee needs."""

    def __init__(self, positives: int, needed: int, target: float, confidence: float):
        self.positives, self.needed = positives, needed
        super().__init__(
            f"{positives} pneumonia image(s), but a sensitivity of at least {target:g} with "
            f"confidence {confidence:g} needs at least {needed} (all of them called pneumonia): "
            f"add {needed - positives} more, or lower the confidence"
        )


def guaranteed_threshold(
    labels: np.ndarray, scores: np.ndarray, target: float, confidence: float
) -> GuaranteedThreshold:
    """The highest threshold whose sensitivity on these cases has an exact one-sided lower bound
    of at least `target` at `confidence`. Candidates are the positives' own scores (a call is
    positive at score >= threshold, contracts.labels): at the j-th highest, j are caught."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be 1-D and alike")
    positive_scores = np.sort(scores[labels])[::-1]
    positives = len(positive_scores)
    needed = positives_needed(target, confidence)
    if positives < needed:
        raise TooFewPositives(positives, needed, target, confidence)
    # Catching every positive meets the bound (positives >= needed): the loop always returns.
    for threshold in dict.fromkeys(positive_scores.tolist()):
        caught = int((positive_scores >= threshold).sum())  # ties: all caught together
        bound = sensitivity_lower_bound(caught, positives, confidence)
        if bound >= target or caught == positives:
            return GuaranteedThreshold(float(threshold), caught, positives, bound)
    raise ValueError("no positive scores")  # not reached: positives >= needed >= 1
