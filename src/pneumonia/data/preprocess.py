"""Preprocess stage logic: every split's images through `imaging.transforms` into the processed
arrays (`contracts.arrays`), in parallel, plus a sample grid per split."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pneumonia.config import PreprocessConfig
from pneumonia.contracts.arrays import IMAGES_FILE, load_split, write_split
from pneumonia.contracts.files import write_json
from pneumonia.contracts.labels import CLASSES, POSITIVE_CLASS, binary_labels
from pneumonia.contracts.paths import META_FILE, Paths
from pneumonia.data.parallel import parallel_map
from pneumonia.errors import PipelineError
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


def preprocess_split(
    frame: pd.DataFrame, images_dir: Path, output: Path, config: PreprocessConfig
) -> np.ndarray:
    """Write the rows of one split, in row order, as an (N, S, S, 1) uint8 .npy; returns labels.

    Workers write into the memory-mapped output file, so no image crosses a process boundary
    and the whole split never has to fit in memory.
    """
    size = config.image_size
    output.parent.mkdir(parents=True, exist_ok=True)
    images = np.lib.format.open_memmap(
        output, mode="w+", dtype=np.uint8, shape=(len(frame), size, size, 1)
    )
    del images  # header and size are on disk; workers open their own maps
    paths = [images_dir / path for path in frame["path"]]
    tasks = [
        (output, start, paths[start : start + _ROWS_PER_TASK], config)
        for start in range(0, len(paths), _ROWS_PER_TASK)
    ]
    written = 0
    with Progress(f"preprocess {output.parent.name}", len(paths), "images") as progress:
        for count in parallel_map(_fill_rows, tasks, config.workers, chunksize=1):
            written += count
            progress.update(count)
    if written != len(paths):
        raise PreprocessError(f"preprocess: wrote {written} of {len(paths)} images to {output}")
    return binary_labels(frame["label"])


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
            grid.save(paths.sample_grid(name))


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
