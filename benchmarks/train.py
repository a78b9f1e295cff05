"""Training throughput of our input pipeline against the seed projects' way, same model, same run;
or, with --architectures, training images/s of each architecture at each image size.

    python benchmarks/train.py [--images 1024] [--batch-size 32]
    python benchmarks/train.py --architectures cnn,mobilenetv3small,densenet121 --sizes 128,224 \
        [--steps 20] [--batch-size 32]

Needs `dvc repro` to have run preprocess (data/processed and data/raw/images). Baseline: the seed
projects' `keras.utils.image_dataset_from_directory`, which decodes and resizes every JPEG from
disk every epoch. Ours: `pneumonia.model.dataset.make_dataset` over the preprocessed uint8 arrays
(shuffle, batch, seeded augmentation, prefetch). Both feed the same CNN (params.yaml's fixed
hyperparameters) at the same image size on the same images; each side trains one warm-up epoch,
then one timed epoch. It prints images/s for the input pipeline alone and for training, and the
ratio to the baseline.

--architectures needs no data: each architecture (the cnn with params.yaml's shape, a backbone
with random weights, which cost the same to train as ImageNet's) trains on synthetic uint8
images through the stage's input pipeline (make_dataset, params.yaml's augmentation): three
untimed batches (tracing), then --steps timed batches. A backbone is timed twice: in its warm-up
phase (backbone frozen) and fine-tuning everything (`unfreeze: all`).
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

from pneumonia.config import load_config, resolve_workers
from pneumonia.contracts.arrays import load_split
from pneumonia.model.backbones import freeze_backbone, unfreeze_backbone
from pneumonia.model.dataset import make_dataset
from pneumonia.model.training import compile_model, compiled_model, seed_everything


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


def architecture_rates(
    architecture: str, size: int, steps: int, batch_size: int, config
) -> dict[str, float]:
    """Training images/s of one architecture at one size: {phase: rate}."""
    model_config = config.train.model.model_copy(
        update={"architecture": architecture, "weights": "none"}
    )
    hyperparameters = config.train.hyperparameters.model_copy(
        update={"model": model_config, "batch_size": batch_size}
    )
    count = steps * batch_size
    generator = np.random.default_rng(0)
    images = generator.integers(0, 256, (count, size, size, 1), dtype=np.uint8)
    labels = (np.arange(count) % 2).astype(np.uint8)
    dataset = make_dataset(
        images,
        labels,
        batch_size,
        training=True,
        seed=config.train.seed,
        augmentation=config.train.augmentation,
    )
    seed_everything(config.train.seed)
    model = compiled_model(size, hyperparameters)
    phases = {"training": None}
    if model_config.is_backbone:
        phases = {
            "warm-up (frozen)": freeze_backbone,
            "fine-tuning (all)": lambda model: unfreeze_backbone(model, "all", pretrained=False),
        }
    rates = {}
    for phase, change in phases.items():
        if change is not None:
            change(model)
        compile_model(model, hyperparameters.optimizer)
        # Tracing and warm-up: a few batches, not a whole untimed epoch.
        model.fit(dataset, epochs=1, steps_per_epoch=min(3, steps), verbose=0)
        started = time.perf_counter()
        model.fit(dataset, epochs=1, verbose=0)
        rates[phase] = count / (time.perf_counter() - started)
    return rates


def compare_architectures(arguments) -> None:
    config = load_config()
    architectures = [name.strip() for name in arguments.architectures.split(",") if name.strip()]
    sizes = [int(size) for size in arguments.sizes.split(",")]
    print(
        f"training images/s, batch {arguments.batch_size}, {arguments.steps} timed steps, "
        f"{resolve_workers(0)} CPU core(s), device "
        f"{'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'}"
    )
    print(f"{'architecture':<18} {'phase':<20} " + " ".join(f"{size:>8}px" for size in sizes))
    for architecture in architectures:
        by_size = {
            size: architecture_rates(
                architecture, size, arguments.steps, arguments.batch_size, config
            )
            for size in sizes
        }
        for phase in by_size[sizes[0]]:
            rates = " ".join(f"{by_size[size][phase]:10.1f}" for size in sizes)
            print(f"{architecture:<18} {phase:<20} {rates}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--architectures",
        help="comma-separated: cnn and/or backbones (train.model.architecture values)",
    )
    parser.add_argument("--sizes", default="128,224", help="image sides, comma-separated")
    parser.add_argument("--steps", type=int, default=20, help="timed batches per phase")
    arguments = parser.parse_args()
    if arguments.architectures:
        compare_architectures(arguments)
        return
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
