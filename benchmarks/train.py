"""Training throughput of our input pipeline against the seed projects' way, same model, same run.

    python benchmarks/train.py [--images 1024] [--batch-size 32]

Needs `dvc repro` to have run preprocess (data/processed and data/raw/images). Baseline: the seed
projects' `keras.utils.image_dataset_from_directory`, which decodes and resizes every JPEG from
disk every epoch. Ours: `pneumonia.model.dataset.make_dataset` over the preprocessed uint8 arrays
(shuffle, batch, seeded augmentation, prefetch). Both feed the same CNN (params.yaml's fixed
hyperparameters) at the same image size on the same images; each side trains one warm-up epoch,
then one timed epoch. It prints images/s for the input pipeline alone and for training, and the
ratio to the baseline.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from pneumonia.config import load_config
from pneumonia.contracts.arrays import load_split
from pneumonia.model.dataset import make_dataset
from pneumonia.model.training import compiled_model, seed_everything


def seed_projects_dataset(folder: Path, size: int, batch_size: int, seed: int) -> tf.data.Dataset:
    dataset = keras.utils.image_dataset_from_directory(
        folder,
        labels="inferred",
        label_mode="binary",
        color_mode="grayscale",
        image_size=(size, size),
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
        verbose=False,
    )
    # Our model takes uint8 pixels; the cast is the only change to the seed projects' pipeline.
    return dataset.map(lambda x, y: (tf.cast(x, tf.uint8), y))


def pipeline_rate(dataset: tf.data.Dataset, images: int) -> float:
    for _ in dataset:  # warm-up: file cache, tracing
        pass
    started = time.perf_counter()
    for _ in dataset:
        pass
    return images / (time.perf_counter() - started)


def training_rate(dataset: tf.data.Dataset, images: int, config) -> float:
    seed_everything(config.train.seed)
    model = compiled_model(config.preprocess.image_size, config.train.hyperparameters)
    model.fit(dataset, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0)
    return images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    arguments = parser.parse_args()
    config = load_config()
    images, labels, index = load_split(config.paths.processed_split("train"), mmap=False)
    count = min(arguments.images, len(images))
    # A seeded random subset: the arrays are sorted by path, so a prefix would be one class.
    chosen = np.sort(np.random.default_rng(0).choice(len(images), count, replace=False))
    images, labels, index = images[chosen], labels[chosen], index.iloc[chosen]
    ours = make_dataset(
        images,
        labels,
        arguments.batch_size,
        training=True,
        seed=config.train.seed,
        augmentation=config.train.augmentation,
    )
    ours_plain = make_dataset(
        images, labels, arguments.batch_size, training=True, seed=config.train.seed
    )
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for path, label in zip(index["path"], index["label"], strict=True):
            target = folder / label / Path(path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to((config.paths.images / path).resolve())
        baseline = seed_projects_dataset(
            folder, config.preprocess.image_size, arguments.batch_size, config.train.seed
        )
        rows = [
            ("baseline: image_dataset_from_directory", baseline),
            ("ours: arrays, no augmentation", ours_plain),
            ("ours: arrays + augmentation (the stage)", ours),
        ]
        results = [
            (name, pipeline_rate(data, count), training_rate(data, count, config))
            for name, data in rows
        ]
    print(
        f"{count} train images at {config.preprocess.image_size}px, batch "
        f"{arguments.batch_size}, model {config.train.model}"
    )
    print(f"{'input pipeline':>58} {'training':>12}")
    base_pipeline, base_training = results[0][1], results[0][2]
    for name, pipeline, training in results:
        print(
            f"{name:<42} {pipeline:9.0f} img/s {training:7.0f} img/s  "
            f"({pipeline / base_pipeline:.2f}x, {training / base_training:.2f}x)"
        )


if __name__ == "__main__":
    main()
