"""Reading a DICOM radiograph (Part 10 file) as the 8-bit grey image the model's preprocessing
takes, the way radiology viewers display it: Modality LUT (RescaleSlope / RescaleIntercept or a
Modality LUT Sequence), then the VOI LUT Sequence or WindowCenter / WindowWidth when present,
else the whole range the stored bits can hold; MONOCHROME1 inverted; RGB (and YBR, which pydicom
converts) to grey as Pillow converts a colour JPEG.

What is refused, before any pixel is decoded, with the reason: no pixel data, float pixel data,
a modality other than CR, DX or DR, several frames, more pixels than preprocess.limits.max_pixels
(from Rows x Columns), a photometric interpretation or bit depth this reader does not handle, a
transfer syntax no installed decoder reads, and uncompressed pixel data shorter than its header
says. A view other than PA or AP, or no modality at all, is read with a warning the output rows
carry.

Patient data: nothing of the header reaches a message but the modality, the view, the
transfer syntax, the photometric interpretation, sizes and counts; pydicom's own warnings and
log lines (which can quote element values) are silenced while a file is read, and no exception
text of pydicom or a decoder plug-in is passed on, only its type.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
import pydicom.uid
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi, get_decoder
from pydicom.pixels.utils import get_expected_length

from pneumonia.contracts.image_files import DICOM_SUFFIXES, starts_like_dicom

__all__ = [
    "ACCEPTED_MODALITIES",
    "ACCEPTED_VIEWS",
    "DICOM_SUFFIXES",
    "DicomInfo",
    "is_dicom",
    "read_dicom",
    "transfer_syntax_support",
]

# CR and DX are the radiograph modalities of the standard; DR is not a standard code but some
# systems write it for digital radiography.
ACCEPTED_MODALITIES = ("CR", "DX", "DR")
# The frontal views the model was trained on (the Kermany images are frontal, mostly AP).
ACCEPTED_VIEWS = ("PA", "AP")
PHOTOMETRIC_INTERPRETATIONS = (
    "MONOCHROME1",
    "MONOCHROME2",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_ICT",
    "YBR_RCT",
)
# What a row may show of Modality (a code: letters and digits, no space) and ViewPosition (its
# defined terms, and the LATERAL some systems write): anything else is not shown, since a
# malformed header could hold any text there, a name included.
_CODE_STRING = re.compile(r"[A-Z0-9_]{1,16}")
# PhotometricInterpretation's defined terms have spaces (PALETTE COLOR).
_SPACED_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")
VIEW_TERMS = ("AP", "PA", "LL", "RL", "RLD", "LLD", "RLO", "LLO", "LATERAL", "LAT")
_UNSHOWN = "(not a code string)"
_UID = re.compile(r"[0-9.]{1,64}")


@dataclass(frozen=True)
class DicomInfo:
    """What a row may say of a DICOM file's header: its modality and view, and its warnings."""

    modality: str | None
    view: str | None
    warnings: tuple[str, ...] = ()


def is_dicom(head: bytes) -> bool:
    """Whether the first (at least 132) bytes of a file are those of a DICOM Part 10 file."""
    return starts_like_dicom(head)


class _Refused(Exception):
    """A reason to refuse the file, worded for the user (turned into ImageDecodeError)."""


def _silence_pydicom() -> None:
    """pydicom's warnings and log lines silenced for the process, once: they can quote a
    header's values (a malformed PatientName, for one). Once, at import, not around each read:
    the served model reads requests in threads, and a per-read switch of a process-wide logger
    or warnings filter would let one thread's restore un-silence another's read."""
    logger = logging.getLogger("pydicom")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    logger.setLevel(logging.CRITICAL + 1)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")


_silence_pydicom()


def _code(
    dataset: pydicom.Dataset, keyword: str, pattern: re.Pattern[str] = _CODE_STRING
) -> str | None:
    """A Code String element's value, upper-cased, or None when absent or empty."""
    try:
        value = dataset.get(keyword)
    except Exception:  # a value pydicom cannot convert
        return _UNSHOWN
    if value is None:
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if len(value) else ""
    text = str(value).strip().upper()
    if not text:
        return None
    return text if pattern.fullmatch(text) else _UNSHOWN


def _integer(dataset: pydicom.Dataset, keyword: str, default: int | None = None) -> int | None:
    try:
        value = dataset.get(keyword, default)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        raise _Refused(f"its {keyword} is not a number") from None


def _syntax_name(uid: pydicom.uid.UID) -> str:
    if uid.is_transfer_syntax:
        return f"{uid.name} ({uid})"
    return str(uid) if _UID.fullmatch(str(uid)) else "(not a UID)"


def _check_header(dataset: pydicom.Dataset, max_pixels: int) -> tuple[DicomInfo, Any]:
    """Why the file is refused (_Refused), else its DicomInfo and transfer syntax; the header
    only, no pixel decoded."""
    modality = _code(dataset, "Modality")
    view = _code(dataset, "ViewPosition")
    if view is not None and view not in VIEW_TERMS:
        view = _UNSHOWN
    if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
        raise _Refused("float pixel data; only integer radiographs are read")
    if "PixelData" not in dataset:
        raise _Refused("holds no image (no Pixel Data): not an image object, or a file cut short")
    if modality is not None and modality not in ACCEPTED_MODALITIES:
        raise _Refused(
            f"modality {modality} is not a radiograph; only {', '.join(ACCEPTED_MODALITIES)} are "
            "read"
        )
    frames = _integer(dataset, "NumberOfFrames", 1) or 1
    if frames > 1:
        raise _Refused(f"{frames} frames; only single-frame images are read")
    rows, columns = _integer(dataset, "Rows"), _integer(dataset, "Columns")
    if not rows or not columns or rows < 0 or columns < 0:
        raise _Refused("no Rows and Columns in the header")
    if rows * columns > max_pixels:
        raise _Refused(
            f"{columns}x{rows} is {rows * columns:,} pixels, over preprocess.limits.max_pixels "
            f"({max_pixels:,}); downscale the image or raise the limit"
        )
    samples = _integer(dataset, "SamplesPerPixel", 1)
    photometric = _code(dataset, "PhotometricInterpretation", _SPACED_CODE_STRING) or "MONOCHROME2"
    if photometric not in PHOTOMETRIC_INTERPRETATIONS:
        raise _Refused(
            f"photometric interpretation {photometric} is not read; only MONOCHROME1, "
            "MONOCHROME2 and RGB (YBR) are"
        )
    if (samples == 1) != photometric.startswith("MONOCHROME") or samples not in (1, 3):
        raise _Refused(f"{samples} samples per pixel with {photometric}")
    bits = _integer(dataset, "BitsAllocated")
    if bits not in (8, 16, 32) or (samples == 3 and bits != 8):
        raise _Refused(
            f"{bits} bits allocated per sample; only 8, 16 or 32 (8 for colour) are read"
        )
    stored = _integer(dataset, "BitsStored", bits)
    if stored is None or not 1 <= stored <= bits:
        raise _Refused(f"BitsStored {stored} does not fit BitsAllocated {bits}")
    meta = getattr(dataset, "file_meta", None)
    syntax = pydicom.uid.UID(
        str(getattr(meta, "TransferSyntaxUID", None) or pydicom.uid.ImplicitVRLittleEndian)
    )
    try:
        decodable = get_decoder(syntax).is_available
    except (NotImplementedError, ValueError):
        decodable = False
    if not decodable:
        raise _Refused(
            f"transfer syntax {_syntax_name(syntax)} cannot be decoded here; see "
            "docs/using-the-model.md, DICOM input, for the ones that can"
        )
    if not syntax.is_compressed:
        expected = get_expected_length(dataset)
        if len(dataset.PixelData) < expected:
            raise _Refused(
                f"truncated pixel data ({len(dataset.PixelData):,} of the {expected:,} bytes its "
                "header gives)"
            )
    warned = []
    if modality is None:
        warned.append("modality not recorded")
    if view is None:
        warned.append("view not recorded")
    elif view not in ACCEPTED_VIEWS:
        warned.append(f"view {view}, not PA/AP")
    return DicomInfo(modality, view, tuple(warned)), syntax


def _stored_range(dataset: pydicom.Dataset) -> tuple[float, float]:
    """The values the stored bits can hold, carried through the Modality LUT."""
    if "ModalityLUTSequence" in dataset:
        descriptor = dataset.ModalityLUTSequence[0].LUTDescriptor
        return 0.0, float(2 ** int(descriptor[2]) - 1)
    stored = int(dataset.get("BitsStored", dataset.BitsAllocated))
    if int(dataset.get("PixelRepresentation", 0)) == 1:
        low, high = -(2 ** (stored - 1)), 2 ** (stored - 1) - 1
    else:
        low, high = 0, 2**stored - 1
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return ends[0], ends[1]


def _first(value: Any) -> float:
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0]
    return float(value)


def _window(values: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    """WindowCenter / WindowWidth (the first pair) to 0..255 by VOILUTFunction (PS3.3
    C.11.2.1.2): LINEAR (the default), LINEAR_EXACT or SIGMOID."""
    center = _first(dataset.WindowCenter)
    width = _first(dataset.WindowWidth)
    function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function == "SIGMOID":
        if width <= 0:
            raise _Refused("WindowWidth must be over 0")
        return 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise _Refused("WindowWidth must be over 0")
        return np.clip(((values - center) / width + 0.5) * 255.0, 0.0, 255.0)
    if width < 1:
        raise _Refused("WindowWidth must be at least 1")
    if width == 1:  # a threshold
        return np.where(values > center - 0.5, 255.0, 0.0)
    return np.clip(((values - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0, 0.0, 255.0)


def _values_to_grey(pixels: np.ndarray, dataset: pydicom.Dataset, photometric: str) -> np.ndarray:
    """Stored grey values as 8-bit grey: modality LUT, VOI, inversion of MONOCHROME1."""
    if "ModalityLUTSequence" in dataset:
        values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float32)
    else:
        # By hand, not apply_modality_lut: it rescales in float64, twice float32's memory.
        values = pixels.astype(np.float32)
        slope = float(dataset.get("RescaleSlope", 1) or 1)
        intercept = float(dataset.get("RescaleIntercept", 0) or 0)
        if slope != 1:
            values *= np.float32(slope)
        if intercept:
            values += np.float32(intercept)
    if "VOILUTSequence" in dataset:
        descriptor = dataset.VOILUTSequence[0].LUTDescriptor
        scaled = np.asarray(apply_voi(values, dataset, index=0), dtype=np.float32)
        top = float(2 ** int(descriptor[2]) - 1)
        grey = scaled * (255.0 / top)
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        grey = _window(values, dataset)
    else:
        low, high = _stored_range(dataset)
        grey = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return grey


def _grey(pixels: np.ndarray, dataset: pydicom.Dataset, photometric: str) -> np.ndarray:
    """The decoded pixels as 8-bit grey. Every step is a function of the stored value alone, so
    8- and 16-bit data go through a table of every value they can hold (at most 65,536 entries)
    indexed by the pixels: one uint8 output beside the decoded array, not a float32 copy and
    its temporaries (about 20 bytes a pixel). 32-bit data take the float path whole."""
    if pixels.ndim == 3:  # colour: pydicom hands back RGB
        return np.asarray(Image.fromarray(np.ascontiguousarray(pixels), "RGB").convert("L"))
    if pixels.dtype.kind not in "iu" or pixels.dtype.itemsize > 2:
        return _values_to_grey(pixels, dataset, photometric)
    bits = pixels.dtype.itemsize * 8
    unsigned = np.dtype(f"uint{bits}")
    if pixels.dtype.kind == "u":
        table = _values_to_grey(np.arange(2**bits, dtype=unsigned), dataset, photometric)
        return table[pixels]
    # Signed: the table runs from the lowest value up; flipping the sign bit of the unsigned
    # view maps each value to its place in it.
    values = np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1), dtype=np.int64).astype(pixels.dtype)
    table = _values_to_grey(values, dataset, photometric)
    return table[pixels.view(unsigned) ^ unsigned.type(2 ** (bits - 1))]


def read_dicom(
    source: str | Path | BinaryIO, name: str, max_pixels: int
) -> tuple[Image.Image, DicomInfo]:
    """A DICOM file (a path or a seekable binary stream) as an 8-bit grey ("L") image, with
    its modality, view and warnings. Raises ImageDecodeError `name: reason` for what is
    refused (module docstring); the caller has checked the file's size."""
    # Here, not at the top: decode imports this module to dispatch DICOM files.
    from pneumonia.imaging.decode import ImageDecodeError

    try:
        try:
            dataset = pydicom.dcmread(source)
        except Exception as error:  # pydicom raises many kinds on a damaged file
            raise _Refused(f"not a readable DICOM file ({type(error).__name__})") from None
        try:
            info, _ = _check_header(dataset, max_pixels)
        except _Refused:
            raise
        except Exception as error:  # a header value pydicom or NumPy cannot convert
            raise _Refused(f"a header value cannot be used ({type(error).__name__})") from None
        photometric = (
            _code(dataset, "PhotometricInterpretation", _SPACED_CODE_STRING) or "MONOCHROME2"
        )
        try:
            pixels = dataset.pixel_array
        except Exception as error:
            raise _Refused(
                f"its pixel data cannot be decoded ({type(error).__name__}): truncated or damaged"
            ) from None
        try:
            grey = _grey(pixels, dataset, photometric)
        except _Refused:
            raise
        except Exception as error:  # a rescale, window or LUT value that is not a number
            raise _Refused(
                f"its rescale, window or LUT cannot be applied ({type(error).__name__})"
            ) from None
    except _Refused as reason:
        # The type name only, never the text: pydicom's and NumPy's can quote a header value.
        raise ImageDecodeError(f"{name}: {reason}") from None
    return Image.fromarray(grey, "L"), info


def transfer_syntax_support() -> list[dict[str, object]]:
    """Every transfer syntax pydicom knows: its UID and name, whether it decodes here, and the
    installed plug-ins that decode it (none listed for the uncompressed ones: pydicom reads
    them itself)."""
    support = []
    for uid in pydicom.uid.AllTransferSyntaxes:
        try:
            decoder = get_decoder(uid)
            decodable = decoder.is_available
            plugins = sorted(decoder.available_plugins) if uid.is_compressed else []
        except (NotImplementedError, ValueError):
            decodable, plugins = False, []
        support.append(
            {"uid": str(uid), "name": uid.name, "decodable": decodable, "decoders": plugins}
        )
    return support
