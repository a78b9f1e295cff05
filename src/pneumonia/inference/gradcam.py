"""Grad-CAM (Selvaraju et al. 2017): where in the X-ray the CNN found the evidence for its call.

Shared by the evaluate stage (overlays for each outcome on test) and by prediction.
"""

from __future__ import annotations

import cv2
import keras
import numpy as np
import tensorflow as tf
from keras import layers

from pneumonia.contracts.labels import is_positive
from pneumonia.model.network import ensemble_members

_POOLING = (layers.MaxPooling2D, layers.AveragePooling2D, layers.GlobalAveragePooling2D)


def feature_layer(model: keras.Model) -> keras.layers.Layer:
    """The last layer with a spatial (4-D) output that is not a pooling layer: the final
    convolution block's activations, whose gradients Grad-CAM weighs."""
    for layer in reversed(model.layers):
        output = getattr(layer, "output", None)
        spatial = output is not None and len(output.shape) == 4
        if spatial and not isinstance(layer, (*_POOLING, keras.layers.InputLayer)):
            return layer
    raise ValueError(f"model {model.name!r} has no convolutional layer to explain")


def _classifier(model: keras.Model) -> keras.layers.Dense:
    head = model.layers[-1]
    if not isinstance(head, layers.Dense) or head.units != 1:
        raise ValueError(
            f"model {model.name!r}: Grad-CAM expects a final Dense(1) sigmoid layer, "
            f"found {type(head).__name__}"
        )
    return head


def gradcam_heatmaps(
    model: keras.Model, images: np.ndarray, threshold: float = 0.5, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps in [0, 1] at the image's size, and the probabilities of pneumonia.

    Each map explains the model's call at the threshold: the PNEUMONIA logit for images called
    positive, its negative for images called NORMAL. The gradient is taken on the logit (the
    classifier's input times its weights), not on the sigmoid, which saturates at 0 or 1 for
    confident calls and would give an empty map. For an ensemble (model.network.average_ensemble)
    each member's map explains the ensemble's call, and the maps are averaged.
    """
    if images.ndim != 4 or images.shape[1:] != tuple(model.input_shape[1:]):
        raise ValueError(
            f"Grad-CAM: images of shape {images.shape[1:]} do not fit the model input "
            f"{tuple(model.input_shape[1:])}"
        )
    probes = []
    for member in ensemble_members(model):
        head = _classifier(member)
        probes.append(
            (
                keras.Model(member.inputs, [feature_layer(member).output, head.input]),
                tf.cast(head.kernel, tf.float32),
                tf.cast(head.bias, tf.float32),
            )
        )
    heatmaps, probabilities = [], []
    for start in range(0, len(images), batch_size):
        batch = tf.convert_to_tensor(images[start : start + batch_size])
        with tf.GradientTape() as tape:
            features, logits = [], []
            for probe, kernel, bias in probes:
                member_features, pooled = probe(batch, training=False)
                member_features = tf.cast(member_features, tf.float32)
                tape.watch(member_features)
                features.append(member_features)
                logits.append(tf.matmul(tf.cast(pooled, tf.float32), kernel)[:, 0] + bias[0])
            probability = tf.reduce_mean(tf.sigmoid(tf.stack(logits)), axis=0)
            sign = tf.where(is_positive(probability.numpy(), threshold), 1.0, -1.0)
            # Each member's features reach only its own logit, so one gradient gives them all.
            explained = tf.add_n([sign * logit for logit in logits])
        gradients = tape.gradient(explained, features)
        maps = tf.add_n(
            [
                _peak_normalised(
                    tf.image.resize(
                        _weighted_map(member_features, member_gradients),
                        images.shape[1:3],
                        method="bilinear",
                    )
                )
                for member_features, member_gradients in zip(features, gradients, strict=True)
            ]
        )
        heatmaps.append(_peak_normalised(maps)[..., 0].numpy())
        probabilities.append(probability.numpy())
    return np.concatenate(heatmaps), np.concatenate(probabilities)


def _weighted_map(features: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    return tf.nn.relu(tf.reduce_sum(features * channel_weights, axis=-1, keepdims=True))


def _peak_normalised(maps: tf.Tensor) -> tf.Tensor:
    """Each map scaled to peak at 1 (an all-zero map stays 0)."""
    peak = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
    return maps / tf.where(peak > 0, peak, 1.0)


def overlay(image: np.ndarray, heatmap: np.ndarray, opacity: float = 0.4) -> np.ndarray:
    """RGB uint8: the grey X-ray with the heatmap blended on top in the jet colour map."""
    grey = np.asarray(image, dtype=np.uint8).reshape(heatmap.shape)
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"overlay opacity must be in [0, 1], got {opacity}")
    colours = cv2.applyColorMap(np.uint8(np.clip(heatmap, 0, 1) * 255), cv2.COLORMAP_JET)
    colours = cv2.cvtColor(colours, cv2.COLOR_BGR2RGB).astype(np.float32)
    base = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    return np.uint8(np.clip((1 - opacity) * base + opacity * colours, 0, 255))


# What a Grad-CAM overlay can and cannot show, printed on each one `pneumonia predict` writes
# (and said in the model card and the README).
CAVEAT = "coarse; may mark regions outside the lungs (shortcuts)"
ANNOTATED_SIDE = 512  # the X-ray's side in an annotated overlay, pixels
_BAR_WIDTH, _MARGIN, _FOOTER = 20, 56, 108  # the footer: up to 4 lines of text
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def annotated_overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    score: float,
    label: str,
    threshold: float,
    operating_point: str | None = None,
    side: int = ANNOTATED_SIDE,
) -> np.ndarray:
    """RGB uint8 for a person to read: the overlay at `side` pixels (the model's input is
    upscaled; Grad-CAM is coarser still), a colour bar of the map's scale on the right, and the
    score (the network's output, not a probability), the label at the operating threshold (and
    the operating point's name) and the caveat below."""
    if side < 64:
        raise ValueError(f"annotated overlay side must be at least 64 pixels, got {side}")
    grey = np.asarray(image, dtype=np.uint8).reshape(heatmap.shape)
    big_grey = cv2.resize(grey, (side, side), interpolation=cv2.INTER_CUBIC)
    big_map = cv2.resize(heatmap.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((side + _FOOTER, side + _BAR_WIDTH + _MARGIN + 8, 3), 255, np.uint8)
    canvas[:side, :side] = overlay(big_grey, big_map)
    scale = np.linspace(1.0, 0.0, side, dtype=np.float32)[:, None].repeat(_BAR_WIDTH, axis=1)
    bar = cv2.applyColorMap(np.uint8(scale * 255), cv2.COLORMAP_JET)
    left = side + 8
    canvas[:side, left : left + _BAR_WIDTH] = cv2.cvtColor(bar, cv2.COLOR_BGR2RGB)
    black = (0, 0, 0)
    for value, row in (("1.0", 12), ("0.5", side // 2 + 4), ("0.0", side - 4)):
        cv2.putText(canvas, value, (left + _BAR_WIDTH + 4, row), _FONT, 0.4, black, 1, cv2.LINE_AA)
    lines = (
        f"score {score:.4f} -> {label} (threshold {threshold:.4f})",
        *([f"operating point: {operating_point}"] if operating_point else []),
        "Grad-CAM: where the evidence for pneumonia lies, 0-1 relative",
        CAVEAT,
    )
    for number, text in enumerate(lines):
        position = (6, side + 22 + 24 * number)
        cv2.putText(canvas, text, position, _FONT, 0.45, black, 1, cv2.LINE_AA)
    return canvas
