"""Floating-point operations of a Keras model, counted from its layers' shapes.

The convention of the FLOP-utilisation benchmark (benchmarks/train.py --levers): a multiply-add
is 2 FLOPs; convolutions (plain, depthwise, separable) and dense layers are counted, the
element-wise layers (batch norm, activations, pooling) are not, being a few percent of the
total and bound by memory, not arithmetic. A training step costs about 3x the forward pass:
the backward pass multiplies once for the input's gradient and once for the weights'.
"""

from __future__ import annotations

import math

import keras
from keras import layers

TRAINING_STEP_FACTOR = 3


def _spatial(shape: tuple) -> int:
    """Positions a layer's kernel visits: the product of the shape between batch and channels."""
    return math.prod(int(size) for size in shape[1:-1])


def layer_flops(layer: layers.Layer) -> int:
    """FLOPs of one call of `layer` on one example (channels last)."""
    if isinstance(layer, keras.Model):
        return forward_flops(layer)
    if isinstance(layer, layers.SeparableConv2D):
        inputs = int(layer.input.shape[-1]) * layer.depth_multiplier
        positions = _spatial(layer.output.shape)
        depthwise = 2 * positions * math.prod(layer.kernel_size) * inputs
        return depthwise + 2 * positions * inputs * layer.filters
    if isinstance(layer, layers.DepthwiseConv2D):
        inputs = int(layer.input.shape[-1]) * layer.depth_multiplier
        return 2 * _spatial(layer.output.shape) * math.prod(layer.kernel_size) * inputs
    if isinstance(layer, layers.Conv2D):
        per_group = int(layer.input.shape[-1]) // layer.groups
        kernel = math.prod(layer.kernel_size) * per_group * layer.filters
        return 2 * _spatial(layer.output.shape) * kernel
    if isinstance(layer, layers.Dense):
        return 2 * _spatial(layer.input.shape) * int(layer.input.shape[-1]) * layer.units
    return 0


def forward_flops(model: keras.Model) -> int:
    """FLOPs of a forward pass of one image."""
    return sum(layer_flops(layer) for layer in model.layers)


def training_flops(model: keras.Model) -> int:
    """FLOPs of one image's share of a training step (forward and backward)."""
    return TRAINING_STEP_FACTOR * forward_flops(model)
