"""Decoding and checking image files: one place that knows Pillow's modes and failure kinds."""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
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
    trailing_bytes: int = 0  # bytes after the image's end (JPEG EOI, PNG IEND)


def _failure_reason(error: Exception) -> str:
    if isinstance(error, UnidentifiedImageError):
        return "not an image (Pillow cannot identify it)"
    text = str(error) or type(error).__name__
    if "truncated" in text.lower():
        return f"truncated image ({text})"
    return f"decode error: {type(error).__name__}: {text}"


def trailing_bytes(data: bytes, image_format: str) -> int:
    """Bytes after the image's end: after the last JPEG EOI marker (FF D9), or after the PNG
    IEND chunk. Decoders ignore them, so a padded or appended-to file still decodes."""
    if image_format in ("JPEG", "MPO"):
        end = data.rfind(b"\xff\xd9")
        return len(data) - end - 2 if end >= 0 else 0
    if image_format == "PNG":
        position = 8  # the signature; then chunks of length, type, data and CRC
        while position + 8 <= len(data):
            length = int.from_bytes(data[position : position + 4], "big")
            kind = data[position + 4 : position + 8]
            position += 12 + length
            if kind == b"IEND":
                return max(0, len(data) - position)
    return 0


def _read_regular_file(path: str, max_bytes: int | None) -> bytes | str:
    """The file's bytes, or why they were not read: not a regular file (a pipe would block), or
    larger than `max_bytes` (checked on the open file before reading, and again on what came)."""
    # O_NONBLOCK: opening a named pipe must not wait for a writer
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            return "not a regular file"
        if max_bytes is not None and status.st_size > max_bytes:
            return f"too large: {status.st_size} bytes, over the limit of {max_bytes}"
        data = file.read() if max_bytes is None else file.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:  # it grew after the check
        return f"too large: over the limit of {max_bytes} bytes"
    return data


def inspect_image(path: str | Path, max_bytes: int | None = None) -> ImageCheck:
    """Hash and fully decode one file of at most `max_bytes` (None: any size); never raises for
    a bad image, reports why instead, and counts the bytes after the image's end."""
    path = str(path)
    try:
        data = _read_regular_file(path, max_bytes)
    except OSError as error:
        return ImageCheck(path, False, f"unreadable: {error.strerror or error}", "", 0, 0, "")
    if isinstance(data, str):
        return ImageCheck(path, False, data, "", 0, 0, "")
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
            extra = trailing_bytes(data, image.format)
            return ImageCheck(path, True, "", digest, image.width, image.height, image.mode, extra)
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
