"""Fitting one model: runtime set-up (seeds, determinism, device), optimizer, compile, fit."""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from pneumonia.config import (
    NO_WEIGHTS,
    AugmentationConfig,
    Config,
    ConfigError,
    Hyperparameters,
    OptimizerConfig,
    TrainConfig,
    resolve_workers,
)
from pneumonia.config.train_schema import WeightAveragingConfig
from pneumonia.console import uses_mixed_precision
from pneumonia.contracts.arrays import IMAGES_FILE, ProcessedDataError, load_split
from pneumonia.model.backbones import WeightsFile, freeze_backbone, unfreeze_backbone
from pneumonia.model.dataset import class_weights, make_dataset
from pneumonia.model.network import average_ensemble, build_model, with_keras_batch_norm
from pneumonia.model.scoring import score
from pneumonia.model.weight_averaging import (
    WeightSnapshots,
    batch_norm_extractor,
    recompute_batch_norm,
)
from pneumonia.progress import Progress, duration, say

MONITOR = "val_auc"
# The saved model's exact val ROC AUC (sklearn, on all of val): train.json's, the train run's and
# the console's "val ROC AUC".
FINAL_VAL_ROC_AUC = "val_roc_auc"
# The figures of each epoch's summary line, in this order, when the logs have them.
EPOCH_FIGURES = ("loss", "auc", "val_loss", "val_auc")


@dataclass
class SplitArrays:
    images: np.ndarray
    labels: np.ndarray


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TF (keras.utils.set_random_seed) and make TF ops deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def configure_runtime(seed: int, mixed_precision: str) -> dict[str, str]:
    """Seed everything, pick the precision policy for the device; returns device facts."""
    seed_everything(seed)
    gpus = tf.config.list_physical_devices("GPU")
    policy = "mixed_float16" if uses_mixed_precision(len(gpus), mixed_precision) else "float32"
    keras.mixed_precision.set_global_policy(policy)
    build = tf.sysconfig.get_build_info()
    return {
        "device": "GPU" if gpus else "CPU",
        "gpus": ", ".join(gpu.name for gpu in gpus) or "none",
        "cpu_cores": str(resolve_workers(0)),
        "precision_policy": policy,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "cuda_version": str(build.get("cuda_version", "none")),
        "cudnn_version": str(build.get("cudnn_version", "none")),
        "python_version": platform.python_version(),
        "tf_intra_op_threads": str(tf.config.threading.get_intra_op_parallelism_threads()),
        "tf_num_interop_threads": str(tf.config.threading.get_inter_op_parallelism_threads()),
        "oneDNN": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
    }


def learning_rate(
    initial: float, schedule: str, decay_steps: int | None
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The constant rate, or a cosine decay from `initial` to 0 over `decay_steps` steps.

    Why cosine: at a constant 1e-3 the per-epoch val AUC swings by several hundredths (the
    batch-norm statistics chase a moving network), so which epoch early stopping keeps is luck.
    """
    if schedule == "constant":
        return initial
    if schedule != "cosine":
        raise ConfigError(
            f"train.learning_rate_schedule must be constant or cosine, got {schedule!r}"
        )
    if not decay_steps or decay_steps < 1:
        raise ValueError(f"a cosine schedule needs decay_steps >= 1, got {decay_steps!r}")
    return keras.optimizers.schedules.CosineDecay(initial, decay_steps)


def make_optimizer(
    config: OptimizerConfig,
    schedule: str = "constant",
    decay_steps: int | None = None,
    ema_momentum: float | None = None,
) -> keras.optimizers.Optimizer:
    """`ema_momentum` (train.weight_averaging's, for method ema) makes the optimizer keep Keras'
    moving average of the trainable weights; None builds exactly the optimizer of no averaging."""
    weight_decay = config.weight_decay or None
    rate = learning_rate(config.learning_rate, schedule, decay_steps)
    ema = {} if ema_momentum is None else {"use_ema": True, "ema_momentum": ema_momentum}
    if config.name == "adam":
        return keras.optimizers.Adam(rate, weight_decay=weight_decay, **ema)
    if config.name == "rmsprop":
        return keras.optimizers.RMSprop(
            rate,
            rho=config.rho,
            momentum=config.momentum,
            weight_decay=weight_decay,
            **ema,
        )
    raise ConfigError(f"train.optimizer.name must be adam or rmsprop, got {config.name!r}")


def compile_model(
    model: keras.Model,
    optimizer: OptimizerConfig,
    label_smoothing: float = 0.0,
    schedule: str = "constant",
    decay_steps: int | None = None,
    ema_momentum: float | None = None,
) -> None:
    """Compile (again, after a change of what is trainable) with a fresh optimizer (keeping a
    moving average of the weights when `ema_momentum` is given).

    No XLA: with op determinism on (seed_everything), Keras turns jit_compile off, and forced on
    it fails, TensorFlow having no deterministic XLA gradient of max pooling.
    """
    model.compile(
        optimizer=make_optimizer(optimizer, schedule, decay_steps, ema_momentum),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
        metrics=[
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.AUC(name="auc", num_thresholds=1000),
        ],
    )


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs every epoch's train/val loss, accuracy and AUC to one MLflow run."""

    def __init__(self, run_id: str, prefix: str = ""):
        super().__init__()
        self.client = mlflow.MlflowClient()
        self.run_id = run_id
        self.prefix = prefix

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        metrics = {
            f"{self.prefix}{key}": float(value)
            for key, value in (logs or {}).items()
            if np.isscalar(value)
        }
        # Steps are epoch numbers as the console counts them (1-based).
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key, value, step=epoch + 1)


class EpochProgress(keras.callbacks.Callback):
    """Keras' per-epoch output as pneumonia.progress shows it: within each epoch a bar (or, off a
    terminal, periodic lines) over its batches with the ETA and the running loss; then one line
    with the epoch's loss, AUC, val loss, val AUC and time."""

    def __init__(self, indent: str = "  "):
        super().__init__()
        self.indent = indent
        self.progress: Progress | None = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.close()
        self.progress = Progress(
            f"epoch {epoch + 1}/{self.params['epochs']}",
            self.params.get("steps"),
            "batches",
            indent=self.indent,
        )

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.progress is not None:
            loss = (logs or {}).get("loss")
            self.progress.update(1, **({} if loss is None else {"loss": float(loss)}))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.progress is None:
            return
        logs = logs or {}
        figures = ", ".join(
            f"{name} {float(logs[name]):.4f}" for name in EPOCH_FIGURES if name in logs
        )
        self.progress.close(
            f"{self.indent}epoch {epoch + 1}/{self.params['epochs']}: {figures} "
            f"({duration(self.progress.elapsed)})"
        )
        self.progress = None

    def close(self) -> None:
        """End an epoch cut short (a pruned trial, an error) without a summary line."""
        if self.progress is not None:
            self.progress.close("")
            self.progress = None


def fit(
    hyperparameters: Hyperparameters,
    train: SplitArrays,
    val: SplitArrays,
    config: TrainConfig,
    *,
    epochs: int,
    callbacks: list[keras.callbacks.Callback],
    augmentation: AugmentationConfig | None = None,
    seed: int | None = None,
    weights: WeightsFile | None = None,
    averaging: WeightAveragingConfig | None = None,
) -> tuple[keras.Model, keras.callbacks.History]:
    """Build, compile and fit a model from fresh seeds, so every run is reproducible alone.

    `seed` (default train.seed) seeds the weights, the shuffling and the augmentation: an
    ensemble's members differ only by it. A backbone (with `weights`, its resolved
    train.model.weights) trains in two phases (fine_tune); `epochs` is then the second's. The
    CNN trains with TensorFlow's fused batch norm and comes back with Keras' own layers.

    `averaging` (train.weight_averaging; the final fit's, None for a trial) applies to the last
    phase. ema: the optimizer keeps the weights' moving average, swapped into the model for
    each epoch's validation and end (so `callbacks`, EarlyStopping's best-weights snapshot
    included, see the averaged weights) and left there when the fit ends. swa: the model ends
    with the mean of its weights at the last swa_epochs epochs' ends, batch norm statistics
    recomputed on train (recompute_batch_norm), whatever a callback restored before.
    """
    seed = config.seed if seed is None else seed
    seed_everything(seed)
    image_size = train.images.shape[1]
    steps_per_epoch = math.ceil(len(train.images) / hyperparameters.batch_size)
    model = build_model(image_size, hyperparameters.model, weights, fused_batch_norm=True)
    train_data = make_dataset(
        train.images,
        train.labels,
        hyperparameters.batch_size,
        training=True,
        seed=seed,
        augmentation=augmentation or config.augmentation,
        repeat=True,
    )
    val_data = make_dataset(val.images, val.labels, 128, training=False, seed=seed)

    # First, so an epoch's line is printed before a pruning callback stops the trial.
    progress = EpochProgress()

    def run(
        phase_epochs: int, optimizer: OptimizerConfig, initial_epoch: int = 0, last: bool = True
    ):
        method = averaging.method if averaging is not None and last else "none"
        compile_model(
            model,
            optimizer,
            config.label_smoothing,
            config.learning_rate_schedule,
            decay_steps=steps_per_epoch * phase_epochs,
            ema_momentum=averaging.ema_momentum if method == "ema" else None,
        )
        before, after = [], []
        if method == "ema":
            # Before the caller's callbacks: Keras validates (on_test_begin swaps the average
            # in, on_test_end out) and then runs on_epoch_end in list order, so this swap puts
            # the average in the model before EarlyStopping snapshots the best epoch's weights.
            before.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
        snapshots = WeightSnapshots(averaging.swa_epochs) if method == "swa" else None
        if snapshots is not None:
            # Before the epochs are spent: a layer that would stop the recomputation says so now.
            batch_norm_extractor(model)
            after.append(snapshots)
        history = model.fit(
            train_data,
            validation_data=val_data,
            initial_epoch=initial_epoch,
            epochs=initial_epoch + phase_epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=[progress, *before, *callbacks, *after],
            class_weight=class_weights(train.labels, config.class_weight),
            shuffle=False,  # tf.data already shuffles, seeded
            verbose=0,  # EpochProgress shows the progress
        )
        if snapshots is not None:
            snapshots.assign_mean(model)
            # The training batches unshuffled and unaugmented, at the size training used.
            batches = recompute_batch_norm(model, train.images, hyperparameters.batch_size)
            recomputed = (
                f"batch norm statistics recomputed over {batches} train batches"
                if batches
                else "no batch norm layer trains, so no statistics were recomputed"
            )
            say(f"  swa: the mean of the last {snapshots.count} epochs' weights, {recomputed}")
        return history

    try:
        if not hyperparameters.model.is_backbone:
            history = run(epochs, hyperparameters.optimizer)
            return with_keras_batch_norm(model), history
        swa = averaging is not None and averaging.method == "swa"
        return model, fine_tune(model, hyperparameters, epochs, run, keep_best_phase=not swa)
    finally:
        progress.close()


def fine_tune(
    model: keras.Model,
    hyperparameters: Hyperparameters,
    epochs: int,
    run: Callable[..., keras.callbacks.History],
    keep_best_phase: bool = True,
) -> keras.callbacks.History:
    """Keras's transfer-learning recipe: a warm-up of train.fine_tuning.warmup_epochs with the
    backbone frozen (only the head learns, at train.optimizer.learning_rate, so its random
    start does not send large gradients into the pretrained layers), then `epochs` with the
    backbone (or its top N layers) unfrozen at the lower fine_tuning.learning_rate. Each phase
    is early-stopped by the caller's callbacks; epochs are numbered on across the phases, and
    the weights kept are the best val AUC's of either phase (with `keep_best_phase`; swa keeps
    its fine-tuning average, which no epoch's figure describes). Returns both phases' history."""
    settings = hyperparameters.fine_tuning
    histories = []
    if settings.warmup_epochs:
        say(f"  warm-up: backbone frozen, up to {settings.warmup_epochs} epoch(s)")
        freeze_backbone(model)
        # Weight averaging (train.weight_averaging) is the fine-tuning phase's alone.
        histories.append(run(settings.warmup_epochs, hyperparameters.optimizer, last=False))
        warmup_best = max(histories[0].history[MONITOR])
        # Under swa the warm-up is never restored, so no copy of its weights is kept.
        warmup_weights = (
            [(variable, variable.numpy()) for variable in model.weights] if keep_best_phase else []
        )
    pretrained = hyperparameters.model.weights != NO_WEIGHTS
    unfreeze_backbone(model, settings.unfreeze, pretrained)
    say(
        f"  fine-tuning: {settings.unfreeze} backbone layer(s) unfrozen, up to {epochs} "
        f"epoch(s) at learning rate {settings.learning_rate:g}"
    )
    rate = hyperparameters.optimizer.model_copy(update={"learning_rate": settings.learning_rate})
    done = len(histories[0].epoch) if histories else 0
    histories.append(run(epochs, rate, initial_epoch=done))
    if (
        keep_best_phase
        and settings.warmup_epochs
        and max(histories[-1].history[MONITOR]) < warmup_best
    ):
        for variable, value in warmup_weights:
            variable.assign(value)
    return joined_history(histories)


def refuse_swa_it_cannot_recompute(image_size: int, config: TrainConfig) -> None:
    """swa on a backbone: refuse, before the study spends its time, one whose fine-tuning puts
    a layer that acts only in training before a batch norm layer that trains (the check fit
    makes again: batch_norm_extractor). The layers do not depend on the weights loaded, so the
    backbone is built with random ones. The CNN has no such layer."""
    if config.weight_averaging.method != "swa" or not config.model.is_backbone:
        return
    model = build_model(image_size, config.model.model_copy(update={"weights": NO_WEIGHTS}))
    unfreeze_backbone(model, config.fine_tuning.unfreeze, config.model.weights != NO_WEIGHTS)
    try:
        batch_norm_extractor(model)
    except ValueError as error:
        raise ConfigError(f"params.yaml: {error}") from None


def joined_history(histories: list[keras.callbacks.History]) -> keras.callbacks.History:
    """One History of consecutive fits (the per-epoch figures of each, in order)."""
    joined = keras.callbacks.History()
    joined.epoch = [epoch for history in histories for epoch in history.epoch]
    joined.history = {
        key: [value for history in histories for value in history.history.get(key, [])]
        for key in histories[0].history
    }
    return joined


@dataclass
class FinalFit:
    model: keras.Model  # the single network, or the average of the members
    histories: list[keras.callbacks.History]  # one per member, in seed order
    seconds: float


def fit_ensemble(
    hyperparameters: Hyperparameters,
    train: SplitArrays,
    val: SplitArrays,
    config: TrainConfig,
    run_id: str,
    weights: WeightsFile | None = None,
    refits: str | None = None,
) -> FinalFit:
    """The final fit: train.ensemble members with seeds seed, seed + 1, ..., each keeping its
    best epoch by val AUC (and stopped early after train.early_stopping_patience epochs without
    a gain, unless it is 0); their probabilities averaged. train.weight_averaging applies to
    each member (fit): ema keeps the best epoch of the averaged weights, swa replaces the best
    epoch with the mean of the last epochs.

    Member 1 logs its curves under the plain metric names (as a single model does); member k > 1
    under `member<k>/`. `refits` (`trial 3`, `the fixed hyperparameters`) names where the
    hyperparameters came from in the header line.
    """
    members, histories = [], []
    started = time.perf_counter()
    patience = config.early_stopping_patience
    averaging = config.weight_averaging
    stopping = f"early stopping after {patience} without a gain" if patience else "no early stop"
    keeping = f"keeping the best {MONITOR} ({stopping})"
    if averaging.method == "ema":
        keeping += f" of the weights' moving average (ema, momentum {averaging.ema_momentum:g})"
    elif averaging.method == "swa":
        keeping = f"averaging the weights of the last {averaging.swa_epochs} (swa)"
    say(
        f"final fit{f' of {refits}' if refits else ''}: {config.ensemble} member(s), up to "
        f"{config.epochs} epoch(s) each, {keeping}"
    )
    for index in range(config.ensemble):
        if config.ensemble > 1:
            say(f"member {index + 1}/{config.ensemble} (seed {config.seed + index})")
        # Patience 0 is off: a patience no phase can reach (a backbone's warm-up is a phase of
        # its own, of any length) never stops, and still restores the best.
        stopper = keras.callbacks.EarlyStopping(
            monitor=MONITOR,
            mode="max",
            patience=patience or NEVER_STOP,
            restore_best_weights=True,
        )
        # Members are counted from 1, as the console and members.csv count them.
        logger = MlflowEpochLogger(run_id, prefix=f"member{index + 1}/" if index else "")
        model, history = fit(
            hyperparameters,
            train,
            val,
            config,
            epochs=config.epochs,
            # swa's average replaces the best epoch's weights (its patience is 0: no stop).
            callbacks=[logger] if averaging.method == "swa" else [stopper, logger],
            seed=config.seed + index,
            weights=weights,
            averaging=averaging,
        )
        members.append(model)
        histories.append(history)
    seconds = time.perf_counter() - started
    say(f"final fit: {len(members)} member(s) in {duration(seconds)}")
    return FinalFit(average_ensemble(members), histories, seconds)


# Figures of the final fit that vary from run to run on the same weights.
TIMING_FIGURES = ("final_fit_seconds", "train_images_per_second")
# An early-stopping patience no fit reaches: train.early_stopping_patience 0.
NEVER_STOP = 2**31 - 1


def final_fit_figures(final: FinalFit, train: SplitArrays, val: SplitArrays) -> dict[str, Any]:
    """train.json's figures of the final fit.

    best_val_auc / best_epoch: member 0's best epoch (Keras' AUC, as early stopping saw it;
    under swa, a point of its learning curve, not the averaged weights kept);
    val_roc_auc: the saved model's exact val ROC AUC (the members' average when ensemble > 1).
    Not `val_auc`: that is Keras' per-epoch key, and one value logged under it at step 0 would
    join the learning curve as a false first point.
    """
    epoch, best_val_auc = best_epoch(final.histories[0])
    epochs_run = sum(len(member.history[MONITOR]) for member in final.histories)
    return {
        "best_val_auc": best_val_auc,
        "best_epoch": epoch,
        FINAL_VAL_ROC_AUC: float(roc_auc_score(val.labels, score(final.model, val.images))),
        "ensemble_members": len(final.histories),
        "epochs_run": epochs_run,
        "final_fit_seconds": round(final.seconds, 1),
        "train_images_per_second": round(len(train.images) * epochs_run / final.seconds, 1),
    }


def history_table(history: keras.callbacks.History) -> pd.DataFrame:
    """Per-epoch train and val loss, accuracy and AUC (the DVC plots' learning curves)."""
    frame = pd.DataFrame(history.history)
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    return frame


def members_table(histories: list[keras.callbacks.History], seed: int) -> list[dict[str, Any]]:
    """Per member: its seed, best epoch, best val AUC and epochs run."""
    rows = []
    for index, history in enumerate(histories):
        epoch, value = best_epoch(history)
        rows.append(
            {
                "member": index + 1,
                "seed": seed + index,
                "best_epoch": epoch,
                "best_val_auc": value,
                "epochs_run": len(history.history[MONITOR]),
            }
        )
    return rows


def best_epoch(history: keras.callbacks.History) -> tuple[int, float]:
    """(epoch, value) of the highest val AUC; the epoch 1-based, as the console, train.json,
    MLflow's steps and the plots count epochs."""
    values = history.history[MONITOR]
    index = int(np.argmax(values))
    return index + 1, float(values[index])


def load_training_splits(config: Config) -> tuple[SplitArrays, SplitArrays]:
    """The train and val arrays, checked against params before any work (never test)."""
    size = config.preprocess.image.size
    splits = []
    for name in ("train", "val"):
        images, labels, _ = load_split(config.paths.processed_split(name), mmap=False)
        if len(images) == 0:
            raise ProcessedDataError(
                f"{config.paths.processed_split(name)}: the {name} split is empty"
            )
        if images.shape[1:] != (size, size, 1):
            arrays = config.paths.processed_split(name) / IMAGES_FILE
            raise ConfigError(
                f"params.yaml: 'preprocess.image.size' is {size} but {arrays} holds "
                f"{images.shape[1:]} images; re-run preprocess (dvc repro) or fix the param"
            )
        splits.append(SplitArrays(images, labels))
    return splits[0], splits[1]
