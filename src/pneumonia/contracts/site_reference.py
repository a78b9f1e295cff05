"""models/site_reference.npz, what a site check compares a new site's images against: the model's
pooled features and scores of val images, written by evaluate for one model file (its sha256)
and logged with the served model.

Val's patients are split in two, each part with val's share of pneumonia images
(site.reference.split_reference): the `reference` part (two thirds of the images) is what every
check and every out-of-distribution score is measured against, and gives the check's null
distribution (statistics.PatientSplitMMDTest); the `control` part (held-out val) only measures
the check's false alarms. Patients are kept as group
numbers (which images share a patient), not as their ids.

One NumPy archive (no pickles): the arrays, and `record`, a JSON string holding the
SiteReferenceRecord below (schema_version, the model, the settings).

Schema versions: 1, the first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from pneumonia.contracts.files import file_sha256, replacing
from pneumonia.contracts.versioning import current_form, validated
from pneumonia.errors import PipelineError

SCHEMA_VERSION = 1
FIX = "re-run the evaluate stage (dvc repro), which writes it for the model it evaluates"
PARTS = ("reference", "control")
ARRAYS = tuple(f"{part}_{name}" for part in PARTS for name in ("features", "scores", "groups"))


class SiteReferenceError(PipelineError, ValueError):
    """The reference statistics are missing, malformed, or belong to another model file."""


class SiteReferenceRecord(BaseModel):
    """The archive's metadata: whose features these are and how a check reads them."""

    model_config = ConfigDict(frozen=True)

    model_sha256: str
    feature_layers: list[str]  # the layers whose outputs are the features, member by member
    threshold: float  # the val-chosen operating threshold, for the share called positive on val
    neighbours: int  # k of the k-th nearest neighbour distance
    typical_distance: float  # the out-of-distribution score's unit (statistics.typical_distance)
    typical_quantile: float
    significance: float  # a site is shifted when the two-sample test's p < this
    null_draws: int  # pseudo-sites split off the reference for a check's p-value
    seed: int
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class SiteReference:
    record: SiteReferenceRecord
    reference_features: np.ndarray  # (n, d) float32
    reference_scores: np.ndarray  # (n,) float64
    reference_groups: np.ndarray  # (n,) int: images with one number share a patient
    control_features: np.ndarray
    control_scores: np.ndarray
    control_groups: np.ndarray

    def __post_init__(self) -> None:
        # The reference needs more images than the neighbour count; the control part may be
        # empty (a tiny val split): it only measures false alarms.
        least = {"reference": self.record.neighbours + 1, "control": 0}
        for part in PARTS:
            features = getattr(self, f"{part}_features")
            rows = len(features)
            if features.ndim != 2 or rows < least[part]:
                raise ValueError(
                    f"{part} features: expected (images, features) with at least "
                    f"{least[part]} images, got {features.shape}"
                )
            if features.shape[1] != self.reference_features.shape[1]:
                raise ValueError(f"{part} and reference features differ in width")
            for name in ("scores", "groups"):
                if getattr(self, f"{part}_{name}").shape != (rows,):
                    raise ValueError(f"{part} {name}: expected {rows} values")

    @property
    def width(self) -> int:
        return int(self.reference_features.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ARRAYS}


def upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    raise SiteReferenceError("no site reference version before 1")  # pragma: no cover


def write_site_reference(path: Path, reference: SiteReference) -> None:
    """The archive, written whole or not at all."""
    record = json.dumps(reference.record.model_dump(mode="json"), sort_keys=True)
    with replacing(path) as partial, partial.open("wb") as handle:
        np.savez_compressed(handle, record=np.array(record), **reference.arrays())


def read_site_reference(path: Path, model_path: Path | None = None) -> SiteReference:
    """The archive at `path`; with `model_path`, refused unless it was written for that very file
    (its sha256)."""
    if not path.is_file():
        raise SiteReferenceError(f"{path}: not found; {FIX}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in (*ARRAYS, "record")}
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise SiteReferenceError(
            f"{path}: not a site reference archive ({type(error).__name__}: {error}); {FIX}"
        ) from error
    try:
        raw = json.loads(str(arrays.pop("record")))
    except ValueError as error:
        raise SiteReferenceError(f"{path}: its record is not JSON ({error}); {FIX}") from error
    if not isinstance(raw, dict):
        raise SiteReferenceError(f"{path}: its record is not a JSON object; {FIX}")
    raw = current_form(raw, path, current=SCHEMA_VERSION, upgrade=upgrade, error=SiteReferenceError)
    record = validated(SiteReferenceRecord, raw, path, SiteReferenceError, FIX)
    types = {"features": np.float32, "scores": np.float64, "groups": np.int64}
    try:
        reference = SiteReference(
            record,
            **{name: arrays[name].astype(types[name.rsplit("_", 1)[1]]) for name in ARRAYS},
        )
    except ValueError as error:
        raise SiteReferenceError(f"{path}: {error}; {FIX}") from error
    if model_path is not None:
        check_reference_model(reference, path, model_path)
    return reference


def check_reference_model(reference: SiteReference, path: Path, model_path: Path) -> None:
    actual = file_sha256(model_path)
    if actual != reference.record.model_sha256:
        raise SiteReferenceError(
            f"{path} was written for a model file with sha256 "
            f"{reference.record.model_sha256[:12]}..., but {model_path} has sha256 "
            f"{actual[:12]}...; {FIX}"
        )
