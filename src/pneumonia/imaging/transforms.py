"""One image to the model's input: grayscale, resize (letterbox | stretch | crop), optional CLAHE.

Shared by the preprocess stage, the acquisition-shift check and inference, so training and
serving preprocess an image with the same code.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from pneumonia.config import (
    DEFAULT_LIMITS,
    ConfigError,
    ImageInput,
    InputLimits,
    PreprocessConfig,
)
from pneumonia.contracts.image_spec import IMAGE_SPEC_KEYS, ImageSpec
from pneumonia.errors import PipelineError
from pneumonia.imaging.decode import ImageDecodeError, file_size_problem, load_image
from pneumonia.imaging.dicom import DicomInfo


class PreprocessSettingsError(PipelineError, ValueError):
    """A model's recorded preprocess settings are missing or invalid; the message names where."""


def _resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    # Area averaging is the right filter for the downscales that dominate here, and fast.
    return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)


def resize_gray(image: Image.Image, size: int, mode: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Resized content, and where it sits in the size x size frame (top, left) for letterbox."""
    pixels = np.asarray(image)
    height, width = pixels.shape
    if mode == "stretch":
        return _resize(pixels, size, size), (0, 0)
    if mode == "letterbox":
        scale = size / max(width, height)
        new_width = min(size, max(1, round(width * scale)))
        new_height = min(size, max(1, round(height * scale)))
        return _resize(pixels, new_width, new_height), (
            (size - new_height) // 2,
            (size - new_width) // 2,
        )
    if mode == "crop":
        side = min(width, height)
        top, left = (height - side) // 2, (width - side) // 2
        return _resize(pixels[top : top + side, left : left + side], size, size), (0, 0)
    raise ValueError(f"preprocess.image.resize must be letterbox, stretch or crop, got {mode!r}")


def apply_clahe(pixels: np.ndarray, clip_limit: float, tile_grid: int) -> np.ndarray:
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid))
    return clahe.apply(np.ascontiguousarray(pixels))


def preprocess_image(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """One grayscale image -> (S, S) uint8. CLAHE sees the content only, not the letterbox bars."""
    spec = config.image
    content, (top, left) = resize_gray(image, spec.size, spec.resize)
    if spec.clahe:
        content = apply_clahe(content, spec.clahe_clip_limit, spec.clahe_tile_grid)
    if content.shape == (spec.size, spec.size):
        return np.ascontiguousarray(content, dtype=np.uint8)
    frame = np.zeros((spec.size, spec.size), dtype=np.uint8)
    frame[top : top + content.shape[0], left : left + content.shape[1]] = content
    return frame


def preprocess_source(
    source: Path | bytes, config: PreprocessConfig, name: str, check_xray: bool = False
) -> tuple[np.ndarray, DicomInfo | None]:
    """Decode (at reduced JPEG scale where it still covers the output) and preprocess one file,
    or an encoded image held in memory (what the served model receives), within the config's
    input limits: JPEG, PNG or DICOM alike, with a DICOM file's modality, view and warnings.
    A file and its bytes give identical pixels. `check_xray` (inference) also refuses an image
    too small or too flat to be a chest X-ray."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        problem = file_size_problem(len(data), config.limits.max_file_bytes)
        if problem is not None:
            raise ImageDecodeError(f"{name}: {problem}")
        opened: Path | io.BytesIO = io.BytesIO(data)
    else:
        opened = source
    image, info = load_image(
        opened,
        target=config.image.size,
        resize=config.image.resize,
        name=name,
        max_pixels=config.limits.max_pixels,
        max_file_bytes=config.limits.max_file_bytes,
        check_xray=check_xray,
    )
    return preprocess_image(image, config), info


def preprocess_file(
    path: str | Path, config: PreprocessConfig, check_xray: bool = False
) -> np.ndarray:
    """preprocess_source of one file, the pixels alone."""
    return preprocess_source(Path(path), config, str(path), check_xray)[0]


def preprocess_bytes(
    data: bytes, config: PreprocessConfig, name: str = "image bytes", check_xray: bool = False
) -> np.ndarray:
    """preprocess_source of an encoded image held in memory, the pixels alone."""
    return preprocess_source(data, config, name, check_xray)[0]


def model_input_settings(config: PreprocessConfig) -> dict[str, Any]:
    """What a model card records of the preprocess settings: those that change the pixels."""
    return ImageSpec.of(config.image).as_json()


def input_limits(config: PreprocessConfig) -> dict[str, int]:
    """The input limits of a config, as the served model's settings record them."""
    return config.limits.model_dump()


def config_from_settings(settings: Any, source: str | Path, limits: Any = None) -> PreprocessConfig:
    """The inverse of model_input_settings: a model's recorded preprocess settings (model card,
    served model: the image spec's keys) back to a PreprocessConfig, validated like params.yaml's
    section. `limits` (max_pixels, max_file_bytes: a served model's) default to DEFAULT_LIMITS,
    for a model card or a served model logged before them."""
    if not isinstance(settings, dict):
        raise PreprocessSettingsError(
            f"{source}: preprocess settings must be a mapping, got {settings!r}"
        )
    missing = [key for key in IMAGE_SPEC_KEYS if key not in settings]
    if missing:
        raise PreprocessSettingsError(f"{source}: preprocess settings lack {', '.join(missing)}")
    if limits is not None and not isinstance(limits, dict):
        raise PreprocessSettingsError(f"{source}: limits must be a mapping, got {limits!r}")
    try:
        image = ImageInput.from_section(ImageSpec.section_of(settings), "preprocess.image")
        bounds = InputLimits.from_section(
            {**DEFAULT_LIMITS.model_dump(), **(limits or {})}, "limits"
        )
    except ConfigError as error:
        raise PreprocessSettingsError(f"{source}: bad preprocess settings: {error}") from error
    # workers and sample_grid only matter to the stage; one image at a time needs neither.
    return PreprocessConfig(image=image, limits=bounds, workers=1, sample_grid=0)


def with_limits(config: PreprocessConfig, limits: PreprocessConfig) -> PreprocessConfig:
    """`config` (a model's preprocessing) with the input limits of `limits` (params.yaml's)."""
    return config.model_copy(update={"limits": limits.limits})
