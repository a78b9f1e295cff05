"""The network of `train.model.architecture`: the project's CNN, built from scratch (no
pretrained weights), or a Keras Applications backbone (model.backbones); Keras functional models.

Normalisation lives inside the model: it takes raw uint8 pixels (batch, size, size, 1), so
serving feeds images exactly as preprocess writes them.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
from keras import layers

from pneumonia.config import ModelConfig
from pneumonia.model.backbones import WeightsFile, build_backbone_model


class FusedBatchNormalization(layers.BatchNormalization):
    """Keras' BatchNormalization whose training step runs TensorFlow's fused kernel.

    Keras 3 normalises with a dozen separate element-wise ops (moments, then scale and shift,
    and the gradient of each); on a CPU they were 53% of the default network's training step
    (benchmarks/train.py --op-profile), and the fused kernel (oneDNN's on a CPU, cuDNN's on a
    GPU) trains the network about twice as fast. Same statistics, same moving averages (Keras
    keeps the biased batch variance; the kernel returns the unbiased one, converted back), same
    variables; inference runs Keras' own code. The fused kernel is deterministic when it
    trains, on CPU and GPU. Only training builds it: with_keras_batch_norm turns a trained
    model's layers back into Keras' own, so every saved model loads without this project.
    """

    def call(self, inputs, training=None, mask=None):
        fusable = (
            training
            and self.trainable
            and mask is None
            and not (self.renorm or self.synchronized)
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            # The kernel computes in float32 (half-precision inputs are cast up, as Keras does).
            and inputs.dtype in (tf.float16, tf.bfloat16, tf.float32)
            and self.moving_mean.dtype == "float32"
            and keras.backend.backend() == "tensorflow"
        )
        if not fusable:
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            tf.cast(inputs, tf.float32),
            tf.cast(self.gamma, tf.float32) if self.scale else tf.ones(channels),
            tf.cast(self.beta, tf.float32) if self.center else tf.zeros(channels),
            epsilon=self.epsilon,
            is_training=True,
        )
        count = tf.cast(tf.size(inputs, out_type=tf.int64) // channels, tf.float32)
        variance = variance * (count - 1.0) / count
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
        )
        return tf.cast(outputs, self.compute_dtype)


def with_keras_batch_norm(model: keras.Model) -> keras.Model:
    """The model, in place, with Keras' own BatchNormalization where it has
    FusedBatchNormalization: what training returns and what gets saved, so a model file
    loads with plain Keras (and MLflow's Keras flavor). The fused layer adds no state and
    infers with Keras' code, so the layer is the same one under its parent class: weights,
    predictions and the compiled optimizer are untouched. (A train_function Keras traced before
    keeps the fused kernel if the model is fitted again: the same computation.)"""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            with_keras_batch_norm(layer)
        elif isinstance(layer, FusedBatchNormalization):
            layer.__class__ = layers.BatchNormalization
    return model


def convolution_block(
    inputs: keras.KerasTensor,
    filters: int,
    convolution: str,
    name: str,
    batch_norm: type[layers.BatchNormalization] = layers.BatchNormalization,
) -> keras.KerasTensor:
    """Two 3x3 convolutions with batch norm and ReLU, then 2x2 max pooling."""
    x = inputs
    for index in (1, 2):
        # The first convolution of the network sees one channel: separable buys nothing there.
        separable = convolution == "separable" and x.shape[-1] > 1
        conv = layers.SeparableConv2D if separable else layers.Conv2D
        x = conv(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{index}")(x)
        # Momentum 0.9, not Keras' 0.99: with ~140 steps an epoch, 0.99 leaves the moving
        # statistics near their initial values for several epochs, and the network then
        # predicts a constant in inference mode (val AUC 0.5 while train AUC is 0.95).
        x = batch_norm(momentum=0.9, name=f"{name}_bn{index}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{index}")(x)
    return layers.MaxPooling2D(2, name=f"{name}_pool")(x)


def build_model(
    image_size: int,
    model: ModelConfig,
    weights: WeightsFile | None = None,
    *,
    fused_batch_norm: bool = False,
) -> keras.Model:
    """uint8 (size, size, 1) in, probability of pneumonia out; `weights` is the resolved
    train.model.weights of a backbone (backbones.resolve_weights). `fused_batch_norm` builds
    the CNN to train with FusedBatchNormalization (undo it with with_keras_batch_norm before
    saving); a backbone keeps Keras Applications' own layers."""
    if model.is_backbone:
        return build_backbone_model(image_size, model, weights)
    if image_size < 2**model.depth:
        raise ValueError(
            f"preprocess.image.size={image_size} is too small for train.model.depth="
            f"{model.depth} (needs >= {2**model.depth})"
        )
    inputs = keras.Input(shape=(image_size, image_size, 1), dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for block in range(model.depth):
        filters = model.base_filters * 2 ** min(block, 3)
        x = convolution_block(
            x,
            filters,
            model.convolution,
            name=f"block{block + 1}",
            batch_norm=FusedBatchNormalization if fused_batch_norm else layers.BatchNormalization,
        )
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(model.dropout, name="dropout")(x)
    # float32 output even under mixed precision, so the sigmoid and the loss stay stable.
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="pneumonia")(x)
    return keras.Model(inputs, outputs, name="pneumonia_cnn")


# The names average_ensemble gives its members.
_MEMBER_NAME = re.compile(r"member_\d+")


def average_ensemble(members: list[keras.Model]) -> keras.Model:
    """One model whose probability is the mean of the members' (same input, uint8 in).

    A single model is returned as it is. The members keep their own layers (and names
    member_0, member_1, ...), so Grad-CAM can explain each of them.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    if len(members) == 1:
        return members[0]
    shapes = {tuple(member.input_shape[1:]) for member in members}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members take different inputs: {sorted(shapes)}")
    for index, member in enumerate(members):
        member.name = f"member_{index}"
    inputs = keras.Input(shape=shapes.pop(), dtype="uint8", name="image")
    average = layers.Average(dtype="float32", name="pneumonia")(
        [member(inputs) for member in members]
    )
    return keras.Model(inputs, average, name="pneumonia_ensemble")


def ensemble_members(model: keras.Model) -> list[keras.Model]:
    """The members of an average_ensemble, or [model] for a single network."""
    # By name: a backbone may hold nested models of its own (ConvNeXt's stem and blocks).
    nested = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.Model) and _MEMBER_NAME.fullmatch(layer.name)
    ]
    return nested or [model]


# The zip entries' time and metadata.json's date_saved, fixed: identical weights must give an
# identical file, or DVC re-runs evaluate and the registry gains a version for a no-op retrain.
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_FIXED_DATE_SAVED = "1980-01-01@00:00:00"


def _renumbered_shared_objects(config: Any, numbers: dict | None = None) -> Any:
    """Keras marks objects shared between layers with their Python id(), which differs from one
    process to the next; numbered in order of first appearance instead, the sharing is kept."""
    numbers = {} if numbers is None else numbers
    if isinstance(config, dict):
        renumbered = {}
        for key, value in config.items():
            if key == "shared_object_id":
                renumbered[key] = numbers.setdefault(value, len(numbers))
            else:
                renumbered[key] = _renumbered_shared_objects(value, numbers)
        return renumbered
    if isinstance(config, list):
        return [_renumbered_shared_objects(item, numbers) for item in config]
    return config


def save_model(model: keras.Model, path: Path) -> None:
    """model.save (with Keras' own batch norm layers, so the file loads with plain Keras), then
    the .keras archive rewritten without the time it was saved at."""
    with_keras_batch_norm(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        saved = Path(scratch) / path.name
        model.save(saved)
        written = Path(scratch) / f"normalised-{path.name}"
        with zipfile.ZipFile(saved) as source, zipfile.ZipFile(written, "w") as target:
            for info in source.infolist():
                data = source.read(info.filename)
                if info.filename == "metadata.json":
                    metadata = json.loads(data)
                    metadata["date_saved"] = _FIXED_DATE_SAVED
                    data = json.dumps(metadata).encode()
                elif info.filename == "config.json":
                    data = json.dumps(_renumbered_shared_objects(json.loads(data))).encode()
                entry = zipfile.ZipInfo(info.filename, date_time=_FIXED_ZIP_TIME)
                entry.compress_type, entry.external_attr = info.compress_type, info.external_attr
                target.writestr(entry, data)
        os.replace(written, path)
