"""The image spec: what the model's input depends on (size, resize, CLAHE and its settings), as
the model card's `preprocess` section and the served model's settings record it. Its values are
checked against params.yaml's rules by imaging.transforms.config_from_settings when a model is
loaded (the one parser of the spec, which names the file); this record is the one writer.

params.yaml holds the same facts as `preprocess.image` (size, resize, clahe, ...): the record
keeps its first key names (`image_size` for the size) so every card and served model logged
before reads unchanged; `of` and `section_of` are the one mapping between the two."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

# The preprocess settings that change the pixels a model sees.
IMAGE_SPEC_KEYS = ("image_size", "resize", "clahe", "clahe_clip_limit", "clahe_tile_grid")
# The size's name in params.yaml's `preprocess.image`; the other keys are the same there.
SECTION_SIZE_KEY = "size"


class ImageSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int
    resize: str
    clahe: bool
    clahe_clip_limit: float
    clahe_tile_grid: int

    @classmethod
    def of(cls, settings: Any) -> ImageSpec:
        """The spec of params.yaml's `preprocess.image` (config.ImageInput), or of a mapping
        holding at least IMAGE_SPEC_KEYS (a recorded spec)."""
        if isinstance(settings, dict):
            return cls(**{key: settings[key] for key in IMAGE_SPEC_KEYS})
        values = settings.model_dump()
        return cls(image_size=values.pop(SECTION_SIZE_KEY), **values)

    @staticmethod
    def section_of(settings: dict[str, Any]) -> dict[str, Any]:
        """A recorded spec (IMAGE_SPEC_KEYS) as params.yaml's `preprocess.image` mapping, values
        and any unknown key untouched, so that validation sees what the file holds."""
        section = {key: value for key, value in settings.items() if key != "image_size"}
        return {SECTION_SIZE_KEY: settings["image_size"], **section}

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
