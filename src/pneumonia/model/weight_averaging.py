"""Stochastic weight averaging for the final fit (train.weight_averaging.method swa): the
weights' snapshots at the ends of the last epochs, their mean, and the batch norm statistics
recomputed for it. (ema is Keras' own optimizer option, set in model.training.)"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf


class WeightSnapshots(keras.callbacks.Callback):
    """The sum of all the model's weights (trainable and not) at the end of each of a fit's
    last `count` epochs, for stochastic weight averaging."""

    def __init__(self, count: int):
        super().__init__()
        self.count = count
        self.sums: list[np.ndarray] = []
        self.taken = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.sums, self.taken = [], 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # params["epochs"] is the fit's last epoch (initial_epoch included), 0-based + 1.
        if epoch < self.params["epochs"] - self.count:
            return
        # Summed in float64: float32 sums of a few snapshots would round the mean.
        values = [np.asarray(value, dtype=np.float64) for value in self.model.get_weights()]
        self.sums = (
            values if not self.sums else [a + b for a, b in zip(self.sums, values, strict=True)]
        )
        self.taken += 1

    def assign_mean(self, model: keras.Model) -> None:
        """Set the model's weights to the equal-weight mean of the snapshots."""
        if self.taken != self.count:
            raise RuntimeError(
                f"swa: {self.taken} of the last {self.count} epochs ran (the fit stopped early); "
                "train.weight_averaging.method swa needs every epoch"
            )
        for variable, total in zip(model.weights, self.sums, strict=True):
            variable.assign((total / self.taken).astype(variable.dtype))


# Layers that behave differently in training: none may sit before a batch norm layer whose
# statistics recompute_batch_norm measures with the network in training mode.
_TRAINING_ONLY = (
    keras.layers.Dropout,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
)


def batch_norm_extractor(
    model: keras.Model,
) -> tuple[list[keras.layers.BatchNormalization], keras.Model | None]:
    """The batch norm layers whose statistics swa recomputes (those that train: a pretrained
    backbone's frozen ones keep theirs, and run in inference mode), and a model that gives each
    one's batch mean and variance of its input (None when there is none).

    Raises ValueError when a layer that acts only in training (dropout, noise) precedes one of
    them: in training mode it would change the statistics measured.
    """
    norms = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    if not norms:
        return norms, None
    figures = []
    for layer in norms:
        inputs = keras.ops.cast(layer.input, "float32")
        rank = len(inputs.shape)
        axes = tuple(axis for axis in range(rank) if axis != layer.axis % rank)
        figures += [keras.ops.mean(inputs, axis=axes), keras.ops.var(inputs, axis=axes)]
    extractor = keras.Model(model.inputs, figures)
    # Training mode, so each batch norm uses its batch's statistics; the layers up to the last
    # batch norm's input must otherwise compute the same in either mode.
    for layer in extractor.layers:
        if isinstance(layer, _TRAINING_ONLY):
            raise ValueError(
                f"train.weight_averaging.method swa: layer {layer.name!r} acts only in training "
                "and precedes a batch norm layer that trains, whose statistics could not be "
                "recomputed; use method ema or none with this model (or pretrained "
                "train.model.weights, whose batch norm layers stay frozen)"
            )
    return norms, extractor


def recompute_batch_norm(model: keras.Model, images: np.ndarray, batch_size: int) -> int:
    """Each trained BatchNormalization layer's moving mean and variance (batch_norm_extractor),
    recomputed as the plain mean over the batches of `images` (in order, unaugmented) of the
    batch mean and (biased) variance of its input, every batch norm layer that trains
    normalising with its batch's statistics on the way, as torch.optim.swa_utils.update_bn
    does. Returns the number of batches.

    Why: averaged weights are a network no epoch trained, and the moving statistics of the
    snapshots (exponential averages of other networks' activations) do not fit it.
    """
    norms, extractor = batch_norm_extractor(model)
    if extractor is None:
        return 0
    figures = extractor.outputs
    # The training-mode call also moves the layers' moving statistics: overwritten below.
    spec = tf.TensorSpec((None, *images.shape[1:]), images.dtype)
    measure = tf.function(lambda batch: extractor(batch, training=True), input_signature=[spec])
    sums = [np.zeros(figure.shape, dtype=np.float64) for figure in figures]
    batches = 0
    for start in range(0, len(images), batch_size):
        values = measure(tf.constant(images[start : start + batch_size]))
        sums = [
            total + np.asarray(value, dtype=np.float64)
            for total, value in zip(sums, values, strict=True)
        ]
        batches += 1
    for index, layer in enumerate(norms):
        layer.moving_mean.assign((sums[2 * index] / batches).astype(layer.moving_mean.dtype))
        layer.moving_variance.assign(
            (sums[2 * index + 1] / batches).astype(layer.moving_variance.dtype)
        )
    return batches
