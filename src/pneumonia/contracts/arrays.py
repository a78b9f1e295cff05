"""The processed splits the preprocess stage writes and train and evaluate read.

Per split folder: ``images.npy`` (N, S, S, 1) uint8, ``labels.npy`` (N,) uint8 (1 = pneumonia)
and ``index.csv`` (one row per image, in array order); ``meta.json`` beside the split folders
records the preprocess settings. ``.npy`` files carry no timestamps, so identical inputs and
params give byte-identical outputs and DVC sees no change on a re-run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pneumonia.contracts.files import replacing, write_csv
from pneumonia.errors import PipelineError

IMAGES_FILE = "images.npy"
LABELS_FILE = "labels.npy"
INDEX_FILE = "index.csv"
INDEX_COLUMNS = ("path", "label", "patient_id", "sha256")


class ProcessedDataError(PipelineError, ValueError):
    """Processed data is missing or does not match what the caller needs."""


def write_split(directory: Path, frame: pd.DataFrame, labels: np.ndarray) -> None:
    """labels.npy and index.csv of a split whose images.npy is already written; each written
    whole or not at all (contracts.files.replacing)."""
    with replacing(directory / LABELS_FILE) as partial, partial.open("wb") as handle:
        np.save(handle, labels, allow_pickle=False)
    write_csv(directory / INDEX_FILE, frame.loc[:, list(INDEX_COLUMNS)])


def split_files(directory: Path) -> list[Path]:
    """The files of one processed split folder (whether or not they exist yet)."""
    return [directory / name for name in (IMAGES_FILE, LABELS_FILE, INDEX_FILE)]


def load_split(directory: Path, mmap: bool = True) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Read back what write_split wrote; clear error when it is missing."""
    missing = [
        name for name in (IMAGES_FILE, LABELS_FILE, INDEX_FILE) if not (directory / name).exists()
    ]
    if missing:
        raise ProcessedDataError(
            f"{directory}: missing {', '.join(missing)}; run the preprocess stage (dvc repro)"
        )
    images = np.load(directory / IMAGES_FILE, mmap_mode="r" if mmap else None)
    labels = np.load(directory / LABELS_FILE)
    return images, labels, pd.read_csv(directory / INDEX_FILE)
