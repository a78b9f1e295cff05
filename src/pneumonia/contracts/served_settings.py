"""settings.json, the served model's own settings (an artifact of the pyfunc that
inference.serving logs): the threshold and the name of its operating point, the image spec, the
input limits, the positive class and the Keras model it wraps. Evaluate records the file's sha256
in a registry tag (registry_tags.SETTINGS_SHA256), so loading refuses a changed file.

Schema versions (SCHEMA_VERSION, `upgrade`):
- 0: logged before the settings were versioned, no `schema_version` key (and, older still, no
  `limits`: the defaults apply, imaging.transforms.config_from_settings);
- 1: the same keys, plus `schema_version: 1`;
- 2: the same keys, plus `operating_point`, the name of the operating point the threshold is
  (OperatingPoint.name: `val (youden)`, or `site NAME vN` for a version served for one site;
  `val` for a file of version 1, whose threshold evaluate always chose on val).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pneumonia.contracts.files import read_json_object
from pneumonia.contracts.model_reference import ModelReference
from pneumonia.contracts.versioning import SCHEMA_VERSION_KEY, current_form, validated
from pneumonia.errors import PipelineError

SCHEMA_VERSION = 2
# The file's name among the pyfunc's artifacts (MLflow keeps it under artifacts/<name>).
SETTINGS_FILE = "settings.json"
# Where it sits in the served model's folder: MLflow keeps a pyfunc's artifacts under
# artifacts/<file name>.
SETTINGS_ARTIFACT = f"artifacts/{SETTINGS_FILE}"
# The operating point of a file written before the settings named it: evaluate's, on val.
VAL_OPERATING_POINT = "val"
FIX = "re-register the served model with the evaluate stage (dvc repro)"


class ServedSettingsError(PipelineError, ValueError):
    """The served model's settings.json is missing, malformed or newer than this code."""


class ServedSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    threshold: float
    # What each answer names as its operating point (OperatingPoint.name).
    operating_point: str = VAL_OPERATING_POINT
    # The image spec (contracts.image_spec), checked by config_from_settings on load.
    preprocess: Any
    limits: dict[str, int] | None = None
    positive_class: str | None = None
    # The Keras model it wraps, with the sha256 of its file (absent in versions logged before).
    source: ModelReference = Field(default_factory=ModelReference)
    schema_version: int = SCHEMA_VERSION

    def as_json(self) -> dict[str, Any]:
        values = self.model_dump(mode="json", exclude={"source"})
        values["source"] = self.source.as_json()
        return values


def upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """Settings of the version before SCHEMA_VERSION in the next one: 0 -> 1 adds the key only,
    1 -> 2 the operating point's name (evaluate's, chosen on val)."""
    version = raw.get(SCHEMA_VERSION_KEY, 0)
    upgraded = {**raw, SCHEMA_VERSION_KEY: version + 1}
    if version == 1:
        upgraded.setdefault("operating_point", VAL_OPERATING_POINT)
    return upgraded


def write_served_settings(path: Path, settings: ServedSettings) -> None:
    """Written plainly (not through files.replacing): the file is built in a scratch folder and
    logged to MLflow, whose store holds the bytes the registry's sha256 tag records."""
    path.write_text(json.dumps(settings.as_json(), indent=2, sort_keys=True) + "\n")


def read_served_settings(path: Path) -> ServedSettings:
    raw = read_json_object(path, ServedSettingsError, missing=FIX, fix=FIX)
    raw = current_form(
        raw, path, current=SCHEMA_VERSION, upgrade=upgrade, error=ServedSettingsError
    )
    return validated(ServedSettings, raw, path, ServedSettingsError, FIX)
