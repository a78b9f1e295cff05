"""A model reference: which registered model version (name, version, LoggedModel id) and, where
it names a file, the sha256 of that file's bytes. The operating point's `model` block and the
served model's `source` block are one (inference.serving, contracts.served_settings)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

# The keys of a reference that name the registered Keras model version.
MODEL_KEYS = ("registered_model", "version", "model_id")
# The key of a reference that names the model file by content (not the registry tag of the same
# fact, registry_tags.MODEL_FILE_SHA256_TAG).
REFERENCE_SHA256 = "sha256"


class ModelReference(BaseModel):
    """Every field may be absent: an operating point written for a bare .keras file (benchmarks)
    names no registry version. Written without the absent ones, as before."""

    model_config = ConfigDict(frozen=True, extra="allow")

    registered_model: str | None = None
    version: str | None = None
    model_id: str | None = None
    sha256: str | None = None

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
