"""The GPU path, where TensorFlow sees a GPU (skipped elsewhere, saying so): the device line names
it, `train.mixed_precision: auto` trains in mixed float16 with a float32 output, and a tiny fit
runs on it. CI machines have no GPU; run `pytest -n 0 -m needs_gpu` on one."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pneumonia.console import device_summary
from pneumonia.model.network import build_model
from pneumonia.model.training import compile_model, configure_runtime

from helpers import TINY_CNN, fixture_train_config

pytestmark = pytest.mark.needs_gpu


@pytest.fixture
def float32_afterwards():
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_the_device_line_names_the_gpu_and_mixed_precision():
    assert device_summary("auto").startswith("device GPU:0 (")
    assert device_summary("auto").endswith("mixed precision on")
    assert device_summary("off").endswith("mixed precision off")


def test_auto_trains_in_mixed_float16_on_the_gpu(float32_afterwards):
    facts = configure_runtime(42, "auto")
    assert facts["device"] == "GPU" and facts["precision_policy"] == "mixed_float16"
    model = build_model(32, TINY_CNN, fused_batch_norm=True)
    compile_model(model, fixture_train_config().hyperparameters.optimizer)
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions and {layer.compute_dtype for layer in convolutions} == {"float16"}
    assert model.output.dtype == "float32"  # the probability stays float32
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(16, 32, 32, 1), dtype=np.uint8)
    labels = (np.arange(16) % 2).astype("float32")
    history = model.fit(images, labels, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])
