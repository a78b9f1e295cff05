import numpy as np
import pytest

from pneumonia.config import ArchitectureConfig
from pneumonia.model import build_model


def architecture(**changes):
    values = {"depth": 3, "base_filters": 8, "convolution": "plain", "dropout": 0.2}
    values.update(changes)
    return ArchitectureConfig(**values)


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
