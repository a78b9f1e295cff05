"""models/threshold.json, the operating point: the threshold evaluate chose on val for one model,
read by predict (a model file) and recorded in the served model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumonia.contracts.files import file_sha256, read_json_object, write_json
from pneumonia.contracts.model_card import MODEL_KEYS, registered_model
from pneumonia.errors import PipelineError

# The key of the operating point's `model` block that names the model file by content.
MODEL_SHA256 = "sha256"


class OperatingPointError(PipelineError, ValueError):
    """The operating point is missing, malformed, or belongs to another model."""


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    # MODEL_KEYS of the evaluated model, and MODEL_SHA256: its file's content hash
    model: dict[str, Any] = field(default_factory=dict)
    rule: str | None = None
    val_sensitivity: float | None = None
    val_specificity: float | None = None
    evaluate_run_id: str | None = None
    serving_model: dict[str, Any] | None = None  # the served model registered with it
    chosen_on: str = "val"

    def as_json(self) -> dict[str, Any]:
        values = {
            "threshold": self.threshold,
            "rule": self.rule,
            "chosen_on": self.chosen_on,
            "val_sensitivity": self.val_sensitivity,
            "val_specificity": self.val_specificity,
            "model": self.model,
            "evaluate_run_id": self.evaluate_run_id,
        }
        if self.serving_model is not None:
            values["serving_model"] = self.serving_model
        return values


def write_operating_point(path: Path, point: OperatingPoint) -> None:
    write_json(path, point.as_json())


def read_operating_point(path: Path) -> OperatingPoint:
    data = read_json_object(
        path,
        OperatingPointError,
        missing="the evaluate stage chooses the threshold: run dvc repro, or pass --threshold",
        fix="re-run the evaluate stage",
    )
    threshold = data.get("threshold")
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not math.isfinite(threshold)
    ):
        raise OperatingPointError(f"{path}: no numeric 'threshold'; re-run the evaluate stage")
    known = {name for name in OperatingPoint.__dataclass_fields__ if name != "threshold"}
    return OperatingPoint(
        threshold=float(threshold),
        **{key: value for key, value in data.items() if key in known and value is not None},
    )


def check_model_file(point: OperatingPoint, model_path: Path, point_path: Path) -> None:
    """The operating point must name this very file by its content hash: a threshold applies to
    the weights it was chosen for, not to whatever .keras file sits beside it."""
    named = (point.model or {}).get(MODEL_SHA256)
    if not named:
        raise OperatingPointError(
            f"{point_path} does not name the model file it was chosen for (no "
            f"model.{MODEL_SHA256}); re-run the evaluate stage (dvc repro), or pass --threshold"
        )
    actual = file_sha256(model_path)
    if actual != named:
        raise OperatingPointError(
            f"{point_path} was chosen for a model file with sha256 {named[:12]}..., but "
            f"{model_path} has sha256 {actual[:12]}...; run the evaluate stage (dvc repro) for "
            "this model, or pass --threshold"
        )


def check_same_model(
    card: dict[str, Any], point: OperatingPoint, card_path: Path, point_path: Path
) -> None:
    """The operating point must have been chosen for the carded model: after a re-train without
    evaluate, the old threshold belongs to the old model."""
    trained, evaluated = registered_model(card), point.model or {}
    for key in MODEL_KEYS[1:]:
        ours, theirs = trained.get(key), evaluated.get(key)
        if ours and theirs and str(ours) != str(theirs):
            raise OperatingPointError(
                f"{point_path} was chosen for model {key} {theirs} but {card_path} is {key} "
                f"{ours}; run the evaluate stage (dvc repro) or pass --threshold"
            )
