import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from pneumonia.config import ModelConfig
from pneumonia.model.network import (
    FusedBatchNormalization,
    average_ensemble,
    build_model,
    ensemble_members,
    save_model,
)
from pneumonia.model.training import SplitArrays, fit

from helpers import fixture_train_config


def architecture(**changes):
    values = {
        "architecture": "cnn",
        "weights": "none",
        "depth": 3,
        "base_filters": 8,
        "convolution": "plain",
        "dropout": 0.2,
    }
    values.update(changes)
    return ModelConfig(**values)


def test_model_takes_raw_uint8_and_returns_probabilities():
    model = build_model(32, architecture())
    assert model.input.dtype == "uint8"
    assert tuple(model.input.shape) == (None, 32, 32, 1)
    assert tuple(model.output.shape) == (None, 1)
    pixels = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 1), dtype=np.uint8)
    predictions = model.predict(pixels, verbose=0)
    assert predictions.shape == (4, 1)
    assert ((predictions >= 0) & (predictions <= 1)).all()
    assert model.get_layer("rescale").scale == pytest.approx(1 / 255)


@pytest.mark.parametrize(
    ("changes", "parameters"),
    [
        # Plain, filters 8/16/32: each 3x3 conv has no bias, BN adds 4 per filter, dense 32+1:
        # (72+32 + 576+32) + (1152+64 + 2304+64) + (4608+128 + 9216+128) + 33 = 18,409.
        ({}, 18_409),
        # Separable after the first conv: depthwise 9*c_in + pointwise c_in*c_out + BN.
        ({"convolution": "separable"}, 3_257),
        ({"base_filters": 16}, 72_529),
        ({"depth": 4}, 74_249),
    ],
)
def test_parameter_count_per_configuration(changes, parameters):
    assert build_model(64, architecture(**changes)).count_params() == parameters


def test_parameter_count_does_not_depend_on_image_size():
    assert (
        build_model(32, architecture()).count_params()
        == build_model(128, architecture()).count_params()
    )


def test_image_too_small_for_depth():
    with pytest.raises(ValueError, match=r"too small for train\.model\.depth=6"):
        build_model(32, architecture(depth=6))


def test_ensemble_averages_its_members_and_survives_a_save(tmp_path):
    members = []
    for seed in (1, 2, 3):
        keras.utils.set_random_seed(seed)
        members.append(build_model(32, architecture(depth=2)))
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 1), dtype=np.uint8)
    each = np.stack([member.predict(pixels, verbose=0) for member in members])
    assert np.ptp(each, axis=0).max() > 1e-4  # the seeds gave different networks
    ensemble = average_ensemble(members)
    assert ensemble.input.dtype == "uint8" and tuple(ensemble.output.shape) == (None, 1)
    np.testing.assert_allclose(ensemble.predict(pixels, verbose=0), each.mean(axis=0), atol=1e-6)
    assert [member.name for member in ensemble_members(ensemble)] == [
        "member_0",
        "member_1",
        "member_2",
    ]
    ensemble.save(tmp_path / "ensemble.keras")
    loaded = keras.saving.load_model(tmp_path / "ensemble.keras", compile=False)
    np.testing.assert_allclose(loaded.predict(pixels, verbose=0), each.mean(axis=0), atol=1e-6)
    assert len(ensemble_members(loaded)) == 3
    single = build_model(32, architecture(depth=2))
    assert average_ensemble([single]) is single and ensemble_members(single) == [single]


def test_ensemble_refuses_members_with_different_inputs():
    with pytest.raises(ValueError, match="different inputs"):
        average_ensemble([build_model(32, architecture()), build_model(64, architecture())])
    with pytest.raises(ValueError, match="at least one member"):
        average_ensemble([])


def test_fused_batch_norm_trains_as_keras_batch_norm_does():
    """Same weights, one training step's forward and backward: the same outputs, moving
    statistics and (to float32 rounding) gradients as Keras' own layer.

    Seeded: the weights were drawn unseeded before, and at some draws (2 of 20 seeds tried) the
    first block's gradients differ by up to 1% (float32 rounding of the batch statistics on
    activations of raw-pixel scale), which failed the bound by chance."""
    keras.utils.set_random_seed(0)
    config = architecture(dropout=0.0)  # dropout's draws would differ between the two calls
    keras_model = build_model(32, config)
    fused_model = build_model(32, config, fused_batch_norm=True)
    fused_model.set_weights(keras_model.get_weights())
    assert any(isinstance(layer, FusedBatchNormalization) for layer in fused_model.layers)
    generator = np.random.default_rng(0)
    pixels = tf.constant(generator.integers(0, 256, (16, 32, 32, 1), dtype=np.uint8))
    labels = tf.constant(generator.integers(0, 2, (16, 1)).astype("float32"))
    loss = keras.losses.BinaryCrossentropy()
    results = []
    for model in (keras_model, fused_model):
        with tf.GradientTape() as tape:
            outputs = model(pixels, training=True)
            value = loss(labels, outputs)
        gradients = tape.gradient(value, model.trainable_weights)
        results.append((outputs.numpy(), gradients, model.non_trainable_weights))
    (keras_out, keras_gradients, keras_stats), (fused_out, fused_gradients, fused_stats) = results
    np.testing.assert_allclose(fused_out, keras_out, atol=1e-5)
    for keras_stat, fused_stat in zip(keras_stats, fused_stats, strict=True):
        # Keras keeps the biased batch variance in its moving average; so must the fused layer.
        np.testing.assert_allclose(fused_stat.numpy(), keras_stat.numpy(), rtol=1e-5, atol=1e-6)
    for keras_gradient, fused_gradient in zip(keras_gradients, fused_gradients, strict=True):
        difference = tf.norm(fused_gradient - keras_gradient) / tf.norm(keras_gradient)
        assert float(difference) < 1e-3

    # And the fused layer did run TensorFlow's fused kernel when training, Keras' ops otherwise.
    def op_types(training: bool) -> set[str]:
        traced = tf.function(lambda images: fused_model(images, training=training))
        graph = traced.get_concrete_function(tf.TensorSpec((None, 32, 32, 1), tf.uint8)).graph
        types = {op.type for op in graph.get_operations()}
        for function in graph._functions.values():
            types |= {node.op for node in function.definition.node_def}
        return types

    assert any(kind.startswith("FusedBatchNorm") for kind in op_types(training=True))
    assert not any(kind.startswith("FusedBatchNorm") for kind in op_types(training=False))
    # Inference runs Keras' own code: the same weights give the same numbers, bit for bit.
    fused_model.set_weights(keras_model.get_weights())
    np.testing.assert_array_equal(
        fused_model.predict_on_batch(pixels), keras_model.predict_on_batch(pixels)
    )


def test_a_trained_model_is_saved_with_keras_own_batch_norm(tmp_path):
    """fit returns the CNN with Keras' BatchNormalization layers: its file loads with plain
    Keras, predicts what the trained model did and names no class of this project."""
    config = fixture_train_config()
    hyperparameters = config.hyperparameters.model_copy(
        update={"batch_size": 8, "model": architecture(depth=2, base_filters=4)}
    )
    generator = np.random.default_rng(0)
    images = generator.integers(0, 255, (20, 16, 16, 1), dtype=np.uint8)
    split = SplitArrays(images, np.arange(20) % 2)
    model, _ = fit(hyperparameters, split, split, config, epochs=1, callbacks=[])
    assert not any(isinstance(layer, FusedBatchNormalization) for layer in model.layers)
    batch_norms = [layer for layer in model.layers if "_bn" in layer.name]
    assert batch_norms
    assert {type(layer) for layer in batch_norms} == {keras.layers.BatchNormalization}
    # Training moved the moving statistics away from their initial values.
    assert not np.allclose(batch_norms[0].moving_mean.numpy(), 0.0)

    path = tmp_path / "model.keras"
    save_model(model, path)
    with zipfile.ZipFile(path) as archive:
        saved_config = archive.read("config.json").decode()
    assert "FusedBatchNormalization" not in saved_config
    modules = {layer["module"] for layer in json.loads(saved_config)["config"]["layers"]}
    assert all(module.startswith("keras") for module in modules), modules
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_array_equal(loaded.predict_on_batch(images), model.predict_on_batch(images))


def test_fused_batch_norm_keeps_keras_biased_variance_in_its_moving_average():
    """The kernel returns the unbiased batch variance; Keras' moving average keeps the biased
    one. With momentum 0 the moving statistics are the batch's, and 8 values per channel make
    the n / (n - 1) factor large enough to see."""
    values = np.random.default_rng(1).normal(3.0, 2.0, (2, 2, 2, 3)).astype("float32")
    fused = FusedBatchNormalization(momentum=0.0)
    plain = keras.layers.BatchNormalization(momentum=0.0)
    fused_out, plain_out = fused(values, training=True), plain(values, training=True)
    np.testing.assert_allclose(fused_out, plain_out, atol=1e-5)
    biased = values.reshape(-1, 3).var(axis=0)
    np.testing.assert_allclose(fused.moving_variance.numpy(), biased, rtol=1e-5)
    np.testing.assert_allclose(plain.moving_variance.numpy(), biased, rtol=1e-5)
    np.testing.assert_allclose(fused.moving_mean.numpy(), values.reshape(-1, 3).mean(axis=0))
    # What the layer cannot fuse, it leaves to Keras: float64 inputs, frozen layers.
    double = FusedBatchNormalization(momentum=0.0, dtype="float64")
    doubled = double(values.astype("float64"), training=True)
    np.testing.assert_allclose(doubled, plain_out, atol=1e-5)
    frozen = FusedBatchNormalization()
    frozen.build(values.shape)
    frozen.trainable = False
    np.testing.assert_allclose(
        frozen(values, training=True), values / np.sqrt(1.0 + frozen.epsilon), rtol=1e-5
    )


def test_save_model_writes_keras_own_batch_norm_even_for_a_model_built_to_train(tmp_path):
    model = build_model(32, architecture(), fused_batch_norm=True)
    save_model(model, tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert not any(isinstance(layer, FusedBatchNormalization) for layer in loaded.layers)
