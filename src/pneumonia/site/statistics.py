"""The statistics of the site workflow, pure functions on arrays: a two-sample test in the model's
feature space (MMD against a null of patient splits), its readable effect size (a cross-fitted
classifier two-sample test's ROC AUC), a per-image out-of-distribution score (k-th nearest reference
neighbour), and the exact one-sided binomial bound behind a site's sensitivity guarantee.

The settings are those of docs/experiments.md (round 5), none chosen on test; the defaults below
are those settings.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist
from scipy.stats import binomtest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

NULL_DRAWS = 1000
SIGNIFICANCE = 0.05
NEIGHBOURS = 5
TYPICAL_QUANTILE = 0.99
CROSS_FIT_FOLDS = 5


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
    statistic: float  # unbiased MMD^2 against the reference, in standardized features
    p_value: float
    draws: int


class PatientSplitMMDTest:
    """Is a sample drawn from the population of the reference? The unbiased MMD^2 with a
    Gaussian kernel (bandwidth: the reference's median pairwise squared distance, fixed before
    any sample is seen) between the reference and the sample, against a null drawn from the
    reference itself: split by whole patients into a pseudo-site of the sample's size and the
    rest, as a real site's patients are apart from val's.

    Images of one patient are near copies of each other, so images are not exchangeable: a
    permutation test over images flagged 53% of held-out val draws of 100 images, and a null
    drawn from a separate pool of val patients 2-15% depending on the split (docs/experiments.md,
    round 5). A sample larger than half the reference is cut to half of it, at random (seeded),
    so that a pseudo-site split leaves a reference of at least half its size."""

    def __init__(self, reference: np.ndarray, groups: np.ndarray):
        self.reference = _matrix(reference, "reference features", 4)
        self.groups = np.asarray(groups)
        if self.groups.shape != (len(self.reference),):
            raise ValueError("the reference needs one patient group per image")
        squared = cdist(self.reference, self.reference, "sqeuclidean")
        upper = squared[np.triu_indices(len(self.reference), 1)]
        self.bandwidth = float(np.median(upper[upper > 0])) if (upper > 0).any() else 1.0
        self._kernel_matrix = np.exp(-squared / self.bandwidth)
        self._total = float(self._kernel_matrix.sum())
        self._patients = [np.flatnonzero(self.groups == group) for group in np.unique(self.groups)]
        if len(self._patients) < 2:
            raise ValueError("the reference needs images of at least 2 patients")
        self.largest_sample = len(self.reference) // 2

    def _kernel(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return np.exp(-cdist(left, right, "sqeuclidean") / self.bandwidth)

    def usable(self, sample: np.ndarray, seed: int) -> np.ndarray:
        """The sample, cut to `largest_sample` images at random when larger."""
        sample = _matrix(sample, "site features", 2)
        if sample.shape[1] != self.reference.shape[1]:
            raise ValueError(
                f"features differ in width: reference {self.reference.shape[1]}, "
                f"site {sample.shape[1]}"
            )
        if len(sample) <= self.largest_sample:
            return sample
        chosen = np.random.default_rng(seed).choice(len(sample), self.largest_sample, False)
        return sample[np.sort(chosen)]

    def statistic(self, sample: np.ndarray) -> float:
        """Unbiased MMD^2 of the whole reference and `sample` (as given)."""
        size, rest = len(sample), len(self.reference)
        within = float(self._kernel(sample, sample).sum()) - size  # the diagonal is 1
        across = float(self._kernel(self.reference, sample).sum())
        return (
            within / (size * (size - 1))
            + (self._total - rest) / (rest * (rest - 1))
            - 2.0 * across / (size * rest)
        )

    def null_statistics(self, size: int, draws: int, seed: int) -> np.ndarray:
        """Unbiased MMD^2 of `draws` pseudo-sites of `size` images (whole patients, shuffled,
        the last cut to fit) against the rest of the reference."""
        if not 2 <= size <= self.largest_sample or draws < 1:
            raise ValueError(
                f"size must be in [2, {self.largest_sample}] and draws >= 1, got {size} and {draws}"
            )
        generator = np.random.default_rng(seed)
        members = np.zeros((len(self.reference), draws))
        for column in range(draws):
            taken = 0
            for patient in generator.permutation(len(self._patients)):
                images = self._patients[patient][: size - taken]
                members[images, column] = 1.0
                taken += len(images)
                if taken == size:
                    break
        rest = len(self.reference) - size
        to_site = self._kernel_matrix @ members  # each image's kernel sum over the pseudo-site
        site_site = np.einsum("ij,ij->j", to_site, members)
        site_rest = to_site.sum(axis=0) - site_site
        rest_rest = self._total - 2.0 * site_rest - site_site
        return (
            (site_site - size) / (size * (size - 1))
            + (rest_rest - rest) / (rest * (rest - 1))
            - 2.0 * site_rest / (size * rest)
        )

    def test(self, sample: np.ndarray, draws: int = NULL_DRAWS, seed: int = 0) -> TwoSampleTest:
        """(1 + #{null >= observed}) / (1 + draws), on the usable sample."""
        sample = self.usable(sample, seed)
        observed = self.statistic(sample)
        null = self.null_statistics(len(sample), draws, seed)
        return TwoSampleTest(observed, (1 + int((null >= observed).sum())) / (1 + draws), draws)


def classifier_two_sample_auc(
    reference: np.ndarray,
    sample: np.ndarray,
    folds: int = CROSS_FIT_FOLDS,
    seed: int = 0,
    *,
    reference_groups: np.ndarray | None = None,
    sample_groups: np.ndarray | None = None,
) -> float:
    """How well a logistic regression tells the sample's rows from the reference's, as the ROC
    AUC of its out-of-fold scores (each row scored by a model fitted without it): 0.5 when they
    cannot be told apart, 1.0 when every row can. With patient groups the folds keep a patient's
    images together (a patient's near copies in both the fitting and the scored fold read as a
    difference that is not there); a sample without groups counts each image as a patient."""
    reference = _matrix(reference, "reference features", 2)
    sample = _matrix(sample, "site features", 2)
    features = np.concatenate([reference, sample])
    membership = np.r_[np.zeros(len(reference)), np.ones(len(sample))]
    groups = np.r_[
        _groups(reference_groups, len(reference), 0),
        _groups(sample_groups, len(sample), len(reference)),
    ]
    patients = min(len(np.unique(groups[membership == 0])), len(np.unique(groups[membership == 1])))
    folds = max(2, min(folds, patients))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(
        LogisticRegression(max_iter=2000),
        features,
        membership,
        groups=groups,
        cv=splitter,
        method="predict_proba",
    )[:, 1]
    return float(roc_auc_score(membership, scores))


def _groups(groups: np.ndarray | None, rows: int, offset: int) -> np.ndarray:
    """Group numbers for `rows` images, apart from any other part's (offset); one per image
    without groups."""
    if groups is None:
        return np.arange(rows) + offset
    numbers = np.unique(np.asarray(groups), return_inverse=True)[1]
    if numbers.shape != (rows,):
        raise ValueError(f"expected one patient group per image ({rows}), got {numbers.shape}")
    return numbers + offset + rows  # reference numbers below `rows + offset`, sample's above


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
    reference: np.ndarray,
    groups: np.ndarray | None = None,
    k: int = NEIGHBOURS,
    quantile: float = TYPICAL_QUANTILE,
) -> float:
    """The `quantile` of the reference images' own k-th neighbour distances, leaving out each
    image's own patient (its other images are near copies, nearer than any new patient's): the
    out-of-distribution score's unit, a score over 1 being farther than that."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    reference = _matrix(reference, "reference features", k + 1)
    groups = np.arange(len(reference)) if groups is None else np.asarray(groups)
    if groups.shape != (len(reference),):
        raise ValueError("the reference needs one patient group per image")
    distances = cdist(reference, reference)
    distances[groups[:, None] == groups[None, :]] = np.inf
    # A patient's images leave fewer than k others only in a tiny reference: those rows' k-th
    # distance is infinite and the quantile reads the rest.
    kth = np.partition(distances, k - 1, axis=1)[:, k - 1]
    finite = kth[np.isfinite(kth)]
    if len(finite) == 0:
        raise ValueError(f"the reference has too few patients for {k} neighbours apart")
    return float(np.quantile(finite, quantile))


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


@functools.cache
def detections_needed(positives: int, target: float, confidence: float) -> int | None:
    """The fewest of `positives` caught for the exact lower bound to reach `target`; None when
    even catching all of them does not (fewer than positives_needed). The bound grows with the
    count caught, so a bisection finds it (the new-site protocol asks thousands of times)."""
    if positives < positives_needed(target, confidence):
        return None
    low, high = 1, positives  # the bound holds at `high` (all caught), maybe not at `low`
    while low < high:
        middle = (low + high) // 2
        if sensitivity_lower_bound(middle, positives, confidence) >= target:
            high = middle
        else:
            low = middle + 1
    return low


def guaranteed_threshold(
    labels: np.ndarray, scores: np.ndarray, target: float, confidence: float
) -> GuaranteedThreshold:
    """The highest threshold whose sensitivity on these cases has an exact one-sided lower bound
    of at least `target` at `confidence`. Candidates are the positives' own scores (a call is
    positive at score >= threshold, contracts.labels): the score of the positive of rank
    detections_needed catches at least that many (ties are caught together), and any higher
    one fewer."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be 1-D and alike")
    positive_scores = np.sort(scores[labels])[::-1]
    positives = len(positive_scores)
    needed = detections_needed(positives, target, confidence)
    if needed is None:
        raise TooFewPositives(positives, positives_needed(target, confidence), target, confidence)
    threshold = float(positive_scores[needed - 1])
    caught = int((positive_scores >= threshold).sum())
    return GuaranteedThreshold(
        threshold, caught, positives, sensitivity_lower_bound(caught, positives, confidence)
    )
