"""Preprocess stage logic: decode, grayscale, resize (letterbox | stretch | crop), optional CLAHE.

Output per split: ``images.npy`` (N, S, S, 1) uint8, ``labels.npy`` (N,) uint8 (1 = pneumonia)
and ``index.csv``. ``.npy`` files carry no timestamps, so identical inputs and params give
byte-identical outputs and DVC sees no change on a re-run.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from pneumonia.config import CLASSES, ConfigError, PreprocessConfig, parse_preprocess
from pneumonia.errors import PipelineError
from pneumonia.images import load_grayscale
from pneumonia.parallel import parallel_map

POSITIVE_CLASS = "PNEUMONIA"
INDEX_COLUMNS = ("path", "label", "patient_id", "sha256")
# The settings a trained model needs to preprocess new images the same way.
MODEL_INPUT_KEYS = ("image_size", "resize", "clahe", "clahe_clip_limit", "clahe_tile_grid")
_ROWS_PER_TASK = 64


class PreprocessError(PipelineError, ValueError):
    """Processed data is missing or does not match what the caller needs."""


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
    raise ValueError(f"preprocess.resize must be letterbox, stretch or crop, got {mode!r}")


def apply_clahe(pixels: np.ndarray, clip_limit: float, tile_grid: int) -> np.ndarray:
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid))
    return clahe.apply(np.ascontiguousarray(pixels))


def preprocess_image(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """One grayscale image -> (S, S) uint8. CLAHE sees the content only, not the letterbox bars."""
    content, (top, left) = resize_gray(image, config.image_size, config.resize)
    if config.clahe:
        content = apply_clahe(content, config.clahe_clip_limit, config.clahe_tile_grid)
    if content.shape == (config.image_size, config.image_size):
        return np.ascontiguousarray(content, dtype=np.uint8)
    frame = np.zeros((config.image_size, config.image_size), dtype=np.uint8)
    frame[top : top + content.shape[0], left : left + content.shape[1]] = content
    return frame


def preprocess_file(path: str | Path, config: PreprocessConfig) -> np.ndarray:
    """Decode (at reduced JPEG scale where it still covers the output) and preprocess one file."""
    image = load_grayscale(path, target=config.image_size, resize=config.resize)
    return preprocess_image(image, config)


def preprocess_bytes(
    data: bytes, config: PreprocessConfig, name: str = "image bytes"
) -> np.ndarray:
    """preprocess_file for an encoded image held in memory (what the served model receives):
    the same decode, draft scale and resize, so a file and its bytes give identical pixels."""
    image = load_grayscale(
        io.BytesIO(data), target=config.image_size, resize=config.resize, name=name
    )
    return preprocess_image(image, config)


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
    written = sum(parallel_map(_fill_rows, tasks, config.workers, chunksize=1))
    if written != len(paths):
        raise PreprocessError(f"preprocess: wrote {written} of {len(paths)} images to {output}")
    return (frame["label"].to_numpy() == POSITIVE_CLASS).astype(np.uint8)


def write_split(directory: Path, frame: pd.DataFrame, labels: np.ndarray) -> None:
    np.save(directory / "labels.npy", labels, allow_pickle=False)
    frame.loc[:, list(INDEX_COLUMNS)].to_csv(directory / "index.csv", index=False)


def load_split(directory: Path, mmap: bool = True) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Read back what write_split wrote; clear error when it is missing."""
    missing = [
        name
        for name in ("images.npy", "labels.npy", "index.csv")
        if not (directory / name).exists()
    ]
    if missing:
        raise PreprocessError(
            f"{directory}: missing {', '.join(missing)}; run the preprocess stage (dvc repro)"
        )
    images = np.load(directory / "images.npy", mmap_mode="r" if mmap else None)
    labels = np.load(directory / "labels.npy")
    return images, labels, pd.read_csv(directory / "index.csv")


def model_input_settings(config: PreprocessConfig) -> dict[str, Any]:
    settings = asdict(config)
    return {key: settings[key] for key in MODEL_INPUT_KEYS}


def config_from_settings(settings: dict[str, Any], source: str | Path) -> PreprocessConfig:
    """The inverse of model_input_settings: a model's recorded preprocess settings (model card,
    served model) back to a PreprocessConfig, validated like params.yaml's section."""
    if not isinstance(settings, dict):
        raise PreprocessError(f"{source}: preprocess settings must be a mapping, got {settings!r}")
    missing = [key for key in MODEL_INPUT_KEYS if key not in settings]
    if missing:
        raise PreprocessError(f"{source}: preprocess settings lack {', '.join(missing)}")
    # workers and sample_grid only matter to the stage; one image at a time needs neither.
    section = {**settings, "workers": 1, "sample_grid": 0}
    try:
        return parse_preprocess({"preprocess": section})
    except ConfigError as error:
        raise PreprocessError(f"{source}: bad preprocess settings: {error}") from error


def write_meta(path: Path, config: PreprocessConfig, counts: dict[str, int]) -> None:
    meta = {
        "preprocess": model_input_settings(config),
        "channels": 1,
        "dtype": "uint8",
        "classes": list(CLASSES),
        "positive_class": POSITIVE_CLASS,
        "counts": counts,
    }
    path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


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
        labels = preprocess_split(frame, images_dir, directory / "images.npy", config)
        write_split(directory, frame, labels)
        counts[name] = len(frame)
        summary[f"images_{name}"] = len(frame)
        summary[f"pneumonia_{name}"] = int(labels.sum())
    seconds = time.perf_counter() - started
    write_meta(output_dir / "meta.json", config, counts)
    summary["seconds"] = round(seconds, 3)
    summary["images_per_second"] = round(sum(counts.values()) / seconds, 1) if seconds else 0.0
    return summary
