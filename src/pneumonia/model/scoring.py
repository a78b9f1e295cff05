"""The one way a Keras model scores images: train's val figures, the shift check, evaluate,
predict and the served model all call :func:`score`."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

DEFAULT_BATCH_SIZE = 128


def score(
    model: keras.Model,
    images: np.ndarray,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int], object] | None = None,
) -> np.ndarray:
    """Probabilities of pneumonia for (N, S, S, 1) uint8 images, 1-D float64 (the metrics run in
    double precision).

    predict_on_batch, not predict: predict builds a tf.data pipeline on every call, which costs
    more than the model itself for the one-image requests of serving; in batches of the same
    size the two give identical scores. `on_batch` is called with each batch's size once it is
    scored (progress).
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if len(images) == 0:
        return np.zeros(0)
    scores = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        scores.append(np.asarray(model.predict_on_batch(batch)))
        if on_batch is not None:
            on_batch(len(batch))
    return np.concatenate(scores).reshape(-1).astype(np.float64)
