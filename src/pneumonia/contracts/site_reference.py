"""models/site_reference.npz, what a site check compares a new site's images against: the model's
pooled features and scores of val images, written by evaluate for one model file (its sha256)
and logged with the served model.

Val's patients are split in two (site.reference.split_reference): the `reference` part is what
every check and every out-of-distribution score is measured against; the `control` part
(held-out val) only measures the check's false alarms. Patients are kept as group numbers
(which images share a patient), not as their ids.

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
ARRAYS = (
    "reference_features",
    "reference_scores",
    "reference_groups",
    "control_features",
    "control_scores",
    "control_groups",
)


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
    permutations: int
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
        for part in ("reference", "control"):
            features = getattr(self, f"{part}_features")
            rows = len(features)
            if features.ndim != 2 or rows < self.record.neighbours + 1:
                raise ValueError(
                    f"{part} features: expected (images, features) with more than "
                    f"{self.record.neighbours} images, got {features.shape}"
                )
            for name in ("scores", "groups"):
                if getattr(self, f"{part}_{name}").shape != (rows,):
                    raise ValueError(f"{part} {name}: expected {rows} values")
        if self.control_features.shape[1] != self.reference_features.shape[1]:
            raise ValueError("reference and control features differ in width")

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
    try:
        reference = SiteReference(
            record,
            reference_features=arrays["reference_features"].astype(np.float32),
            reference_scores=arrays["reference_scores"].astype(np.float64),
            reference_groups=arrays["reference_groups"].astype(np.int64),
            control_features=arrays["control_features"].astype(np.float32),
            control_scores=arrays["control_scores"].astype(np.float64),
            control_groups=arrays["control_groups"].astype(np.int64),
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
