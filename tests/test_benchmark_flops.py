"""benchmarks/flops.py, the FLOP count behind the utilisation figures of benchmarks/train.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def load_flops():
    spec = importlib.util.spec_from_file_location(
        "flops_benchmark", PROJECT_ROOT / "benchmarks" / "flops.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flops = load_flops()


def test_flops_count_convolutions_and_dense_layers():
    import keras
    from keras import layers

    forward_flops, training_flops = flops.forward_flops, flops.training_flops

    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, padding="same")(inputs)  # 2 * 64 positions * 9 * 1 * 4
    x = layers.SeparableConv2D(6, 3, padding="same")(x)  # 2 * 64 * 9 * 4 + 2 * 64 * 4 * 6
    x = layers.DepthwiseConv2D(3, padding="valid")(x)  # 2 * 36 positions * 9 * 6
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(2)(x)  # 2 * 6 * 2
    model = keras.Model(inputs, outputs)
    expected = 4608 + (4608 + 3072) + 3888 + 24
    assert forward_flops(model) == expected
    assert training_flops(model) == 3 * expected
    # A nested model counts as its layers.
    outer_inputs = keras.Input((8, 8, 1))
    outer = keras.Model(outer_inputs, layers.Dense(1)(model(outer_inputs)))
    assert forward_flops(outer) == expected + 2 * 2 * 1
