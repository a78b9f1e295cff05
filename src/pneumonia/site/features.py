"""The model's pooled features: the output of its `pool` layer, the input of the head (both the
project's CNN and a Keras Applications backbone name it so); for an ensemble, each member's, side
by side. One model call gives the features and the score together."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from pneumonia.model.network import ensemble_members
from pneumonia.model.scoring import DEFAULT_BATCH_SIZE

FEATURE_LAYER = "pool"


class FeatureError(ValueError):
    """The model has no pooled-feature layer to compare sites in."""


def feature_layer_names(model: keras.Model) -> list[str]:
    """The feature layers, member by member (`pool`, or `member_0/pool`, ...)."""
    members = ensemble_members(model)
    if len(members) == 1:
        return [FEATURE_LAYER]
    return [f"{member.name}/{FEATURE_LAYER}" for member in members]


def features_and_score_model(model: keras.Model) -> keras.Model:
    """A model with the same input whose outputs are [features, score]: the members' pooled
    features concatenated, and the model's own output."""
    members = ensemble_members(model)
    try:
        pooled = [member.get_layer(FEATURE_LAYER) for member in members]
    except ValueError as error:
        raise FeatureError(
            f"model {model.name} has no '{FEATURE_LAYER}' layer: the site check compares the "
            "pooled features the project's networks compute before their head"
        ) from error
    if len(members) == 1:
        return keras.Model(model.inputs, [pooled[0].output, model.output])
    # Each member's feature sub-model, called on the ensemble's input, beside the average.
    inputs = model.inputs[0]
    extractors = [
        keras.Model(member.inputs, layer.output, name=f"{member.name}_features")
        for member, layer in zip(members, pooled, strict=True)
    ]
    features = keras.layers.Concatenate(name="features")(
        [extract(inputs) for extract in extractors]
    )
    return keras.Model(model.inputs, [features, model(inputs)])


def features_and_scores(
    model: keras.Model,
    images: np.ndarray,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int], object] | None = None,
    *,
    combined: keras.Model | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 (N, d), scores float64 (N,)) for (N, S, S, 1) uint8 images, in batches
    (predict_on_batch, as model.scoring does). Pass `combined` (features_and_score_model) to
    reuse one built for the model."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    combined = combined or features_and_score_model(model)
    width = int(combined.outputs[0].shape[-1])
    if len(images) == 0:
        return np.zeros((0, width), np.float32), np.zeros(0)
    features, scores = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        pooled, score = combined.predict_on_batch(batch)
        features.append(np.asarray(pooled, dtype=np.float32))
        scores.append(np.asarray(score).reshape(-1))
        if on_batch is not None:
            on_batch(len(batch))
    return np.concatenate(features), np.concatenate(scores).astype(np.float64)
