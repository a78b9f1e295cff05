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
