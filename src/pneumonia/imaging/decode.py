"""Decoding and checking image files: one place that knows Pillow's modes and failure kinds."""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pneumonia.errors import PipelineError

# Pillow may otherwise hand back a half-decoded truncated JPEG padded with grey.
Image.LOAD_TRUNCATED_IMAGES = False
IMAGE_FORMATS = ("JPEG", "PNG", "MPO")


class ImageDecodeError(PipelineError, ValueError):
    """A file that cannot be used as an image; the message names the file and the reason."""


@dataclass(frozen=True)
class ImageCheck:
    """What a full decode of one file found."""

    path: str
    ok: bool
    reason: str
    sha256: str
    width: int
    height: int
    mode: str


def _failure_reason(error: Exception) -> str:
    if isinstance(error, UnidentifiedImageError):
        return "not an image (Pillow cannot identify it)"
    text = str(error) or type(error).__name__
    if "truncated" in text.lower():
        return f"truncated image ({text})"
    return f"decode error: {type(error).__name__}: {text}"


def inspect_image(path: str | Path) -> ImageCheck:
    """Hash and fully decode one file; never raises for a bad image, reports why instead."""
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        return ImageCheck(path, False, f"unreadable: {error.strerror or error}", "", 0, 0, "")
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return ImageCheck(path, False, "empty file", digest, 0, 0, "")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in IMAGE_FORMATS:
                return ImageCheck(
                    path, False, f"unsupported format {image.format}", digest, 0, 0, image.mode
                )
            image.load()
            return ImageCheck(path, True, "", digest, image.width, image.height, image.mode)
    except Exception as error:  # Pillow raises many kinds (OSError, SyntaxError, ValueError...)
        return ImageCheck(path, False, _failure_reason(error), digest, 0, 0, "")


def to_grayscale(image: Image.Image) -> Image.Image:
    """8-bit grayscale of any mode: 16-bit PNGs are scaled, not clipped; CMYK goes through RGB."""
    if image.mode == "L":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.uint32)
        peak = 65535 if image.mode.startswith("I;16") or array.max() > 255 else 255
        scaled = (array * 255 + peak // 2) // peak
        return Image.fromarray(scaled.astype(np.uint8))
    if image.mode in ("CMYK", "YCbCr", "LAB", "HSV", "P", "PA", "1"):
        image = image.convert("RGBA" if image.mode in ("P", "PA") else "RGB")
    return image.convert("L")


def draft_size(width: int, height: int, target: int, resize: str) -> tuple[int, int]:
    """Smallest decode size that still covers the target after `resize` (for JPEG draft mode)."""
    longest, shortest = max(width, height), min(width, height)
    if resize == "stretch":
        return min(width, target), min(height, target)
    scale = target / (longest if resize == "letterbox" else shortest)
    if scale >= 1:
        return width, height
    return math.ceil(width * scale), math.ceil(height * scale)


def load_grayscale(
    path: str | Path | BinaryIO,
    target: int | None = None,
    resize: str = "stretch",
    name: str | None = None,
) -> Image.Image:
    """Decode one file (or an open binary stream, e.g. bytes received by the served model) to
    8-bit grayscale, EXIF orientation applied. Errors name `name`, else the path.

    With `target`, a JPEG is decoded at the smallest DCT scale that still covers the output
    (Pillow's draft mode): much faster for large originals, exact enough for a downscale.
    """
    path_name = name or path
    try:
        with Image.open(path) as image:
            if target is not None and image.format in ("JPEG", "MPO"):
                image.draft("L", draft_size(image.width, image.height, target, resize))
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_grayscale(image)
    except FileNotFoundError as error:
        raise ImageDecodeError(f"{path_name}: file not found") from error
    except Exception as error:
        raise ImageDecodeError(f"{path_name}: {_failure_reason(error)}") from error
