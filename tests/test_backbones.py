"""Keras Applications backbones (model.backbones): built small with real Keras layers, weights
from a file or Keras's ImageNet cache (the download is the one thing replaced), the two
fine-tuning phases, and the parts around a model (Grad-CAM, ensembles, tuning) with a backbone.

Small inputs (32 px) and random weights throughout: nothing here needs the ImageNet files."""

from __future__ import annotations

import runpy
import sys
import urllib.error
import warnings

import h5py
import keras
import mlflow
import numpy as np
import optuna
import pytest
from optuna.trial import FixedTrial

from pneumonia.config import BACKBONE_MIN_IMAGE_SIZE, ConfigError, load_config
from pneumonia.contracts.files import file_sha256
from pneumonia.inference.gradcam import feature_layer, gradcam_heatmaps
from pneumonia.model.backbones import (
    BACKBONES,
    OWN_LAYERS,
    WeightsError,
    backbone_layers,
    resolve_weights,
    unfreeze_backbone,
)
from pneumonia.model.network import average_ensemble, build_model, ensemble_members, save_model
from pneumonia.model.training import SplitArrays, fit
from pneumonia.model.tuning import fixed_trial_params, hyperparameters_from, suggest

from helpers import PROJECT_ROOT, tiny_project_arrays, write_params, write_tiny_project

SIDE = 32


def backbone_config(tmp_path, architecture="mobilenetv3small", weights="none", changes=None):
    """The tests' params with a backbone at SIDE px, and `changes` (dotted keys)."""
    params = {
        "preprocess.image.size": SIDE,
        "train.model.architecture": architecture,
        "train.model.weights": weights,
        "train.mixed_precision": "off",
        **(changes or {}),
    }
    return load_config(write_params(tmp_path, params))


def reference_application(architecture: str) -> keras.Model:
    """The stand-alone application, as `keras.applications` makes it (random weights)."""
    arguments = {"include_top": False, "weights": None, "input_shape": (SIDE, SIDE, 3)}
    if BACKBONES[architecture].preprocessing == "builtin":
        arguments["include_preprocessing"] = True
    return BACKBONES[architecture].constructor(**arguments)


def weighted(layers):
    return [layer for layer in layers if layer.weights]


@pytest.mark.parametrize("architecture", sorted(BACKBONES))
def test_every_backbone_builds_small_and_takes_raw_grey_pixels(tmp_path, architecture):
    config = backbone_config(tmp_path, architecture)
    model = build_model(SIDE, config.train.model)
    assert model.inputs[0].dtype == "uint8"
    assert tuple(model.inputs[0].shape) == (None, SIDE, SIDE, 1)
    pixels = np.random.default_rng(0).integers(0, 256, (2, SIDE, SIDE, 1), dtype=np.uint8)
    probabilities = keras.ops.convert_to_numpy(model(pixels, training=False))
    assert probabilities.shape == (2, 1) and np.all((probabilities >= 0) & (probabilities <= 1))
    assert model.layers[-1].dtype_policy.compute_dtype == "float32"
    # One model, not an ensemble, even where the backbone nests blocks (ConvNeXt).
    assert ensemble_members(model) == [model]
    # Grad-CAM finds the backbone's last spatial layer by itself.
    explained = feature_layer(model)
    assert explained.name not in OWN_LAYERS and len(explained.output.shape) == 4
    assert not [layer for layer in model.layers if type(layer).__name__ == "Lambda"]


def test_under_mixed_precision_the_backbone_runs_in_float16_and_the_head_in_float32(tmp_path):
    config = backbone_config(tmp_path, "resnet50v2")
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(SIDE, config.train.model)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert feature_layer(model).dtype_policy.compute_dtype == "float16"
    assert model.get_layer("imagenet_scale").dtype_policy.compute_dtype == "float16"
    assert model.get_layer("pneumonia").dtype_policy.compute_dtype == "float32"
    pixels = np.full((1, SIDE, SIDE, 1), 200, dtype=np.uint8)
    probability = model(pixels, training=False)
    assert probability.dtype == "float32" and np.isfinite(np.asarray(probability)).all()


@pytest.mark.parametrize(
    "architecture",
    [
        "mobilenetv3small",  # unnamed layers and operations (`x + 3`), numbered in the model
        # Its own LayerScale layers and nested blocks must survive a safe-mode load too.
        pytest.param("convnext_tiny", marks=pytest.mark.slow),
    ],
)
def test_a_backbone_model_saves_and_loads_safely_to_the_same_bytes(tmp_path, architecture):
    config = backbone_config(tmp_path, architecture)
    model = build_model(SIDE, config.train.model)
    again = build_model(SIDE, config.train.model)  # layer names must not depend on the first
    again.set_weights(model.get_weights())
    save_model(model, tmp_path / "first.keras")
    save_model(again, tmp_path / "second.keras")
    assert file_sha256(tmp_path / "first.keras") == file_sha256(tmp_path / "second.keras")
    loaded = keras.saving.load_model(tmp_path / "first.keras", compile=False, safe_mode=True)
    pixels = np.full((1, SIDE, SIDE, 1), 90, dtype=np.uint8)
    np.testing.assert_allclose(loaded(pixels), model(pixels), rtol=1e-5)


def save_legacy_h5(model: keras.Model, path) -> None:
    """The format of Keras's downloaded ImageNet files (weights by layer, in order)."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)


@pytest.mark.parametrize("kind", ["weights.h5", "h5"])
def test_weights_from_a_file_are_the_files(tmp_path, kind):
    keras.utils.set_random_seed(7)
    reference = reference_application("mobilenetv3small")
    path = tmp_path / f"random.{kind}"
    if kind == "weights.h5":
        reference.save_weights(path)
    else:
        save_legacy_h5(reference, path)
    config = backbone_config(tmp_path, weights=path.name)
    weights = resolve_weights(config.train.model, config.project_root)  # relative: the project's
    assert weights.path == path and weights.sha256 == file_sha256(path)
    keras.utils.set_random_seed(8)  # another random start, which the file must replace
    model = build_model(SIDE, config.train.model, weights)
    loaded, expected = weighted(backbone_layers(model)), weighted(reference.layers)
    assert len(loaded) == len(expected)
    for target, source in zip(loaded, expected, strict=True):
        for value, wanted in zip(target.get_weights(), source.get_weights(), strict=True):
            np.testing.assert_array_equal(value, wanted)


def test_a_missing_weights_file_is_refused(tmp_path):
    config = backbone_config(tmp_path, weights="absent.weights.h5")
    with pytest.raises(WeightsError, match=r"'train\.model\.weights' names .*absent"):
        resolve_weights(config.train.model, config.project_root)
    (tmp_path / "weights.npz").write_bytes(b"not h5")
    config = backbone_config(tmp_path, weights="weights.npz")
    with pytest.raises(WeightsError, match=r"weights\.npz is not a \.h5 weights file"):
        resolve_weights(config.train.model, config.project_root)


@pytest.mark.slow  # two backbones built (~4 s)
@pytest.mark.parametrize("kind", ["weights.h5", "h5"])
def test_a_weights_file_of_another_model_is_refused(tmp_path, kind):
    small = reference_application("mobilenetv3small")
    path = tmp_path / f"small.{kind}"
    if kind == "weights.h5":
        small.save_weights(path)
    else:
        save_legacy_h5(small, path)
    config = backbone_config(tmp_path, "resnet50v2", weights=path.name)
    # At resolve time (stage start), from the file's metadata: one line, no Keras warnings.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(WeightsError) as error:
            resolve_weights(config.train.model, config.project_root)
    assert caught == []
    message = str(error.value)
    assert message.startswith(f"{path}: does not fit ResNet50V2(include_top=False): ")
    assert "'train.model.weights'" in message and "\n" not in message


def block_downloads(monkeypatch, tmp_path):
    """No network and an empty Keras cache: the download is the only thing replaced."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))

    def offline(url, *arguments, **keywords):
        raise urllib.error.URLError("no network here")

    monkeypatch.setattr(keras.src.utils.file_utils, "urlretrieve", offline)


def test_imagenet_without_network_or_cache_says_what_to_fetch(tmp_path, monkeypatch):
    block_downloads(monkeypatch, tmp_path)
    config = backbone_config(tmp_path, "densenet121", weights="imagenet")
    with pytest.raises(WeightsError) as error:
        resolve_weights(config.train.model, config.project_root)
    message = str(error.value)
    cached = tmp_path / "keras-home" / "models" / BACKBONES["densenet121"].weights_file
    assert "'train.model.weights' is imagenet" in message
    assert str(cached) in message
    assert "keras.applications.DenseNet121(include_top=False, weights='imagenet')" in message
    assert BACKBONES["densenet121"].weights_url in message
    assert "or set 'train.model.weights' to the path" in message


def test_the_train_stage_fails_on_missing_imagenet_weights_before_reading_data(
    tmp_path, monkeypatch, capsys
):
    block_downloads(monkeypatch, tmp_path)
    # No processed data at all: reading it first would fail on that instead.
    params = {"train.model.architecture": "mobilenetv3small", "train.model.weights": "imagenet"}
    write_params(tmp_path / "project", {"preprocess.image.size": SIDE, **params})
    monkeypatch.chdir(tmp_path / "project")
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "stages"))
    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(PROJECT_ROOT / "stages" / "train.py"), run_name="__main__")
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "'train.model.weights' is imagenet" in error and "weights_mobilenet_v3_small" in error
    assert "preprocess" not in error


def test_config_names_the_backbone_minimum_and_refuses_weights_for_the_cnn(tmp_path):
    small = {"preprocess.image.size": 16, "preprocess.image.clahe_tile_grid": 4}
    for architecture, minimum in BACKBONE_MIN_IMAGE_SIZE.items():
        changes = {**small, "train.model.architecture": architecture}
        with pytest.raises(
            ConfigError, match=rf"image.size' \(16\) .* {architecture} .*>= {minimum}"
        ):
            load_config(write_params(tmp_path, changes))
    # The cnn's depth check does not apply to a backbone, nor a backbone's minimum to the cnn.
    load_config(write_params(tmp_path, {**small, "train.model.depth": 4}))
    with pytest.raises(ConfigError, match=r"'train\.model\.weights' must be none for .*cnn"):
        load_config(write_params(tmp_path, {"train.model.weights": "imagenet"}))
    with pytest.raises(ConfigError, match=r"'train\.fine_tuning\.unfreeze' must be all or"):
        load_config(write_params(tmp_path, {"train.fine_tuning.unfreeze": 0}))


def test_tuning_samples_the_fine_tuning_rate_and_depth_for_a_backbone_only(tmp_path):
    train = backbone_config(tmp_path, "mobilenetv3small").train
    space, fixed = train.tuning.search_space, train.hyperparameters
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    sampled = suggest(trial, space, fixed)
    assert {"fine_tuning_learning_rate", "unfreeze"} <= set(trial.params)
    assert "base_filters" not in trial.params
    low, high = space.fine_tuning_learning_rate
    assert low <= sampled.fine_tuning.learning_rate <= high
    assert sampled.fine_tuning.unfreeze in space.unfreeze
    params = {
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "weight_decay": 1e-5,
        "batch_size": 16,
        "dropout": 0.2,
        "fine_tuning_learning_rate": 3e-5,
        "unfreeze": 50,
    }
    chosen = suggest(FixedTrial(params), space, fixed)
    assert chosen.fine_tuning.learning_rate == 3e-5 and chosen.fine_tuning.unfreeze == 50
    assert hyperparameters_from(params, fixed) == chosen
    flat = chosen.flat()
    assert flat["fine_tuning.unfreeze"] == 50 and "model.base_filters" not in flat
    first = fixed_trial_params(fixed, space)
    assert first["unfreeze"] == "all" and "base_filters" not in first


def test_gradcam_and_ensembles_work_with_a_backbone(tmp_path):
    config = backbone_config(tmp_path, "mobilenetv3small")
    members = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        members.append(build_model(SIDE, config.train.model))
    ensemble = average_ensemble(members)
    assert len(ensemble_members(ensemble)) == 2
    images, _ = tiny_project_arrays(4, SIDE, 0)
    heatmaps, probabilities = gradcam_heatmaps(ensemble, images)
    assert heatmaps.shape == (4, SIDE, SIDE) and np.isfinite(heatmaps).all()
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    expected = np.mean([np.asarray(member(images, training=False))[:, 0] for member in members], 0)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)


class PhaseRecorder(keras.callbacks.Callback):
    """The backbone's and the head's weights at the start and end of each fit (phase)."""

    def __init__(self):
        super().__init__()
        self.phases = []

    def snapshot(self):
        return {
            "backbone": [w.numpy().copy() for w in weighted_variables(self.model)],
            "head": [w.numpy().copy() for w in self.model.get_layer("pneumonia").weights],
            "trainable": {
                layer.name
                for layer in backbone_layers(self.model)
                if layer.trainable and layer.weights
            },
        }

    def on_train_begin(self, logs=None):
        self.phases.append({"begin": self.snapshot()})

    def on_train_end(self, logs=None):
        self.phases[-1]["end"] = self.snapshot()


def weighted_variables(model):
    return [variable for layer in backbone_layers(model) for variable in layer.weights]


def changed(before, after):
    return [not np.array_equal(a, b) for a, b in zip(before, after, strict=True)]


@pytest.mark.slow  # two fits of a MobileNetV3 (Keras traces each phase's step: ~30 s)
def test_unfreezing_the_top_layers_freezes_the_rest_without_a_warm_up(tmp_path):
    """warmup_epochs 0: nothing froze the backbone before fine-tuning, so unfreezing the top N
    must itself freeze the layers below them (and pretrained BatchNorm)."""
    model = build_model(SIDE, backbone_config(tmp_path).train.model)
    unfreeze_backbone(model, 12, pretrained=True)
    top = backbone_layers(model)[-12:]
    expected = {
        layer.name for layer in top if not isinstance(layer, keras.layers.BatchNormalization)
    }
    trainable = {layer.name for layer in backbone_layers(model) if layer.trainable}
    assert trainable == expected and expected
    unfreeze_backbone(model, "all", pretrained=False)
    assert all(layer.trainable for layer in backbone_layers(model))


@pytest.mark.slow  # two fits of a real backbone: 20-35 s on 2 cores
def test_warmup_changes_no_backbone_weight_and_fine_tuning_does(tmp_path):
    keras.utils.set_random_seed(3)
    path = tmp_path / "start.weights.h5"
    reference_application("mobilenetv3small").save_weights(path)
    config = backbone_config(
        tmp_path,
        weights=path.name,
        changes={
            "train.fine_tuning.warmup_epochs": 1,
            "train.fine_tuning.unfreeze": 12,
            "train.fine_tuning.learning_rate": 0.01,
            "train.batch_size": 16,
            "train.early_stopping_patience": 0,
        },
    )
    weights = resolve_weights(config.train.model, config.project_root)
    images, labels = tiny_project_arrays(32, SIDE, 0)
    recorder = PhaseRecorder()
    model, history = fit(
        config.train.hyperparameters,
        SplitArrays(images, labels),
        SplitArrays(images, labels),
        config.train,
        epochs=1,
        callbacks=[recorder],
        weights=weights,
    )
    warmup, fine_tuning = recorder.phases
    # Before any training, the backbone holds the file's weights.
    from_file = reference_application("mobilenetv3small")
    from_file.load_weights(path)
    expected = [w.numpy() for layer in weighted(from_file.layers) for w in layer.weights]
    for value, wanted in zip(warmup["begin"]["backbone"], expected, strict=True):
        np.testing.assert_array_equal(value, wanted)
    # Warm-up: nothing of the backbone trainable or changed (BatchNorm statistics included);
    # the head learns.
    assert warmup["begin"]["trainable"] == set()
    assert not any(changed(warmup["begin"]["backbone"], warmup["end"]["backbone"]))
    assert any(changed(warmup["begin"]["head"], warmup["end"]["head"]))
    # Fine-tuning: the top 12 layers, without the pretrained BatchNorm, train.
    top = backbone_layers(model)[-12:]
    unfrozen = {
        layer.name
        for layer in top
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    }
    assert fine_tuning["begin"]["trainable"] == unfrozen and unfrozen
    moved = changed(fine_tuning["begin"]["backbone"], fine_tuning["end"]["backbone"])
    names = [layer.name for layer in backbone_layers(model) for _ in layer.weights]
    assert {name for name, move in zip(names, moved, strict=True) if move} == unfrozen
    # Epochs numbered on across the phases, in one history.
    assert history.epoch == [0, 1] and len(history.history["val_auc"]) == 2


@pytest.mark.slow  # one trial of a MobileNetV3 in a real tune-worker run (~20 s)
def test_a_tune_worker_tunes_a_backbone_and_logs_its_weights_file(tmp_path):
    from pneumonia.model.workers import run_worker

    tmp_path.mkdir(exist_ok=True)
    reference_application("mobilenetv3small").save_weights(tmp_path / "start.weights.h5")
    params = write_tiny_project(
        tmp_path,
        {
            "preprocess.image.size": SIDE,
            "train.model.architecture": "mobilenetv3small",
            "train.model.weights": "start.weights.h5",
            "train.fine_tuning.warmup_epochs": 0,
            "train.tuning.storage": "sqlite:///studies/s.db",
            "train.tuning.study_name": "backbone",
            "train.tuning.search_space.batch_size": [16],
        },
        images=32,
    )
    result = run_worker(load_config(params), n_trials=1, study_trials=None)
    (trial,) = result.trials
    assert trial.state.name == "COMPLETE"
    assert {"fine_tuning_learning_rate", "unfreeze"} <= set(trial.params)
    assert "base_filters" not in trial.params
    (worker,) = mlflow.search_runs(
        search_all_experiments=True,
        filter_string="tags.mlflow.runName LIKE 'tune-worker@%'",
        output_format="list",
    )
    assert worker.data.params["weights_sha256"] == file_sha256(tmp_path / "start.weights.h5")
