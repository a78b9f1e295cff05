"""Preprocess throughput on the whole local dataset: our stage code against a naive baseline.

    python benchmarks/preprocess.py [--source ../shared/data/chest_xray] [--image-size 128]

Baseline (the usual way): one process, every image fully decoded with Pillow, converted to
grayscale, then resized. Ours: `pneumonia.data.preprocess.preprocess_split` as the stage runs it
(a process per core, JPEG draft decoding straight to grayscale at the smallest scale that covers
the output). Both run here, one after the other, on the same files and params; the ratio is the
figure to read. It also prints how far the two outputs differ, to show the shortcut is exact enough.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from pneumonia.config import (
    DEFAULT_LIMITS,
    ImageInput,
    PreprocessConfig,
    resolve_workers,
)
from pneumonia.data.layout import discover
from pneumonia.data.preprocess import preprocess_split

DEFAULT_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chest_xray"


def baseline(paths: list[Path], config: PreprocessConfig) -> np.ndarray:
    """The usual Pillow code: full decode, grayscale, fit into the square (letterbox only)."""
    size = (config.image.size, config.image.size)
    images = np.empty((len(paths), *size), dtype=np.uint8)
    for position, path in enumerate(paths):
        with Image.open(path) as image:
            gray = image.convert("L")
        images[position] = np.asarray(ImageOps.pad(gray, size, Image.Resampling.BICUBIC, color=0))
    return images


def best_of(repeats: int, function) -> float:
    """Fastest of a few runs: the least disturbed by whatever else the machine does."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        timings.append(time.perf_counter() - started)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs per side")
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0 = all)")
    arguments = parser.parse_args()

    files = [
        (Path(folder) / name).relative_to(arguments.source).as_posix()
        for folder, _, names in os.walk(arguments.source)
        for name in names
    ]
    images = discover(files).images
    if arguments.limit:
        images = images[: arguments.limit]
    if not images:
        raise SystemExit(f"{arguments.source}: no images in the Kaggle layout")
    frame = pd.DataFrame(
        {"path": [image.source for image in images], "label": [image.label for image in images]}
    )
    config = PreprocessConfig(
        image=ImageInput(
            size=arguments.image_size,
            resize="letterbox",
            clahe=False,
            clahe_clip_limit=2.0,
            clahe_tile_grid=8,
        ),
        limits=DEFAULT_LIMITS,
        workers=0,
        sample_grid=0,
    )
    paths = [arguments.source / path for path in frame["path"]]

    # Warm the page cache so neither side pays for the first read from disk.
    for path in paths:
        path.read_bytes()
    single_process = config.model_copy(update={"workers": 1})
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "images.npy"
        baseline_seconds = best_of(arguments.repeats, lambda: baseline(paths, config))
        single_seconds = best_of(
            arguments.repeats,
            lambda: preprocess_split(frame, arguments.source, output, single_process),
        )
        ours_seconds = best_of(
            arguments.repeats, lambda: preprocess_split(frame, arguments.source, output, config)
        )
        ours = np.load(output)
    reference = baseline(paths, config)

    count = len(paths)
    difference = np.abs(ours[..., 0].astype(np.int16) - reference.astype(np.int16))
    spec = config.image
    print(f"images: {count} from {arguments.source}, output {spec.size}px {spec.resize}")
    print(f"cores used by ours: {resolve_workers(0)}")
    print(
        f"baseline (1 process, full decode):   {count / baseline_seconds:8.1f} images/s "
        f"({baseline_seconds:.2f} s)"
    )
    print(
        f"ours, 1 process:                     {count / single_seconds:8.1f} images/s "
        f"({single_seconds:.2f} s)"
    )
    print(
        f"ours, all cores (the stage):         {count / ours_seconds:8.1f} images/s "
        f"({ours_seconds:.2f} s)"
    )
    print(f"speed-up vs baseline: {baseline_seconds / ours_seconds:.2f}x (target >= 2x)")
    print(
        f"pixel difference vs baseline (bicubic vs area filter): mean {difference.mean():.2f}, "
        f"99th percentile {np.percentile(difference, 99):.0f} (of 255)"
    )


if __name__ == "__main__":
    main()
