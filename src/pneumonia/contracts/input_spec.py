"""input_spec.json, written beside every exported model (`pneumonia export`): what the exported
graph takes, how an image becomes that input, and what its output means, for someone who runs
the model without this project (another language, another runtime).

Modelled on a MONAI bundle's `network_data_format` (inputs, outputs, their dtype, shape and
value range), plus the ordered preprocessing steps with every parameter a port needs to give
bit-identical input: export/reference_preprocessing.py is those steps in NumPy and OpenCV.

Schema versions (INPUT_SPEC_VERSION):
- 1: the first; input, preprocessing (decode, resize, clahe), output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from pneumonia.contracts.files import read_json_object, write_json
from pneumonia.contracts.image_spec import ImageSpec
from pneumonia.contracts.labels import NEGATIVE_CLASS, POSITIVE_CLASS
from pneumonia.contracts.versioning import SCHEMA_VERSION_KEY, current_form, validated
from pneumonia.errors import PipelineError

INPUT_SPEC_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAME = "score"
FIX = "re-export the model (pneumonia export)"
# The one interpolation the project resizes with (imaging.transforms._resize).
INTERPOLATION = "area"
OPENCV_INTERPOLATION = "cv2.INTER_AREA"


class InputSpecError(PipelineError, ValueError):
    """input_spec.json is missing, malformed or newer than this code; the message names it."""


class TensorSpec(BaseModel):
    """One tensor of the exported graph; None in `shape` is any size (the batch)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    dtype: str
    shape: list[int | None]
    layout: str | None = None
    channels: int | None = None
    color: str | None = None
    value_range: list[float] | None = None
    note: str | None = None


class PreprocessingStep(BaseModel):
    """One step of turning an image file into the input, in order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: str
    description: str
    params: dict[str, Any]


class OutputSpec(TensorSpec):
    meaning: str
    label_rule: str
    labels: list[str]
    threshold: float | None
    operating_point: str | None


class InputSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    input: TensorSpec
    preprocessing: list[PreprocessingStep]
    output: OutputSpec
    image_spec: ImageSpec  # the model card's record of the same settings, for cross-checks
    schema_version: int = INPUT_SPEC_VERSION

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def step(self, name: str) -> PreprocessingStep:
        """The preprocessing step called `name` (decode, resize, clahe)."""
        for step in self.preprocessing:
            if step.step == name:
                return step
        raise KeyError(name)

    def summary(self) -> list[str]:
        """The spec in a few human-readable lines (what `pneumonia export` prints)."""
        size = self.image_spec.image_size
        resize, clahe = self.step("resize").params, self.step("clahe").params
        contrast = (
            f"CLAHE clip {clahe['clip_limit']:g}, tiles {clahe['tile_grid'][0]}x"
            f"{clahe['tile_grid'][1]} on the content"
            if clahe["enabled"]
            else "no CLAHE"
        )
        threshold = self.output.threshold
        point = (
            f"{self.output.label_rule} (threshold {threshold:.4f}, {self.output.operating_point})"
            if threshold is not None
            else "no threshold recorded: choose one on your own labeled images"
        )
        return [
            f"input   {self.input.name}: {self.input.dtype} {_shape(self.input.shape)} "
            f"{self.input.layout}, grey 0..255 (normalisation is inside the model)",
            f"prepare decode to 8-bit grey; {resize['mode']} to {size}x{size} "
            f"({OPENCV_INTERPOLATION}); {contrast}",
            f"output  {self.output.name}: {self.output.dtype} {_shape(self.output.shape)}, "
            "higher is more likely pneumonia (not a calibrated probability)",
            f"label   {point}",
        ]


def _shape(shape: list[int | None]) -> str:
    return "(" + ", ".join("N" if side is None else str(side) for side in shape) + ")"


def _decode_step() -> PreprocessingStep:
    # What imaging.decode.load_grayscale does, stated so that another decoder can match it.
    return PreprocessingStep(
        step="decode",
        description="decode the file to one 8-bit grey channel, (H, W) uint8",
        params={
            "formats": ["JPEG", "PNG", "DICOM"],
            "exif_orientation": "applied (the EXIF Orientation tag is undone before anything)",
            "grey_8bit": "kept as is",
            "png_16bit": "v * 255 / 65535, rounded half up: (v * 255 + 32767) // 65535",
            "colour_to_grey": "ITU-R 601-2 luma, L = R * 299/1000 + G * 587/1000 + B * 114/1000 "
            "(Pillow's convert('L')); alpha is ignored, a palette is expanded first",
            "jpeg_scale": "a JPEG may be decoded at the smallest DCT scale (1, 1/2, 1/4, 1/8) "
            "whose size still covers the resize's output (libjpeg's scaled decoding, Pillow's "
            "draft mode): a full-size decode differs by a grey level or so after the resize",
            "dicom": "modality LUT (x = stored * RescaleSlope + RescaleIntercept, or the "
            "Modality LUT Sequence), then the VOI LUT Sequence (its output scaled by 255 / "
            "(2**bits - 1)), else the first WindowCenter c / WindowWidth w pair by "
            "VOILUTFunction (PS3.3 C.11.2.1.2, to 0..255): LINEAR ((x - (c - 0.5)) / (w - 1) + "
            "0.5) * 255, LINEAR_EXACT ((x - c) / w + 0.5) * 255, both clipped, SIGMOID 255 / (1 + "
            "exp(-4 (x - c) / w)); else (x - low) * 255 / (high - low) over the range the "
            "stored bits can hold through the same rescale; rounded half to even (numpy.rint) "
            "and clipped to 0..255; MONOCHROME1 then inverted (255 - v); colour as above",
        },
    )


def _resize_step(spec: ImageSpec) -> PreprocessingStep:
    size = spec.image_size
    modes = {
        "letterbox": "longest side to S, aspect kept: content w' = round(w * (S / max(w, h))), "
        "h' the same, each clamped to [1, S] (round half to even, float64 arithmetic); "
        "centred in an S x S frame at top = floor((S - h') / 2), left = floor((S - w') / 2); "
        "the bars are 0 and are added after CLAHE",
        "stretch": "both sides to S, aspect not kept",
        "crop": "the centred square of side min(w, h) (top = floor((h - side) / 2), "
        "left = floor((w - side) / 2)), resized to S x S",
    }
    return PreprocessingStep(
        step="resize",
        description=f"resize to {size} x {size} ({spec.resize})",
        params={
            "mode": spec.resize,
            "size": size,
            "interpolation": INTERPOLATION,
            "opencv": OPENCV_INTERPOLATION,
            "rule": modes.get(spec.resize, spec.resize),
            "bar_value": 0,
        },
    )


def _clahe_step(spec: ImageSpec) -> PreprocessingStep:
    return PreprocessingStep(
        step="clahe",
        description="contrast-limited adaptive histogram equalisation (OpenCV's createCLAHE), "
        "on the resized content only, before the letterbox bars are added"
        if spec.clahe
        else "none: CLAHE is off for this model",
        params={
            "enabled": spec.clahe,
            "clip_limit": spec.clahe_clip_limit,
            "tile_grid": [spec.clahe_tile_grid, spec.clahe_tile_grid],
            "applied_to": "content",
        },
    )


def input_spec_of(
    spec: ImageSpec, *, threshold: float | None, operating_point: str | None
) -> InputSpec:
    """The input spec of a model trained on `spec`, labeled at `threshold` (the operating point
    `operating_point` names; None when the model has none)."""
    size = spec.image_size
    return InputSpec(
        input=TensorSpec(
            name=INPUT_NAME,
            dtype="uint8",
            shape=[None, size, size, 1],
            layout="NHWC",
            channels=1,
            color="grey",
            value_range=[0, 255],
            note="the preprocessed pixels as they are: normalisation is inside the model",
        ),
        preprocessing=[_decode_step(), _resize_step(spec), _clahe_step(spec)],
        output=OutputSpec(
            name=OUTPUT_NAME,
            dtype="float32",
            shape=[None, 1],
            value_range=[0, 1],
            meaning="score in [0, 1], higher is more likely pneumonia; not a calibrated "
            "probability; comparable only within one model version",
            label_rule=f"{POSITIVE_CLASS} if score >= threshold else {NEGATIVE_CLASS}",
            labels=[NEGATIVE_CLASS, POSITIVE_CLASS],
            threshold=threshold,
            operating_point=operating_point,
        ),
        image_spec=spec,
    )


def write_input_spec(path: Path, spec: InputSpec) -> None:
    write_json(path, spec.as_json())


def read_input_spec(path: Path) -> InputSpec:
    raw = read_json_object(
        path, InputSpecError, missing="pneumonia export writes it beside the model", fix=FIX
    )
    if SCHEMA_VERSION_KEY not in raw:  # every input spec was versioned: no version 0
        raise InputSpecError(f"{path}: no {SCHEMA_VERSION_KEY}; {FIX}")

    def no_older_version(old: dict[str, Any]) -> dict[str, Any]:
        # Version 1 is the first: nothing before it to upgrade.
        raise InputSpecError(
            f"{path}: {SCHEMA_VERSION_KEY} {old[SCHEMA_VERSION_KEY]} is older than the first "
            f"({INPUT_SPEC_VERSION}); {FIX}"
        )

    raw = current_form(
        raw, path, current=INPUT_SPEC_VERSION, upgrade=no_older_version, error=InputSpecError
    )
    return validated(InputSpec, raw, path, InputSpecError, FIX)
