"""Preprocess stage logic: every split's images through `imaging.transforms` into the processed
arrays (`contracts.arrays`), in parallel, plus a sample grid per split."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pneumonia.config import PreprocessConfig
from pneumonia.contracts.arrays import (
    IMAGES_FILE,
    INDEX_COLUMNS,
    load_split,
    split_files,
    write_split,
)
from pneumonia.contracts.files import replacing, write_json
from pneumonia.contracts.labels import CLASSES, POSITIVE_CLASS, binary_labels
from pneumonia.contracts.paths import META_FILE, Paths
from pneumonia.data.parallel import parallel_map
from pneumonia.errors import PipelineError, StorageError, free_bytes, storage_message
from pneumonia.imaging.transforms import model_input_settings, preprocess_file
from pneumonia.progress import Progress

_ROWS_PER_TASK = 64


class PreprocessError(PipelineError, ValueError):
    """A split cannot be preprocessed (it is empty, or images went missing)."""


def _fill_rows(task: tuple[Path, int, list[Path], PreprocessConfig]) -> int:
    """Worker: preprocess a run of files straight into their rows of the output .npy."""
    output, start, paths, config = task
    images = np.load(output, mmap_mode="r+")
    for offset, path in enumerate(paths):
        images[start + offset, :, :, 0] = preprocess_file(path, config)
    images.flush()
    return len(paths)


# A .npy header (numpy pads it to a multiple of 64 bytes; 128 covers these arrays), and what a
# file may take beyond its bytes on disk (the last, partly used block).
_NPY_HEADER_BYTES = 128
_BLOCK_SLACK_BYTES = 4096
# posix_fallocate errors meaning "this filesystem cannot reserve", not "no room".
_NO_RESERVATION = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


def reserve_npy(path: Path, shape: tuple[int, ...], named: Path) -> None:
    """Write a uint8 .npy header for `shape` at `path` and reserve the file's full size on disk.

    Workers write into a memory map of this file. On a sparse file, a page the full disk cannot
    back kills the writer with SIGBUS; reserved up front, a full disk is an error here instead,
    before any work (named after `named`, the file the user knows).
    """
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
        "fortran_order": False,
        "shape": shape,
    }
    with path.open("wb") as handle:
        # The header np.save and open_memmap write (format 1.0), so the bytes stay the same.
        np.lib.format.write_array_header_1_0(handle, header)
        size = handle.tell() + int(np.prod(shape))
        handle.flush()
        try:
            if not hasattr(os, "posix_fallocate"):  # not on Linux: no reservation
                raise OSError(errno.ENOSYS, "posix_fallocate is not available")
            os.posix_fallocate(handle.fileno(), 0, size)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageError(storage_message(named, error.errno, needed=size)) from None
            if error.errno not in _NO_RESERVATION:
                raise
            # The free-space check of run_preprocess stands in for the reservation.
            handle.truncate(size)


def preprocess_split(
    frame: pd.DataFrame, images_dir: Path, output: Path, config: PreprocessConfig
) -> np.ndarray:
    """Write the rows of one split, in row order, as an (N, S, S, 1) uint8 .npy; returns labels.

    Workers write into the memory-mapped output file, so no image crosses a process boundary
    and the whole split never has to fit in memory. The file is written under a temporary name
    and renamed to `output` only once every row is in (contracts.files.replacing).
    """
    size = config.image.size
    paths = [images_dir / path for path in frame["path"]]
    with replacing(output) as partial:
        reserve_npy(partial, (len(frame), size, size, 1), output)
        tasks = [
            (partial, start, paths[start : start + _ROWS_PER_TASK], config)
            for start in range(0, len(paths), _ROWS_PER_TASK)
        ]
        written = 0
        label = f"preprocess {output.parent.name}"
        with Progress(label, len(paths), "images") as progress:
            for count in parallel_map(_fill_rows, tasks, config.workers, chunksize=1, label=label):
                written += count
                progress.update(count)
        if written != len(paths):
            raise PreprocessError(f"preprocess: wrote {written} of {len(paths)} images to {output}")
    return binary_labels(frame["label"])


def output_bytes(frame: pd.DataFrame, image_size: int) -> int:
    """Bytes one split's files take on disk: images.npy, labels.npy and index.csv."""
    images = len(frame) * image_size * image_size
    index = len(frame.loc[:, list(INDEX_COLUMNS)].to_csv(index=False).encode())
    return images + len(frame) + index + 3 * (_NPY_HEADER_BYTES + _BLOCK_SLACK_BYTES)


def check_free_space(output_dir: Path, frames: dict[str, pd.DataFrame], image_size: int) -> None:
    """Refuse, before any work, outputs that cannot fit: the files this run replaces count as
    free (run_preprocess removes them first)."""
    needed = sum(output_bytes(frame, image_size) for frame in frames.values())
    replaced = sum(
        path.stat().st_size
        for name in frames
        for path in (*split_files(output_dir / name), output_dir / META_FILE)
        if path.is_file()
    )
    free = free_bytes(output_dir)
    if free is not None and needed > free + replaced:
        raise StorageError(storage_message(output_dir, errno.ENOSPC, needed=needed - replaced))


def remove_outputs(output_dir: Path, splits: list[str]) -> None:
    """Remove what a previous run left for these splits, meta.json first: a run that fails
    part-way leaves missing files (which load_split reports), never one split of this run beside
    another of an older one."""
    (output_dir / META_FILE).unlink(missing_ok=True)
    for name in splits:
        for path in split_files(output_dir / name):
            path.unlink(missing_ok=True)


def write_meta(path: Path, config: PreprocessConfig, counts: dict[str, int]) -> None:
    write_json(
        path,
        {
            "preprocess": model_input_settings(config),
            "channels": 1,
            "dtype": "uint8",
            "classes": list(CLASSES),
            "positive_class": POSITIVE_CLASS,
            "counts": counts,
        },
    )


def sample_grid(images: np.ndarray, labels: np.ndarray, count: int) -> Image.Image | None:
    """A grid of the first count/2 images of each class (deterministic), for eyeballing."""
    if count <= 0 or len(images) == 0:
        return None
    per_class = max(1, count // 2)
    picks = np.concatenate([np.flatnonzero(labels == value)[:per_class] for value in (0, 1)])
    columns = int(np.ceil(np.sqrt(len(picks))))
    rows = int(np.ceil(len(picks) / columns))
    size = images.shape[1]
    canvas = np.full((rows * size, columns * size), 255, dtype=np.uint8)
    for slot, index in enumerate(picks):
        row, column = divmod(slot, columns)
        canvas[row * size : (row + 1) * size, column * size : (column + 1) * size] = images[
            index, :, :, 0
        ]
    return Image.fromarray(canvas)


def write_sample_grids(paths: Paths, splits: tuple[str, ...], count: int) -> None:
    """reports/samples/<split>.png from the processed arrays, for eyeballing."""
    paths.samples.mkdir(parents=True, exist_ok=True)
    for name in splits:
        images, labels, _ = load_split(paths.processed_split(name))
        grid = sample_grid(images, labels, count)
        if grid is not None:
            with replacing(paths.sample_grid(name)) as partial:
                grid.save(partial)


def run_preprocess(
    frames: dict[str, pd.DataFrame], images_dir: Path, output_dir: Path, config: PreprocessConfig
) -> dict[str, float]:
    """Preprocess every split into output_dir; returns counts and throughput for the metrics."""
    summary: dict[str, float] = {}
    counts: dict[str, int] = {}
    started = time.perf_counter()
    for name, frame in frames.items():
        if frame.empty:
            raise PreprocessError(
                f"preprocess: split '{name}' has no images; check the split stage"
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    check_free_space(output_dir, frames, config.image.size)
    remove_outputs(output_dir, list(frames))
    for name, frame in frames.items():
        directory = output_dir / name
        labels = preprocess_split(frame, images_dir, directory / IMAGES_FILE, config)
        write_split(directory, frame, labels)
        counts[name] = len(frame)
        summary[f"images_{name}"] = len(frame)
        summary[f"pneumonia_{name}"] = int(labels.sum())
    seconds = time.perf_counter() - started
    write_meta(output_dir / META_FILE, config, counts)
    summary["seconds"] = round(seconds, 3)
    summary["images_per_second"] = round(sum(counts.values()) / seconds, 1) if seconds else 0.0
    return summary
