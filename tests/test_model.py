import numpy as np
import pytest

from pneumonia.config import ModelConfig
from pneumonia.model.network import average_ensemble, build_model, ensemble_members


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
    import keras

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
    statistics and (to float32 rounding) gradients as Keras' own layer."""
    import keras
    import tensorflow as tf

    from pneumonia.model.network import FusedBatchNormalization

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
        assert float(difference) < 1e-2
    # Inference runs Keras' own code: the same weights give the same numbers, bit for bit.
    fused_model.set_weights(keras_model.get_weights())
    np.testing.assert_array_equal(
        fused_model.predict_on_batch(pixels), keras_model.predict_on_batch(pixels)
    )


def test_a_trained_model_is_saved_with_keras_own_batch_norm(tmp_path):
    """fit returns the CNN with Keras' BatchNormalization layers: its file loads with plain
    Keras, predicts what the trained model did and names no class of this project."""
    import json
    import zipfile

    import keras

    from pneumonia.config import load_config
    from pneumonia.model.network import FusedBatchNormalization, save_model
    from pneumonia.model.training import SplitArrays, fit

    from helpers import FIXTURE_PARAMS

    config = load_config(FIXTURE_PARAMS).train
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
