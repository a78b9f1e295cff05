"""The site check: do a site's images differ from the model's val reference? A two-sample test
with its p-value and a readable effect size, how the share called positive moved, and the most
atypical images. Per-image out-of-distribution scores for predict and serving come from here
too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pneumonia.contracts.labels import is_positive
from pneumonia.contracts.site_reference import SiteReference
from pneumonia.site import statistics

# What a row far outside the reference says (predict's and the served model's `flag`).
OUT_OF_DISTRIBUTION = "out-of-distribution"
# The fewest images a site check reads: fewer say nothing about a population.
MINIMUM_IMAGES = 10
# The atypical images a report lists.
ATYPICAL_LISTED = 10


class OutOfDistribution:
    """Per-image out-of-distribution scores against one reference: the k-th nearest reference
    image's distance in standardized features, in units of the reference's own 99th
    percentile (a score over 1 is flagged)."""

    def __init__(self, reference: SiteReference):
        self.reference = reference
        self.standardize = statistics.Standardizer.fit(reference.reference_features)
        self.standardized_reference = self.standardize(reference.reference_features)

    def scores(self, features: np.ndarray) -> np.ndarray:
        if len(features) == 0:
            return np.zeros(0)
        distances = statistics.kth_neighbour_distances(
            self.standardized_reference,
            self.standardize(features),
            self.reference.record.neighbours,
        )
        return distances / self.reference.record.typical_distance

    @staticmethod
    def flag(score: float) -> str | None:
        return OUT_OF_DISTRIBUTION if score > 1.0 else None


@dataclass(frozen=True)
class SiteCheck:
    n_images: int
    p_value: float
    shifted: bool
    classifier_auc: float  # the effect size: 0.5 = the images cannot be told from val's
    statistic: float
    positive_share: float  # called positive here, at the model's val-chosen threshold
    reference_positive_share: float  # the same on the val reference images
    threshold: float
    out_of_distribution: int  # images with an out-of-distribution score over 1
    atypical: list[dict[str, Any]]  # the highest out-of-distribution scores, highest first

    def as_json(self) -> dict[str, Any]:
        return {
            "shifted": self.shifted,
            "p_value": self.p_value,
            "n_images": self.n_images,
            "classifier_auc": self.classifier_auc,
            "mmd_statistic": self.statistic,
            "positive_share": self.positive_share,
            "reference_positive_share": self.reference_positive_share,
            "threshold": self.threshold,
            "out_of_distribution": self.out_of_distribution,
            "atypical": self.atypical,
        }

    def sentence(self) -> str:
        """The finding in words, for a person."""
        verdict = "differ from" if self.shifted else "are not shown to differ from"
        return (
            f"{self.n_images} images {verdict} the model's validation images (MMD test p = "
            f"{self.p_value:.3g}); a classifier tells them apart with ROC AUC "
            f"{self.classifier_auc:.2f} (0.5 = indistinguishable). Called pneumonia at the "
            f"val-chosen threshold {self.threshold:.4f}: {self.positive_share:.0%} here against "
            f"{self.reference_positive_share:.0%} of the val images; {self.out_of_distribution} "
            "image(s) flagged out-of-distribution."
        )


def two_sample_test(
    reference: SiteReference, detector: OutOfDistribution | None = None
) -> statistics.PatientSplitMMDTest:
    """The reference's test, in the reference part's standardized features (build it once to
    check many samples)."""
    detector = detector or OutOfDistribution(reference)
    return statistics.PatientSplitMMDTest(
        detector.standardized_reference, reference.reference_groups
    )


def check_site(
    reference: SiteReference,
    features: np.ndarray,
    scores: np.ndarray,
    names: list[str] | None = None,
    *,
    seed: int | None = None,
    groups: np.ndarray | None = None,
) -> SiteCheck:
    """Compare a site's images (their features and scores) with the reference part. `groups`
    (which images share a patient, when known) keeps a patient's images in one fold of the
    classifier two-sample test; without them each image counts as a patient, and a site
    patient's near copies raise its ROC AUC a little above 0.5."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) < MINIMUM_IMAGES:
        raise ValueError(
            f"{len(features)} readable image(s): a site check needs at least {MINIMUM_IMAGES}"
        )
    names = names if names is not None else [str(index) for index in range(len(features))]
    record = reference.record
    seed = record.seed if seed is None else seed
    detector = OutOfDistribution(reference)
    standardized = detector.standardize(features)
    test = two_sample_test(reference, detector).test(standardized, record.null_draws, seed)
    auc = statistics.classifier_two_sample_auc(
        detector.standardized_reference,
        standardized,
        seed=seed,
        reference_groups=reference.reference_groups,
        sample_groups=groups,
    )
    ood = detector.scores(features)
    order = np.argsort(-ood, kind="stable")[:ATYPICAL_LISTED]
    return SiteCheck(
        n_images=len(features),
        p_value=test.p_value,
        shifted=bool(test.p_value < record.significance),
        classifier_auc=auc,
        statistic=test.statistic,
        positive_share=float(is_positive(scores, record.threshold).mean()),
        reference_positive_share=float(
            is_positive(reference.reference_scores, record.threshold).mean()
        ),
        threshold=record.threshold,
        out_of_distribution=int((ood > 1.0).sum()),
        atypical=[
            {"path": names[index], "ood_score": float(ood[index]), "score": float(scores[index])}
            for index in order
        ],
    )
