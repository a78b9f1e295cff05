"""Decoding and checking image files: one place that knows Pillow's modes and failure kinds,
and the input limits (formats, file size, pixel count, what a chest X-ray must look like).
JPEG and PNG go through Pillow; DICOM, recognised by its content, through imaging.dicom."""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, ImageStat, UnidentifiedImageError

from pneumonia.config import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS
from pneumonia.contracts.image_files import DICOM_MAGIC, DICOM_MAGIC_OFFSET
from pneumonia.errors import PipelineError
from pneumonia.imaging.dicom import DicomInfo, is_dicom, read_dicom

# Pillow may otherwise hand back a half-decoded truncated JPEG padded with grey.
Image.LOAD_TRUNCATED_IMAGES = False
# The only decoders Pillow may try: the README promises JPEG or PNG, and every other plugin
# (EPS launches Ghostscript) is attack surface. The JPEG plugin also opens MPO, the multi-picture
# JPEG of some cameras, whose first picture is an ordinary JPEG.
OPEN_FORMATS = ("JPEG", "PNG")
IMAGE_FORMATS = ("JPEG", "PNG", "MPO")
# The plain sanity check of inference: no chest X-ray is this small or this flat, and the model
# would still give such input a confident answer.
MIN_SIDE = 32
MIN_STANDARD_DEVIATION = 1.0  # grey levels of the decoded 8-bit image
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L")


class ImageDecodeError(PipelineError, ValueError):
    """A file that cannot be used as an image; the message names the file and the reason."""


class NotAnXrayError(ImageDecodeError):
    """A decodable image that cannot be a chest X-ray (too small, or blank)."""


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


# Leading bytes of formats Pillow could decode but we refuse, to name them in the message
# without letting Pillow parse them.
_REFUSED_SIGNATURES = (
    (b"BM", "BMP"),
    (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x01\xda", "SGI"),
    (b"\x0a\x05\x01", "PCX"),
    (b"\x00\x00\x00\x0cjP", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
)


def _refused_format(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if len(head) > 2 and head[:1] == b"P" and head[1:2] in b"1234567" and head[2:3].isspace():
        return "PPM"
    for signature, name in _REFUSED_SIGNATURES:
        if head.startswith(signature):
            return name
    return None


# Enough of a file's start to name its format: a DICOM file's magic ends at byte 132.
HEAD_BYTES = DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)


def _read_head(source: str | Path | BinaryIO) -> bytes:
    """The first bytes of a file or seekable stream (a stream is left where it was found)."""
    try:
        if isinstance(source, (str, Path)):
            with open(source, "rb") as file:
                return file.read(HEAD_BYTES)
        position = source.tell()
        source.seek(0)
        head = source.read(HEAD_BYTES)
        source.seek(position)
        return head
    except (OSError, ValueError):
        return b""


def _failure_reason(error: Exception, head: bytes = b"") -> str:
    if isinstance(error, UnidentifiedImageError):
        refused = _refused_format(head)
        if refused is not None:
            return f"unsupported format {refused}; only JPEG, PNG and DICOM are accepted"
        return "not an image (neither JPEG, PNG nor DICOM)"
    if isinstance(error, Image.DecompressionBombError):
        return f"too many pixels for Pillow to open ({error})"
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


def _read_regular_file(path: str, max_bytes: int) -> bytes | str:
    """The file's bytes, or why they were not read: not a regular file (a pipe would block), or
    larger than `max_bytes` (checked on the open file before reading, and again on what came)."""
    # O_NONBLOCK: opening a named pipe must not wait for a writer
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            return "not a regular file"
        problem = file_size_problem(status.st_size, max_bytes)
        if problem is not None:
            return problem
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew after the check
        return file_size_problem(len(data), max_bytes) or ""
    return data


def open_image(source: str | Path | BinaryIO) -> Image.Image:
    """Image.open with only the JPEG and PNG decoders. Pillow's decompression-bomb warning is
    silenced: header_problem refuses an image over preprocess.limits.max_pixels with a clearer
    message (Pillow still refuses one over twice its own limit, whatever the param says)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(source, formats=OPEN_FORMATS)


def file_size_problem(size: int, max_file_bytes: int) -> str | None:
    """Why a file of `size` bytes is refused, or None: checked before its bytes are read."""
    if size > max_file_bytes:
        return (
            f"{size:,} bytes is over preprocess.limits.max_file_bytes ({max_file_bytes:,}); chest "
            "X-rays are a few MB, raise the limit if this one is real"
        )
    return None


def header_problem(image: Image.Image, max_pixels: int) -> str | None:
    """Why an opened (not yet decoded) image is refused, or None: its format and pixel count,
    both read from the header, so an oversized image costs no decoding memory."""
    if image.format not in IMAGE_FORMATS:
        return f"unsupported format {image.format}; only JPEG, PNG and DICOM are accepted"
    pixels = image.width * image.height
    if pixels > max_pixels:
        return (
            f"{image.width}x{image.height} is {pixels:,} pixels, over preprocess.limits.max_pixels "
            f"({max_pixels:,}); downscale the image or raise the limit"
        )
    return None


def inspect_image(
    path: str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> ImageCheck:
    """Hash and fully decode one file; never raises for a bad image, reports why instead."""
    path = str(path)
    try:
        data = _read_regular_file(path, max_file_bytes)
    except OSError as error:
        return ImageCheck(path, False, f"unreadable: {error.strerror or error}", "", 0, 0, "")
    if isinstance(data, str):
        return ImageCheck(path, False, data, "", 0, 0, "")
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return ImageCheck(path, False, "empty file", digest, 0, 0, "")
    if is_dicom(data[:HEAD_BYTES]):
        try:
            gray, _ = read_dicom(io.BytesIO(data), path, max_pixels)
        except ImageDecodeError as error:
            reason = str(error).removeprefix(f"{path}: ")
            return ImageCheck(path, False, reason, digest, 0, 0, "DICOM")
        return ImageCheck(path, True, "", digest, gray.width, gray.height, "DICOM")
    try:
        with open_image(io.BytesIO(data)) as image:
            problem = header_problem(image, max_pixels)
            if problem is not None:
                return ImageCheck(path, False, problem, digest, 0, 0, image.mode)
            image.load()
            extra = trailing_bytes(data, image.format)
            return ImageCheck(path, True, "", digest, image.width, image.height, image.mode, extra)
    except Exception as error:  # Pillow raises many kinds (OSError, SyntaxError, ValueError...)
        return ImageCheck(path, False, _failure_reason(error, data[:16]), digest, 0, 0, "")


@cache
def _sixteen_to_eight_bit() -> np.ndarray:
    """v -> round(v * 255 / 65535) for every 16-bit value: one 64 KiB table instead of
    whole-image uint32 arithmetic (which took a 13000x13000 PNG to gigabytes)."""
    values = np.arange(65536, dtype=np.uint32)
    return ((values * 255 + 65535 // 2) // 65535).astype(np.uint8)


def _sixteen_bit_to_l(image: Image.Image, rows: int = 256) -> Image.Image:
    """The 8-bit image of a 16-bit one, a band of rows at a time: a whole-image NumPy view
    would copy the decoded pixels (tobytes) and widen them to 64-bit indexes."""
    table = _sixteen_to_eight_bit()
    output = np.empty((image.height, image.width), dtype=np.uint8)
    for start in range(0, image.height, rows):
        band = image.crop((0, start, image.width, min(start + rows, image.height)))
        output[start : start + band.height] = table[np.asarray(band)]
    return Image.fromarray(output)


def to_grayscale(image: Image.Image) -> Image.Image:
    """8-bit grayscale of any mode: 16-bit PNGs are scaled, not clipped; CMYK goes through RGB.

    16-bit images become 8-bit through a lookup table, band by band: the uint8 output is the
    only full-size array besides the decoded image, with the same values as scaling each pixel
    by 255 / 65535. A 32-bit "I" image (not a PNG mode) is kept if its values fit in 8 bits,
    else scaled the same way."""
    if image.mode == "L":
        return image
    if image.mode in SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_l(image)
    if image.mode == "I":
        peak = 255 if image.getextrema()[1] <= 255 else 65535
        values = np.clip(np.asarray(image), 0, peak)
        if peak == 255:
            return Image.fromarray(values.astype(np.uint8))
        return Image.fromarray(_sixteen_to_eight_bit()[values.astype(np.uint16)])
    if image.mode in ("CMYK", "YCbCr", "LAB", "HSV", "P", "PA", "1"):
        image = image.convert("RGBA" if image.mode in ("P", "PA") else "RGB")
    return image.convert("L")


def check_chest_xray(gray: Image.Image, width: int, height: int, name: str) -> None:
    """The plain sanity check of inference: refuse an image too small (from its original size)
    or nearly constant (from its decoded 8-bit pixels) to be a chest X-ray, instead of scoring
    it. Not applied to the dataset, whose usable images must not change."""
    if min(width, height) < MIN_SIDE:
        raise NotAnXrayError(
            f"{name}: not a chest X-ray: {width}x{height} is under {MIN_SIDE} pixels on its "
            "short side"
        )
    # From the histogram: no float copy of the image.
    deviation = ImageStat.Stat(gray).stddev[0]
    if deviation < MIN_STANDARD_DEVIATION:
        raise NotAnXrayError(
            f"{name}: not a chest X-ray: nearly constant (standard deviation {deviation:.2f} "
            f"grey levels, under {MIN_STANDARD_DEVIATION:g})"
        )


def draft_size(width: int, height: int, target: int, resize: str) -> tuple[int, int]:
    """Smallest decode size that still covers the target after `resize` (for JPEG draft mode)."""
    longest, shortest = max(width, height), min(width, height)
    if resize == "stretch":
        return min(width, target), min(height, target)
    scale = target / (longest if resize == "letterbox" else shortest)
    if scale >= 1:
        return width, height
    return math.ceil(width * scale), math.ceil(height * scale)


def load_image(
    path: str | Path | BinaryIO,
    target: int | None = None,
    resize: str = "stretch",
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    check_xray: bool = False,
) -> tuple[Image.Image, DicomInfo | None]:
    """Decode one file (or an open binary stream, e.g. bytes received by the served model) to
    8-bit grayscale, EXIF orientation applied, with a DICOM file's modality, view and warnings
    (None for JPEG and PNG). Errors name `name`, else the path.

    DICOM is recognised by its content (imaging.dicom.read_dicom); otherwise only JPEG and PNG
    are opened; a file over `max_file_bytes` (by stat, before reading; a
    stream's caller checks its own length) or an image over `max_pixels` (from the header,
    before decoding) is refused. With `check_xray`, an image that cannot be a chest X-ray is
    refused too (`check_chest_xray`, inference only).

    With `target`, a JPEG is decoded at the smallest DCT scale that still covers the output
    (Pillow's draft mode): much faster for large originals, exact enough for a downscale.
    """
    path_name = name or path
    try:
        if isinstance(path, (str, Path)):
            problem = file_size_problem(os.stat(path).st_size, max_file_bytes)
            if problem is not None:
                raise ImageDecodeError(f"{path_name}: {problem}")
        if is_dicom(_read_head(path)):
            gray, info = read_dicom(path, str(path_name), max_pixels)
            if check_xray:
                check_chest_xray(gray, gray.width, gray.height, str(path_name))
            return gray, info
        with open_image(path) as image:
            problem = header_problem(image, max_pixels)
            if problem is not None:
                raise ImageDecodeError(f"{path_name}: {problem}")
            width, height = image.size
            if target is not None and image.format in ("JPEG", "MPO"):
                image.draft("L", draft_size(image.width, image.height, target, resize))
            image.load()
            # In place: a transposed copy would be one more full-size image.
            ImageOps.exif_transpose(image, in_place=True)
            gray = to_grayscale(image)
            if gray is image:  # an 8-bit grey original: outlive the file's closing
                gray = image.copy()
    except ImageDecodeError:
        raise
    except FileNotFoundError as error:
        raise ImageDecodeError(f"{path_name}: file not found") from error
    except Exception as error:
        reason = _failure_reason(error, _read_head(path))
        raise ImageDecodeError(f"{path_name}: {reason}") from error
    if check_xray:
        check_chest_xray(gray, width, height, str(path_name))
    return gray, None


def load_grayscale(
    path: str | Path | BinaryIO,
    target: int | None = None,
    resize: str = "stretch",
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    check_xray: bool = False,
) -> Image.Image:
    """load_image's grey image alone."""
    return load_image(path, target, resize, name, max_pixels, max_file_bytes, check_xray)[0]
