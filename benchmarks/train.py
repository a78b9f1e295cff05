"""Training throughput of our input pipeline against the seed projects' way, same model, same run;
or, with --architectures, training images/s of each architecture at each image size.

    python benchmarks/train.py [--images 1024] [--batch-size 32]
    python benchmarks/train.py --architectures cnn,mobilenetv3small,densenet121 --sizes 128,224 \
        [--steps 20] [--batch-size 32]
    python benchmarks/train.py --levers [--steps 20] [--rounds 4] [--images 1024]
    python benchmarks/train.py --op-profile [--steps 20]

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

--levers measures the training stage against this machine's limit, in one run: the peak fp32
GFLOP/s of a large TensorFlow matrix multiply; then, for the default network and each lever
(the augmentation, Keras' batch norm vs TensorFlow's fused kernel, batch size, plain vs
separable convolutions; XLA and thread settings in processes of their own), FLOPs per image,
training images/s, the GFLOP/s they achieve and their share of the peak, and the ratio to
"before" (three Keras resampling layers and Keras' batch norm, as the stage had).
The levers are timed in rounds, interleaved in one process, best round kept: this machine's
speed changes by up to 1.7x from one minute to the next. Then the epoch boundary (a fresh
tf.data iterator per epoch vs one repeated iterator) and scoring (predict_on_batch vs
model.predict). Needs preprocess's train and val arrays.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from flops import forward_flops, training_flops  # benchmarks/flops.py, beside this script
from keras import layers

from pneumonia.config import Hyperparameters, load_config, resolve_workers
from pneumonia.contracts.arrays import load_split
from pneumonia.model.backbones import freeze_backbone, unfreeze_backbone
from pneumonia.model.dataset import make_dataset
from pneumonia.model.network import build_model
from pneumonia.model.scoring import score
from pneumonia.model.training import compile_model, seed_everything


def compiled_model(image_size: int, hyperparameters: Hyperparameters) -> keras.Model:
    """The model built as the train stage builds it to train (fused batch norm), compiled with
    every layer trainable (a backbone as if unfrozen)."""
    model = build_model(image_size, hyperparameters.model, fused_batch_norm=True)
    compile_model(model, hyperparameters.optimizer)
    return model


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
    model = compiled_model(config.preprocess.image.size, config.train.hyperparameters)
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


def peak_gflops(size: int = 4096, repeats: int = 5) -> float:
    """The best fp32 GFLOP/s of a size x size matrix multiply in TensorFlow (this machine's
    practical peak: all cores, the widest vector units TensorFlow's kernels use)."""
    first = tf.random.normal([size, size], seed=1)
    second = tf.random.normal([size, size], seed=2)
    multiply = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    multiply(first, second).numpy()
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        multiply(first, second).numpy()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def keras_layers_augmentation(config, seed: int) -> list:
    """The augmentation as it was before the fused affine: one Keras layer (and one bilinear
    resampling of the batch) per geometric jitter."""
    chosen = []
    if config.rotation > 0:
        chosen.append(layers.RandomRotation(config.rotation, fill_mode="constant", seed=seed))
    if config.shift > 0:
        chosen.append(
            layers.RandomTranslation(
                config.shift, config.shift, fill_mode="constant", seed=seed + 1
            )
        )
    if config.zoom > 0:
        chosen.append(layers.RandomZoom(config.zoom, fill_mode="constant", seed=seed + 2))
    if config.contrast > 0:
        chosen.append(layers.RandomContrast(config.contrast, value_range=(0, 255), seed=seed + 3))
    return chosen


def before_dataset(images, labels, batch_size: int, seed: int, augmentation) -> tf.data.Dataset:
    jitter = keras_layers_augmentation(augmentation, seed)

    def augment(batch, target):
        pixels = tf.cast(batch, tf.float32)
        for layer in jitter:
            pixels = layer(pixels, training=True)
        return tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8), target

    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype("float32")))
    dataset = dataset.shuffle(len(images), seed=seed).batch(batch_size).repeat()
    return dataset.map(augment).prefetch(tf.data.AUTOTUNE)


class Lever:
    """One variant of the training stage, built once, timed in rounds alternating with the
    others (this machine's speed changes from minute to minute: only a comparison inside one
    process, interleaved, gives a ratio worth printing)."""

    def __init__(self, name: str, images, labels, config, determinism: bool = True):
        self.name, self.rates = name, []
        seed = config.train.seed
        self.batch_size = {"batch 16": 16, "batch 64": 64}.get(name, config.train.batch_size)
        model_config = config.train.model
        if name.startswith("plain"):
            filters = int(name.rsplit(" ", 1)[1])
            model_config = model_config.model_copy(
                update={"convolution": "plain", "base_filters": filters}
            )
        if determinism:
            seed_everything(seed)
        else:
            keras.utils.set_random_seed(seed)
        fused = "Keras batch norm" not in name
        self.model = build_model(images.shape[1], model_config, fused_batch_norm=fused)
        compile_model(self.model, config.train.optimizer)
        if name.endswith("+ XLA"):
            self.model.jit_compile = True  # Keras allows it only with op determinism off
        augmentation = None if name == "no augmentation" else config.train.augmentation
        if name.startswith("before"):
            self.dataset = before_dataset(images, labels, self.batch_size, seed, augmentation)
        else:
            self.dataset = make_dataset(
                images,
                labels,
                self.batch_size,
                training=True,
                seed=seed,
                augmentation=augmentation,
                repeat=True,
            )
        self.flops = training_flops(self.model)
        # Tracing (and XLA compiling): three untimed batches.
        self.model.fit(self.dataset, epochs=1, steps_per_epoch=3, verbose=0, shuffle=False)

    def time(self, steps: int) -> None:
        started = time.perf_counter()
        self.model.fit(self.dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
        self.rates.append(steps * self.batch_size / (time.perf_counter() - started))

    @property
    def best(self) -> float:
        return max(self.rates)


def interleaved(levers: list[Lever], rounds: int, steps: int) -> list[Lever]:
    for _ in range(rounds):
        for lever in levers:
            lever.time(steps)
    return levers


# The stage's training step as it is now; the rows before it are what it was.
STAGE = "the stage: fused affine, fused batch norm"
LEVERS = (
    "before: 3 Keras resampling layers, Keras batch norm",
    "one fused affine, Keras batch norm",
    STAGE,
    "no augmentation",
    "batch 16",
    "batch 64",
    "plain convolutions 16",
    "plain convolutions 8",
)
# (intra-op, inter-op) threads; TensorFlow's default is one per core for both.
THREADS = ((1, 1), (2, 1), (1, 2), (4, 4))


def epoch_boundary_rates(images, labels, epochs: int, steps: int, config) -> dict[str, float]:
    """Images/s over `epochs` short epochs, epoch boundaries included: as before (tf.data's
    autotuning on, a fresh iterator per epoch) against the stage (autotuning off, one repeated
    iterator). Tearing down an autotuned iterator could wait for the autotuner's thread."""
    seed, batch_size = config.train.seed, config.train.batch_size
    count = steps * batch_size
    autotuned = tf.data.Options()
    autotuned.autotune.enabled = True
    rates = {}
    for name, repeat in (
        ("before: autotuning on, an iterator per epoch", False),
        ("the stage: autotuning off, one iterator", True),
    ):
        seed_everything(seed)
        model = build_model(images.shape[1], config.train.model, fused_batch_norm=True)
        compile_model(model, config.train.optimizer)
        dataset = make_dataset(
            images[:count],
            labels[:count],
            batch_size,
            training=True,
            seed=seed,
            augmentation=config.train.augmentation,
            repeat=repeat,
        )
        if not repeat:
            dataset = dataset.with_options(autotuned)
        per_epoch = steps if repeat else None
        model.fit(dataset, epochs=1, steps_per_epoch=per_epoch, verbose=0, shuffle=False)
        started = time.perf_counter()
        model.fit(dataset, epochs=epochs, steps_per_epoch=per_epoch, verbose=0, shuffle=False)
        rates[name] = epochs * count / (time.perf_counter() - started)
    return rates


def scoring_rates(images, config, rounds: int = 3) -> dict[str, float]:
    """Best images/s of scoring val: the project's score() (predict_on_batch) and predict."""
    model = build_model(images.shape[1], config.train.model)
    runs = {
        "score(): predict_on_batch, batches of 128": lambda: score(model, images),
        "model.predict(batch_size=128)": lambda: model.predict(images, 128, verbose=0),
    }
    rates = {name: 0.0 for name in runs}
    for run in runs.values():
        run()
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            rates[name] = max(rates[name], len(images) / (time.perf_counter() - started))
    return rates


def subprocess_row(option: str, value: str, arguments) -> list[float]:
    """A row measured in a fresh process (thread settings and op determinism are set once per
    process, before TensorFlow runs anything): the numbers it prints on its last line."""
    result = subprocess.run(
        [
            sys.executable,
            __file__,
            option,
            value,
            "--steps",
            str(arguments.steps),
            "--images",
            str(arguments.images),
            "--rounds",
            str(arguments.rounds),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return [float(number) for number in result.stdout.strip().splitlines()[-1].split()]


def training_sample(count: int, config) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """A seeded random subset of train (the arrays are sorted by path: a prefix is one class):
    images, labels and their index rows."""
    images, labels, index = load_split(config.paths.processed_split("train"), mmap=False)
    count = min(count, len(images))
    chosen = np.sort(np.random.default_rng(0).choice(len(images), count, replace=False))
    return images[chosen], labels[chosen], index.iloc[chosen]


def print_row(name: str, flops: int, rate: float, peak: float, baseline: float) -> None:
    achieved = rate * flops / 1e9
    print(
        f"{name:<52} {flops / 1e6:7.1f} {rate:7.1f} {achieved:8.1f} {achieved / peak:8.1%} "
        f"{rate / baseline:5.2f}x"
    )


def compare_levers(arguments) -> None:
    config = load_config()
    images, labels, _ = training_sample(arguments.images, config)
    val_images, _, _ = load_split(config.paths.processed_split("val"), mmap=False)
    peak = peak_gflops()
    size = images.shape[1]
    network = build_model(size, config.train.model)
    print(
        f"{resolve_workers(0)} CPU core(s); peak {peak:.1f} GFLOP/s (4096x4096 fp32 matmul, "
        f"best of 5, TensorFlow {tf.__version__}); the default network at {size}px: "
        f"{forward_flops(network) / 1e6:.1f} MFLOPs forward, "
        f"{training_flops(network) / 1e6:.1f} MFLOPs per training image"
    )
    print(
        f"training images/s: best of {arguments.rounds} rounds of {arguments.steps} batches, "
        f"the levers interleaved in one process; {len(images)} train images"
    )
    print(f"{'lever':<52} {'MFLOPs':>7} {'img/s':>7} {'GFLOP/s':>8} {'of peak':>8} {'ratio':>6}")
    levers = [Lever(name, images, labels, config) for name in LEVERS]
    interleaved(levers, arguments.rounds, arguments.steps)
    baseline = levers[0].best
    for lever in levers:
        print_row(lever.name, lever.flops, lever.best, peak, baseline)
    stage = levers[LEVERS.index(STAGE)]
    without, with_xla = subprocess_row("--xla-row", "1", arguments)
    print_row("the stage, op determinism off", stage.flops, without, peak, without)
    print_row("the stage, op determinism off, + XLA", stage.flops, with_xla, peak, without)
    print(
        "  (XLA needs op determinism off: Keras turns jit_compile off under it, and TensorFlow "
        "has no deterministic XLA max-pool gradient; ratios against the row above)"
    )
    for intra, inter in THREADS:
        (rate,) = subprocess_row("--threads-row", f"{intra},{inter}", arguments)
        print_row(
            f"the stage, threads intra {intra} inter {inter}", stage.flops, rate, peak, stage.best
        )
    print("  (thread rows: each its own process, ratios against the stage's row above)")
    epochs, steps = 8, 20
    print(f"epoch boundary: {epochs} epochs of {steps} batches, the stage's pipeline")
    rates = epoch_boundary_rates(images, labels, epochs, steps, config)
    first = next(iter(rates.values()))
    for name, rate in rates.items():
        print(f"  {name:<42} {rate:7.1f} img/s {rate / first:5.2f}x")
    print(f"scoring {len(val_images)} val images (best of 3)")
    rates = scoring_rates(val_images, config)
    first = next(iter(rates.values()))
    for name, rate in rates.items():
        print(f"  {name:<42} {rate:7.1f} img/s {rate / first:5.2f}x")


# What an op of the training step belongs to, from its name in the trace (the layer's name, then
# the op's type): the first match wins.
OP_GROUPS = (
    ("augmentation (tf.data thread)", lambda path, kind, line: line.startswith("tf_data")),
    ("depthwise convolutions", lambda path, kind, line: "Depthwise" in kind),
    ("first convolution (3x3, one channel)", lambda path, kind, line: "block1_conv1" in path),
    ("pointwise convolutions (1x1)", lambda path, kind, line: "Conv2D" in kind),
    ("batch norm", lambda path, kind, line: "_bn" in path),
    ("ReLU", lambda path, kind, line: "Relu" in kind),
    ("max pooling", lambda path, kind, line: "MaxPool" in kind),
    ("optimizer (Adam)", lambda path, kind, line: "adam" in path.lower()),
)


def op_profile(arguments) -> None:
    """Where the training step's op time goes, by the TensorFlow profiler: op time summed by
    layer kind over --steps batches of the stage's pipeline and network (XLA off, as trained)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    config = load_config()
    images, labels, _ = training_sample(arguments.images, config)
    lever = Lever(STAGE, images, labels, config)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        started = time.perf_counter()
        lever.time(arguments.steps)
        seconds = time.perf_counter() - started
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        (trace,) = Path(logdir).rglob("*.xplane.pb")
        space.ParseFromString(trace.read_bytes())
    totals: dict[str, float] = {}
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith(("tf_Compute", "tf_data_private")):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                path, _, kind = name.rpartition(":")
                # Op events are `layer/.../op:Type`; the executor's and calls' wrap other ops.
                if not path or "::" in name or "Call" in kind:
                    continue
                group = next(
                    (label for label, test in OP_GROUPS if test(path, kind, line.name)),
                    "other (loss, metrics, casts, copies)",
                )
                totals[group] = totals.get(group, 0.0) + event.duration_ps / 1e12
    total = sum(totals.values())
    print(
        f"op time of {arguments.steps} training batches of {lever.batch_size} "
        f"({seconds:.1f} s wall, {resolve_workers(0)} core(s)), by the TensorFlow profiler"
    )
    for group, op_seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {group:<40} {op_seconds:7.2f} s {op_seconds / total:6.1%}")


def threads_row(arguments) -> None:
    intra, inter = (int(value) for value in arguments.threads_row.split(","))
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    config = load_config()
    images, labels, _ = training_sample(arguments.images, config)
    lever = Lever(STAGE, images, labels, config)
    interleaved([lever], arguments.rounds, arguments.steps)
    print(lever.best)


def xla_row(arguments) -> None:
    config = load_config()
    images, labels, _ = training_sample(arguments.images, config)
    levers = [
        Lever(name, images, labels, config, determinism=False)
        for name in ("the stage", "the stage + XLA")
    ]
    interleaved(levers, arguments.rounds, arguments.steps)
    print(" ".join(str(lever.best) for lever in levers))


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
    parser.add_argument("--levers", action="store_true", help="FLOP utilisation and the levers")
    parser.add_argument("--rounds", type=int, default=4, help="--levers: timed rounds per lever")
    parser.add_argument(
        "--op-profile", action="store_true", help="op time of the training step by layer kind"
    )
    parser.add_argument("--threads-row", help=argparse.SUPPRESS)  # one --levers row, own process
    parser.add_argument("--xla-row", help=argparse.SUPPRESS)  # the XLA rows, own process
    arguments = parser.parse_args()
    if arguments.threads_row:
        threads_row(arguments)
        return
    if arguments.xla_row:
        xla_row(arguments)
        return
    if arguments.op_profile:
        op_profile(arguments)
        return
    if arguments.levers:
        compare_levers(arguments)
        return
    if arguments.architectures:
        compare_architectures(arguments)
        return
    config = load_config()
    images, labels, index = training_sample(arguments.images, config)
    count = len(images)
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
            folder, config.preprocess.image.size, arguments.batch_size, config.train.seed
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
        f"{count} train images at {config.preprocess.image.size}px, batch "
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
