"""Building a model's site reference from val (contracts.site_reference): val's patients split in
reference and control parts by a seeded draw, with the model's features and scores of
each image."""

from __future__ import annotations

import numpy as np

from pneumonia.contracts.site_reference import SiteReference, SiteReferenceRecord
from pneumonia.site import statistics

# Val's patients in two parts: the reference with two thirds of its images, the control with the
# rest (contracts.site_reference).
PARTS = ("reference", "control")
SHARES = np.array([2.0, 1.0]) / 3.0


def group_numbers(patients: np.ndarray) -> np.ndarray:
    """Patient ids as numbers 0..P-1 in order of first appearance: which images share a
    patient, without the ids."""
    _, first, inverse = np.unique(np.asarray(patients), return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int64)


def split_reference(
    patients: np.ndarray, seed: int, labels: np.ndarray | None = None
) -> np.ndarray:
    """Each image's part (0 reference, 1 control): whole patients, shuffled with `seed` and
    dealt, class by class (a patient's class: its first image's label), to the part furthest
    below its share (SHARES) of that class's images so far, so that both parts hold val's share
    of pneumonia. Patients with many images are all pneumonia here: a plain split of patients
    gave parts of 74% and 69% pneumonia images, which a check tells apart."""
    groups = group_numbers(patients)
    count = int(groups.max()) + 1 if len(groups) else 0
    if count < len(PARTS):
        raise ValueError(f"val has {count} patient(s): a site reference needs at least 2")
    labels = np.zeros(len(groups), np.int64) if labels is None else np.asarray(labels)
    first = np.unique(groups, return_index=True)[1]
    patient_class = labels[first]
    sizes = np.bincount(groups)
    part_of_patient = np.zeros(count, np.int64)
    generator = np.random.default_rng(seed)
    for value in np.unique(patient_class):
        images = np.zeros(len(PARTS))
        for patient in generator.permutation(np.flatnonzero(patient_class == value)):
            part = int(np.argmin(images / SHARES))
            part_of_patient[patient] = part
            images[part] += sizes[patient]
    return part_of_patient[groups]


def build_site_reference(
    features: np.ndarray,
    scores: np.ndarray,
    patients: np.ndarray,
    *,
    model_sha256: str,
    feature_layers: list[str],
    threshold: float,
    seed: int,
    labels: np.ndarray | None = None,
) -> SiteReference:
    """The reference of one model from its val features, scores, patient ids and (to split val
    with each part's share of pneumonia) labels, with the settings of docs/experiments.md
    (round 5)."""
    features = np.asarray(features, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float64)
    if not len(features) == len(scores) == len(patients):
        raise ValueError(
            f"features ({len(features)}), scores ({len(scores)}) and patients ({len(patients)}) "
            "must describe the same images"
        )
    part = split_reference(patients, seed, labels)
    groups = group_numbers(patients)
    in_reference = part == 0
    # A val split of a few images (a test's tiny dataset) gets fewer neighbours, recorded.
    neighbours = min(statistics.NEIGHBOURS, int(in_reference.sum()) - 1)
    if neighbours < 1:
        raise ValueError(
            f"val's reference part holds {int(in_reference.sum())} image(s): a site reference "
            "needs at least 2"
        )
    standardize = statistics.Standardizer.fit(features[in_reference])
    record = SiteReferenceRecord(
        model_sha256=model_sha256,
        feature_layers=feature_layers,
        threshold=float(threshold),
        neighbours=neighbours,
        typical_distance=statistics.typical_distance(
            standardize(features[in_reference]),
            groups[in_reference],
            neighbours,
            statistics.TYPICAL_QUANTILE,
        ),
        typical_quantile=statistics.TYPICAL_QUANTILE,
        significance=statistics.SIGNIFICANCE,
        null_draws=statistics.NULL_DRAWS,
        seed=seed,
    )
    arrays = {}
    for number, name in enumerate(PARTS):
        chosen = part == number
        arrays[f"{name}_features"] = features[chosen]
        arrays[f"{name}_scores"] = scores[chosen]
        arrays[f"{name}_groups"] = groups[chosen]
    return SiteReference(record, **arrays)
