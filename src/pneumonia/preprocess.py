"""Preprocess stage logic: decode, grayscale, resize (letterbox | stretch | crop), optional CLAHE.

Output per split: ``images.npy`` (N, S, S, 1) uint8, ``labels.npy`` (N,) uint8 (1 = pneumonia)
and ``index.csv``. ``.npy`` files carry no timestamps, so identical inputs and params give
byte-identical outputs and DVC sees no change on a re-run.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from pneumonia.config import CLASSES, PreprocessConfig
from pneumonia.errors import PipelineError
from pneumonia.images import load_grayscale
from pneumonia.parallel import parallel_map

POSITIVE_CLASS = "PNEUMONIA"
INDEX_COLUMNS = ("path", "label", "patient_id", "sha256")
# The settings a trained model needs to preprocess new images the same way.
MODEL_INPUT_KEYS = ("image_size", "resize", "clahe", "clahe_clip_limit", "clahe_tile_grid")
_RESAMPLE = Image.Resampling.BICUBIC


class PreprocessError(PipelineError, ValueError):
    """Processed data is missing or does not match what the caller needs."""


def resize_gray(image: Image.Image, size: int, mode: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Resized content, and where it sits in the size x size frame (top, left) for letterbox."""
    width, height = image.size
    if mode == "stretch":
        return np.asarray(image.resize((size, size), _RESAMPLE)), (0, 0)
    if mode == "letterbox":
        scale = size / max(width, height)
        new_width = max(1, round(width * scale))
        new_height = max(1, round(height * scale))
        content = np.asarray(image.resize((new_width, new_height), _RESAMPLE))
        return content, ((size - new_height) // 2, (size - new_width) // 2)
    if mode == "crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        box = (left, top, left + side, top + side)
        return np.asarray(image.resize((size, size), _RESAMPLE, box=box)), (0, 0)
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


def preprocess_split(
    frame: pd.DataFrame, images_dir: Path, config: PreprocessConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S, 1) uint8 images and (N,) uint8 labels for the rows of one split, in row order."""
    size = config.image_size
    images = np.empty((len(frame), size, size, 1), dtype=np.uint8)
    paths = [images_dir / path for path in frame["path"]]
    work = functools.partial(preprocess_file, config=config)
    for position, pixels in enumerate(parallel_map(work, paths, config.workers)):
        images[position, :, :, 0] = pixels
    labels = (frame["label"].to_numpy() == POSITIVE_CLASS).astype(np.uint8)
    return images, labels


def write_split(directory: Path, frame: pd.DataFrame, images: np.ndarray, labels: np.ndarray):
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "images.npy", images, allow_pickle=False)
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
        images, labels = preprocess_split(frame, images_dir, config)
        write_split(output_dir / name, frame, images, labels)
        counts[name] = len(frame)
        summary[f"images_{name}"] = len(frame)
        summary[f"pneumonia_{name}"] = int(labels.sum())
    seconds = time.perf_counter() - started
    write_meta(output_dir / "meta.json", config, counts)
    summary["seconds"] = round(seconds, 3)
    summary["images_per_second"] = round(sum(counts.values()) / seconds, 1) if seconds else 0.0
    return summary
