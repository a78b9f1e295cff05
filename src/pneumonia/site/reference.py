"""Building a model's site reference from val (contracts.site_reference): val's patients split in
a reference half and a control half by a seeded draw, with the model's features and scores of
each image."""

from __future__ import annotations

import numpy as np

from pneumonia.contracts.site_reference import SiteReference, SiteReferenceRecord
from pneumonia.site import statistics

# The share of val's patients in the reference part; the rest is the control (held-out val).
REFERENCE_SHARE = 0.5


def group_numbers(patients: np.ndarray) -> np.ndarray:
    """Patient ids as numbers 0..P-1 in order of first appearance: which images share a
    patient, without the ids."""
    _, first, inverse = np.unique(np.asarray(patients), return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int64)


def split_reference(patients: np.ndarray, seed: int) -> np.ndarray:
    """True for the images of the reference part: REFERENCE_SHARE of the patients, drawn with
    `seed`; a patient's images are all in one part."""
    groups = group_numbers(patients)
    count = int(groups.max()) + 1 if len(groups) else 0
    if count < 2:
        raise ValueError(f"val has {count} patient(s): a site reference needs at least 2")
    chosen = np.random.default_rng(seed).permutation(count)[
        : max(1, round(count * REFERENCE_SHARE))
    ]
    return np.isin(groups, chosen)


def build_site_reference(
    features: np.ndarray,
    scores: np.ndarray,
    patients: np.ndarray,
    *,
    model_sha256: str,
    feature_layers: list[str],
    threshold: float,
    seed: int,
) -> SiteReference:
    """The reference of one model from its val features, scores and patient ids, with the
    settings of docs/experiments.md (round 5)."""
    features = np.asarray(features, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float64)
    if not len(features) == len(scores) == len(patients):
        raise ValueError(
            f"features ({len(features)}), scores ({len(scores)}) and patients ({len(patients)}) "
            "must describe the same images"
        )
    in_reference = split_reference(patients, seed)
    groups = group_numbers(patients)
    standardize = statistics.Standardizer.fit(features[in_reference])
    record = SiteReferenceRecord(
        model_sha256=model_sha256,
        feature_layers=feature_layers,
        threshold=float(threshold),
        neighbours=statistics.NEIGHBOURS,
        typical_distance=statistics.typical_distance(
            standardize(features[in_reference]),
            statistics.NEIGHBOURS,
            statistics.TYPICAL_QUANTILE,
        ),
        typical_quantile=statistics.TYPICAL_QUANTILE,
        significance=statistics.SIGNIFICANCE,
        permutations=statistics.PERMUTATIONS,
        seed=seed,
    )
    return SiteReference(
        record,
        reference_features=features[in_reference],
        reference_scores=scores[in_reference],
        reference_groups=groups[in_reference],
        control_features=features[~in_reference],
        control_scores=scores[~in_reference],
        control_groups=groups[~in_reference],
    )
