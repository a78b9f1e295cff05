"""The tf.data input pipeline over the preprocessed uint8 arrays.

Arrays are decoded once by preprocess; each epoch only shuffles, batches and augments in memory,
instead of decoding JPEGs from disk every epoch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf
from keras import layers
from sklearn.utils.class_weight import compute_class_weight

from pneumonia.config import AugmentationConfig

AUTOTUNE = tf.data.AUTOTUNE
Augmentation = Callable[..., tf.Tensor]  # called as augmentation(pixels, training=True)


def class_weights(labels: np.ndarray, mode: str) -> dict[int, float] | None:
    """`balanced` weights each class by n_samples / (n_classes * n_class); `none` gives None."""
    if mode == "none":
        return None
    classes = np.array([0, 1])
    present = np.unique(labels)
    if len(present) < 2:
        raise ValueError(f"train labels hold only class {present.tolist()}; need both classes")
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    return {int(label): float(weight) for label, weight in zip(classes, weights, strict=True)}


class ReflectPadded:
    """Runs an image layer on a reflect-padded batch and crops back: Keras' Gaussian blur pads
    with zeros, which would darken a band along every edge of the image."""

    def __init__(self, layer: layers.Layer, pad: int):
        self.layer, self.pad = layer, pad

    def __call__(self, pixels: tf.Tensor, training: bool = True) -> tf.Tensor:
        pad = self.pad
        padded = tf.pad(pixels, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        return self.layer(padded, training=training)[:, pad:-pad, pad:-pad, :]


class RandomAffine:
    """Rotation, shift, zoom and aspect jitter as one affine resampling of each image.

    Keras' RandomRotation, RandomTranslation and RandomZoom resample the batch once each, with
    bilinear interpolation every time: three passes over the pixels, and three blurs of them.
    Composed into one output-to-input matrix per image, the same jitter costs one pass and one
    interpolation. The draws follow Keras' ranges: an angle of +-rotation of a full turn, a
    shift of +-shift of the side, an input-coordinate scale of 1 +- zoom (both axes), times
    1 +- aspect on the width only. Black fill, like the letterbox bars. Seeded: a
    tf.random.Generator, so the same seed gives the same batches.
    """

    def __init__(self, rotation: float, shift: float, zoom: float, aspect: float, seed: int):
        self.rotation, self.shift, self.zoom, self.aspect = rotation, shift, zoom, aspect
        self.generator = tf.random.Generator.from_seed(seed)

    def _uniform(self, count: tf.Tensor, bound: float) -> tf.Tensor:
        return self.generator.uniform([count], -bound, bound) if bound > 0 else tf.zeros([count])

    def transforms(self, count: tf.Tensor, height: int, width: int) -> tf.Tensor:
        """(count, 8) rows [a0, a1, a2, b0, b1, b2, 0, 0]: output pixel (x, y) samples the input
        at (a0 x + a1 y + a2, b0 x + b1 y + b2)."""
        angle = self._uniform(count, self.rotation * 2 * np.pi)
        shift_x = self._uniform(count, self.shift) * width
        shift_y = self._uniform(count, self.shift) * height
        scale_y = 1.0 + self._uniform(count, self.zoom)
        scale_x = scale_y * (1.0 + self._uniform(count, self.aspect))
        cos, sin = tf.cos(angle), tf.sin(angle)
        a0, a1 = cos * scale_x, -sin * scale_y
        b0, b1 = sin * scale_x, cos * scale_y
        centre_x, centre_y = (width - 1) / 2.0, (height - 1) / 2.0
        a2 = centre_x - a0 * centre_x - a1 * centre_y - shift_x
        b2 = centre_y - b0 * centre_x - b1 * centre_y - shift_y
        zeros = tf.zeros_like(angle)
        return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)

    def __call__(self, pixels: tf.Tensor, training: bool = True) -> tf.Tensor:
        height, width = pixels.shape[1], pixels.shape[2]
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=pixels,
            transforms=self.transforms(tf.shape(pixels)[0], height, width),
            output_shape=tf.constant([height, width], tf.int32),
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="CONSTANT",
        )


def augmentation_layers(config: AugmentationConfig, seed: int) -> list[Augmentation]:
    """Geometric, contrast, exposure and sharpness jitter; black fill matches the letterbox bars.

    Exposure (brightness) and sharpness (blur) stand in for differences between X-ray units
    and settings, which a split of one hospital's archive does not show on val. Aspect (a
    width-only zoom) stands in for the originals' aspect ratios: the published 224 px copy
    stretched every image to a square, so the chest's width-to-height ratio carries how the
    film was framed, not the lungs.
    """
    chosen: list[Augmentation] = []
    if max(config.rotation, config.shift, config.zoom, config.aspect) > 0:
        chosen.append(
            RandomAffine(config.rotation, config.shift, config.zoom, config.aspect, seed=seed)
        )
    if config.contrast > 0:
        chosen.append(
            layers.RandomContrast(
                config.contrast, value_range=(0, 255), seed=seed + 3, name="contrast"
            )
        )
    if config.brightness > 0:
        chosen.append(
            layers.RandomBrightness(
                config.brightness, value_range=(0, 255), seed=seed + 4, name="brightness"
            )
        )
    if config.blur > 0:
        # Keras draws one sigma per batch and blurs each image with probability ~1/2.
        radius = int(np.ceil(2 * config.blur))
        blur = layers.RandomGaussianBlur(
            factor=1.0,
            kernel_size=2 * radius + 1,
            sigma=(0.0, config.blur),
            value_range=(0, 255),
            seed=seed + 5,
            name="blur",
        )
        chosen.append(ReflectPadded(blur, radius))
    return chosen


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    training: bool,
    seed: int,
    augmentation: AugmentationConfig | None = None,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Batches of (uint8 images, float32 labels); shuffled and augmented when training.

    `repeat`: endless, reshuffled each pass (fit with steps_per_epoch), so one iterator serves
    every epoch of a fit.

    tf.data's autotuning is off (the prefetch buffer still adapts). Its optimisation thread
    sleeps for growing periods, and tearing an iterator down waited for it: on 2 cores the
    first batch of an epoch, or the end of a fit, stalled for up to ~40 s of idle CPU
    (docs/experiments.md, round 4). It tunes nothing here that matters: the map is sequential
    (op determinism), and the batches are the same either way.
    """
    if len(images) == 0:
        raise ValueError("cannot build a dataset from an empty split")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.ascontiguousarray(images), labels.astype("float32"))
    )
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if repeat:
        dataset = dataset.repeat()
    jitter = augmentation_layers(augmentation, seed) if training and augmentation else []
    if jitter:

        def augment(batch: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            pixels = tf.cast(batch, tf.float32)
            for layer in jitter:
                pixels = layer(pixels, training=True)
            pixels = tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)
            return pixels, target

        # A sequential map: the pipeline trains with op determinism on (seed_everything), under
        # which tf.data runs a map of stateful random ops sequentially anyway. Asked for a
        # parallel one, it rewrites the map and the rewrite logs `E ... NodeDef mentions
        # attribute use_unbounded_threadpool` once per fit; the batches are identical.
        dataset = dataset.map(augment)
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(AUTOTUNE).with_options(options)
