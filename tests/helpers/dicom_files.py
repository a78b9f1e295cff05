"""Real DICOM Part 10 files written with pydicom for the tests: radiographs of given pixels in
the photometric interpretations, bit depths and transfer syntaxes the reader handles, and the
kinds it refuses. Every file carries patient data made of distinctive strings (PHI_STRINGS), so
a test can search every output, log and store for them afterwards."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

# Patient data no output may ever show.
PATIENT_NAME = "Zebulon^Quixotic"
PATIENT_ID = "PID-8c1f7e2a"
BIRTH_DATE = "19230817"
ACCESSION = "ACC-77f3b9"
INSTITUTION = "Hospital Xylophanes"
PHI_STRINGS = (PATIENT_NAME, "Zebulon", "Quixotic", PATIENT_ID, BIRTH_DATE, ACCESSION, INSTITUTION)
DIGITAL_XRAY_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - Presentation


def base_dataset(
    *, modality: str | None = "DX", view: str | None = "PA", patient_name: str = PATIENT_NAME
) -> Dataset:
    """A header with patient data and the radiograph's modality and view (None leaves one out)."""
    dataset = Dataset()
    dataset.SOPClassUID = DIGITAL_XRAY_STORAGE
    dataset.SOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.PatientName = patient_name
    dataset.PatientID = PATIENT_ID
    dataset.PatientBirthDate = BIRTH_DATE
    dataset.AccessionNumber = ACCESSION
    dataset.InstitutionName = INSTITUTION
    if modality is not None:
        dataset.Modality = modality
    if view is not None:
        dataset.ViewPosition = view
    return dataset


def save(dataset: Dataset, path: Path, syntax: str = ExplicitVRLittleEndian) -> Path:
    """The dataset as a Part 10 file (preamble, DICM, file meta) at path."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.get("SOPClassUID", SecondaryCaptureImageStorage)
    meta.MediaStorageSOPInstanceUID = dataset.get("SOPInstanceUID", generate_uid())
    meta.TransferSyntaxUID = syntax
    dataset.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    # A private syntax says nothing of its encoding: written as explicit VR little endian.
    private = (
        {} if UID(syntax).is_transfer_syntax else {"implicit_vr": False, "little_endian": True}
    )
    dataset.save_as(path, enforce_file_format=True, **private)
    return path


def set_pixels(
    dataset: Dataset,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    signed: bool = False,
) -> Dataset:
    """Uncompressed pixel data: (rows, columns) grey or (rows, columns, 3) RGB, uint8 or uint16."""
    pixels = np.ascontiguousarray(pixels)
    bits = pixels.dtype.itemsize * 8
    dataset.Rows, dataset.Columns = pixels.shape[:2]
    dataset.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        dataset.PlanarConfiguration = 0
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = bits
    dataset.BitsStored = bits_stored or bits
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 1 if signed else 0
    dataset.PixelData = pixels.tobytes()
    return dataset


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    modality: str | None = "DX",
    view: str | None = "PA",
    bits_stored: int | None = None,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    frames: int = 1,
    patient_name: str = PATIENT_NAME,
) -> Path:
    """An uncompressed radiograph (Explicit VR Little Endian) of the given pixels."""
    dataset = base_dataset(modality=modality, view=view, patient_name=patient_name)
    set_pixels(dataset, pixels, photometric=photometric, bits_stored=bits_stored)
    if frames > 1:
        dataset.NumberOfFrames = frames
        dataset.PixelData = dataset.PixelData * frames
    if rescale is not None:
        dataset.RescaleSlope, dataset.RescaleIntercept = rescale
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = window
    return save(dataset, path)


def monochrome1_sixteen_bit(grey: np.ndarray) -> tuple[np.ndarray, tuple, tuple]:
    """Stored values, rescale (slope, intercept) and window (center, width) of a MONOCHROME1
    12-bit image that a viewer shows as `grey` (8-bit): stored = 16 * (255 - grey) + 8, slope 2,
    intercept -100, so the modality values are 32 * (255 - grey) - 84, and a LINEAR window over
    exactly their range maps them back to 255 - grey before MONOCHROME1 inverts it."""
    stored = (16 * (255 - grey.astype(np.uint16)) + 8).astype(np.uint16)
    slope, intercept = 2.0, -100.0
    low, high = 8 * slope + intercept, (16 * 255 + 8) * slope + intercept
    # LINEAR: ((x - (c - 0.5)) / (w - 1) + 0.5) * 255 is 0 at x = low and 255 at x = high.
    width = high - low + 1
    center = low + (width - 1) / 2 + 0.5
    return stored, (slope, intercept), (center, width)


def dicom_from_grey(path: Path, grey: np.ndarray, kind: str, **header) -> Path:
    """A DICOM of what a viewer shows as the 8-bit `grey` image: `monochrome2` (8-bit, as it
    is), `monochrome1` (16-bit stored, 12 bits, inverted, rescaled and windowed)."""
    if kind == "monochrome2":
        return write_dicom(path, grey, **header)
    if kind == "monochrome1":
        stored, rescale, window = monochrome1_sixteen_bit(grey)
        return write_dicom(
            path,
            stored,
            photometric="MONOCHROME1",
            bits_stored=12,
            rescale=rescale,
            window=window,
            **header,
        )
    raise ValueError(f"unknown kind {kind!r}")


def dicom_from_rgb(path: Path, rgb: np.ndarray, **header) -> Path:
    """An uncompressed RGB DICOM of (rows, columns, 3) uint8 pixels."""
    return write_dicom(path, rgb, photometric="RGB", **header)


def jpeg_baseline_dicom(path: Path, grey: np.ndarray, quality: int = 95) -> Path:
    """A JPEG Baseline DICOM: Pillow's JPEG of the grey pixels, encapsulated."""
    encoded = io.BytesIO()
    Image.fromarray(grey).save(encoded, "JPEG", quality=quality)
    dataset = base_dataset()
    set_pixels(dataset, grey)
    dataset.PixelData = encapsulate([encoded.getvalue()])
    dataset["PixelData"].VR = "OB"
    dataset["PixelData"].is_undefined_length = True
    return save(dataset, path, JPEGBaseline8Bit)


def rle_dicom(path: Path, grey: np.ndarray) -> Path:
    """An RLE Lossless DICOM of the grey pixels (pydicom's own encoder)."""
    dataset = base_dataset()
    set_pixels(dataset, grey)
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.compress(RLELossless, encoding_plugin="pydicom")
    return save(dataset, path, RLELossless)


def gdcm_transcoded(source: Path, target: Path, syntax: str) -> Path:
    """`source` rewritten by GDCM in another (compressed) transfer syntax."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    if not reader.Read():
        raise RuntimeError(f"gdcm cannot read {source}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(syntax)))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"gdcm cannot transcode {source} to {syntax}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"gdcm cannot write {target}")
    return target


def structured_report(path: Path) -> Path:
    """A DICOM object with no image (a report)."""
    dataset = base_dataset(modality="SR", view=None)
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    return save(dataset, path)


def huge_header_dicom(path: Path, rows: int = 60000, columns: int = 60000) -> Path:
    """A tiny file whose header declares Rows x Columns far over any limit."""
    dataset = base_dataset()
    set_pixels(dataset, np.zeros((4, 4), np.uint8))
    dataset.Rows, dataset.Columns = rows, columns
    return save(dataset, path)
