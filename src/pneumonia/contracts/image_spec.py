"""The image spec: what the model's input depends on (size, resize, CLAHE and its settings), as
the model card's `preprocess` section and the served model's settings record it. Its values are
checked against params.yaml's rules by imaging.transforms.config_from_settings when a model is
loaded (the one parser of the spec, which names the file); this record is the one writer."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

# The preprocess settings that change the pixels a model sees.
IMAGE_SPEC_KEYS = ("image_size", "resize", "clahe", "clahe_clip_limit", "clahe_tile_grid")


class ImageSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int
    resize: str
    clahe: bool
    clahe_clip_limit: float
    clahe_tile_grid: int

    @classmethod
    def of(cls, settings: Any) -> ImageSpec:
        """The spec of a preprocess config (or a mapping holding at least IMAGE_SPEC_KEYS)."""
        values = settings if isinstance(settings, dict) else settings.model_dump()
        return cls(**{key: values[key] for key in IMAGE_SPEC_KEYS})

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
