"""Which files are X-ray images: the suffixes the dataset layout (download, preprocess) and
predict's folder search look for, in any case; one list, so that every place images enter
reads the same files. DICOM is recognised by its content wherever a file is decoded
(imaging.dicom.is_dicom); a folder search also takes a file without any suffix that is DICOM by
content, as PACS exports name them (IM000001), but not the DICOMDIR index."""

from __future__ import annotations

from pathlib import Path, PurePath

JPEG_PNG_SUFFIXES = (".jpeg", ".jpg", ".png")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (*JPEG_PNG_SUFFIXES, *DICOM_SUFFIXES)
# How messages and help texts name them.
SUFFIX_TEXT = "/".join(IMAGE_SUFFIXES)
# The index file of a DICOM media folder: DICOM by content, but it holds no image.
DICOMDIR = "DICOMDIR"
# DICOM Part 10: a 128-byte preamble, then these four bytes.
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"


def has_image_suffix(path: PurePath) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def starts_like_dicom(head: bytes) -> bool:
    """Whether the first bytes of a file are those of a DICOM Part 10 file."""
    return head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC


def is_image_name(path: Path) -> bool:
    """An image by its suffix, or a regular file without one (or with a number for one) that
    is DICOM by content."""
    if has_image_suffix(path):
        return True
    # Suffix-less, or numbered (storescp and dcm4che name files by their SOP Instance UID,
    # whose last part reads as a suffix: 1.2.840.113619.2.55.3.969): checked by content.
    numbered = path.suffix[1:].isdigit()
    if (path.suffix and not numbered) or path.name.startswith(".") or path.name == DICOMDIR:
        return False
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as file:
            return starts_like_dicom(file.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)))
    except OSError:
        return False
