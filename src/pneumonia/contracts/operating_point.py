"""models/threshold.json, the operating point: the threshold evaluate chose on val for one model,
read by predict (a model file) and recorded in the served model.

Schema versions (SCHEMA_VERSION, `upgrade`):
- 0: written before operating points were versioned, no `schema_version` key;
- 1: the same keys, plus `schema_version: 1`, and an optional `site` (absent: the dataset's own
  val split);
- 2: the same keys, plus the optional `calibration` (SiteCalibration) and `version` of an
  operating point chosen on a site's own labeled cases (`chosen_on: site`, site.points).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pneumonia.contracts.files import file_sha256, read_json_object, write_json
from pneumonia.contracts.model_card import ModelCard
from pneumonia.contracts.model_reference import MODEL_KEYS, REFERENCE_SHA256, ModelReference
from pneumonia.contracts.versioning import SCHEMA_VERSION_KEY, current_form, validated
from pneumonia.errors import PipelineError

SCHEMA_VERSION = 2
FIX = "re-run the evaluate stage"


class OperatingPointError(PipelineError, ValueError):
    """The operating point is missing, malformed, or belongs to another model."""


class Interval(BaseModel):
    model_config = ConfigDict(frozen=True)

    value: float
    low: float
    high: float


class SiteCalibration(BaseModel):
    """How a site's threshold was chosen, on which cases, and what it measured on them."""

    model_config = ConfigDict(frozen=True)

    rule: str
    target_sensitivity: float
    confidence: float
    positives: int  # pneumonia images of the calibration cases
    negatives: int
    detected: int  # of the positives, called pneumonia at the threshold
    sensitivity_lower_bound: float  # one-sided, at `confidence`
    # Measured on the calibration cases themselves, with two-sided exact intervals at
    # `confidence`: the cases chose the threshold, so these are in-sample figures.
    sensitivity: Interval
    specificity: Interval
    folder: str
    created: str  # UTC, ISO 8601


class OperatingPoint(BaseModel):
    model_config = ConfigDict(frozen=True)

    threshold: float
    # The evaluated model, with REFERENCE_SHA256: its file's content hash.
    model: ModelReference = Field(default_factory=ModelReference)
    rule: str | None = None
    val_sensitivity: float | None = None
    val_specificity: float | None = None
    evaluate_run_id: str | None = None
    serving_model: dict[str, Any] | None = None  # the served model registered with it
    chosen_on: str = "val"
    site: str | None = None
    version: int | None = None  # a site point's version (site.points): never overwritten
    calibration: SiteCalibration | None = None
    schema_version: int = SCHEMA_VERSION

    def as_json(self) -> dict[str, Any]:
        """The file's keys: those of before, `schema_version`, and `serving_model`, `site`,
        `version` and `calibration` only when set."""
        optional_keys = ("serving_model", "site", "version", "calibration")
        values = self.model_dump(mode="json", exclude={"model", *optional_keys})
        values["model"] = self.model.as_json()
        for optional in optional_keys:
            if getattr(self, optional) is not None:
                values[optional] = self.model_dump(mode="json", include={optional})[optional]
        return values

    @property
    def name(self) -> str:
        """What an output row says it was called at: `val (youden)`, `site <name> v<n>`."""
        if self.site is None:
            return f"{self.chosen_on} ({self.rule})" if self.rule else self.chosen_on
        return f"site {self.site} v{self.version}"


def upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """An operating point of the version before SCHEMA_VERSION in the next one: 0 -> 1 and
    1 -> 2 add the key only (no site: the dataset's own val split)."""
    return {**raw, SCHEMA_VERSION_KEY: raw.get(SCHEMA_VERSION_KEY, 0) + 1}


def write_operating_point(path: Path, point: OperatingPoint) -> None:
    write_json(path, point.as_json())


def read_operating_point(path: Path) -> OperatingPoint:
    raw = read_json_object(
        path,
        OperatingPointError,
        missing="the evaluate stage chooses the threshold: run dvc repro, or pass --threshold",
        fix=FIX,
    )
    threshold = raw.get("threshold")
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not math.isfinite(threshold)
    ):
        raise OperatingPointError(f"{path}: no numeric 'threshold'; {FIX}")
    raw = current_form(
        raw, path, current=SCHEMA_VERSION, upgrade=upgrade, error=OperatingPointError
    )
    # null optional values read as absent, as they always have.
    known = {key: value for key, value in raw.items() if key in OperatingPoint.model_fields}
    return validated(
        OperatingPoint,
        {key: value for key, value in known.items() if value is not None},
        path,
        OperatingPointError,
        FIX,
    )


def check_model_file(point: OperatingPoint, model_path: Path, point_path: Path) -> None:
    """The operating point must name this very file by its content hash: a threshold applies to
    the weights it was chosen for, not to whatever .keras file sits beside it."""
    named = point.model.sha256
    if not named:
        raise OperatingPointError(
            f"{point_path} does not name the model file it was chosen for (no "
            f"model.{REFERENCE_SHA256}); re-run the evaluate stage (dvc repro), or pass --threshold"
        )
    actual = file_sha256(model_path)
    if actual != named:
        raise OperatingPointError(
            f"{point_path} was chosen for a model file with sha256 {named[:12]}..., but "
            f"{model_path} has sha256 {actual[:12]}...; run the evaluate stage (dvc repro) for "
            "this model, or pass --threshold"
        )


def check_same_model(
    card: ModelCard, point: OperatingPoint, card_path: Path, point_path: Path
) -> None:
    """The operating point must have been chosen for the carded model: after a re-train without
    evaluate, the old threshold belongs to the old model."""
    trained, evaluated = card.registered_model(), point.model.as_json()
    for key in MODEL_KEYS[1:]:
        ours, theirs = trained.get(key), evaluated.get(key)
        if ours and theirs and str(ours) != str(theirs):
            raise OperatingPointError(
                f"{point_path} was chosen for model {key} {theirs} but {card_path} is {key} "
                f"{ours}; run the evaluate stage (dvc repro) or pass --threshold"
            )
