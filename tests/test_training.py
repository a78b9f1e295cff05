import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from pneumonia.config import AugmentationConfig, ConfigError, load_config
from pneumonia.contracts.arrays import ProcessedDataError, write_split
from pneumonia.model.dataset import class_weights, make_dataset
from pneumonia.model.training import load_training_splits

from helpers import fixture_train_config, write_params


def write_processed(config, sizes: dict[str, int], side: int) -> None:
    for name, count in sizes.items():
        directory = config.paths.processed_split(name)
        directory.mkdir(parents=True)
        np.save(directory / "images.npy", np.zeros((count, side, side, 1), dtype=np.uint8))
        frame = pd.DataFrame(
            {
                "path": [f"{i}.jpeg" for i in range(count)],
                "label": ["NORMAL"] * count,
                "patient_id": ["p"] * count,
                "sha256": ["s"] * count,
            }
        )
        write_split(directory, frame, np.zeros(count, dtype=np.uint8))


def test_image_size_that_does_not_match_the_arrays_fails_naming_the_param(tmp_path):
    config = load_config(write_params(tmp_path, {"preprocess.image.size": 64}))
    write_processed(config, {"train": 4, "val": 2}, side=32)
    with pytest.raises(ConfigError, match=r"'preprocess\.image\.size' is 64 but .*\(32, 32, 1\)"):
        load_training_splits(config)


def test_empty_split_fails_clearly(tmp_path):
    config = load_config(write_params(tmp_path, {"preprocess.image.size": 32}))
    write_processed(config, {"train": 4, "val": 0}, side=32)
    with pytest.raises(ProcessedDataError, match="the val split is empty"):
        load_training_splits(config)


def test_missing_processed_data_names_the_stage(tmp_path):
    config = load_config(write_params(tmp_path, {}))
    with pytest.raises(ProcessedDataError, match="run the preprocess stage"):
        load_training_splits(config)


def test_depth_too_deep_for_the_image_fails_at_load(tmp_path):
    params = write_params(tmp_path, {"preprocess.image.size": 32, "train.model.depth": 6})
    with pytest.raises(ConfigError, match=r"'train\.model\.depth' 6 .*needs >= 64"):
        load_config(params)


def test_balanced_class_weights_undo_the_imbalance():
    labels = np.array([0] * 25 + [1] * 75)
    weights = class_weights(labels, "balanced")
    assert weights == pytest.approx({0: 2.0, 1: 2 / 3})
    assert class_weights(labels, "none") is None
    with pytest.raises(ValueError, match="only class"):
        class_weights(np.ones(5, dtype=int), "balanced")


def augmentation(**strengths: float) -> AugmentationConfig:
    """Every jitter off but the ones named."""
    off = dict.fromkeys(AugmentationConfig.model_fields, 0.0)
    return AugmentationConfig(**{**off, **strengths})


def test_dataset_yields_uint8_batches_and_augments_only_training_data():

    images = np.tile(np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1) * 10, (10, 1, 1, 1))
    labels = np.arange(10) % 2
    jitter = augmentation(rotation=0.1, shift=0.2, zoom=0.2, contrast=0.3)
    plain = make_dataset(images, labels, 4, training=False, seed=0, augmentation=jitter)
    batch, target = next(iter(plain))
    assert batch.dtype == "uint8" and target.dtype == "float32"
    np.testing.assert_array_equal(batch.numpy(), images[:4])
    augmented = make_dataset(images, labels, 10, training=True, seed=0, augmentation=jitter)
    batch, _ = next(iter(augmented))
    assert batch.dtype == "uint8"
    assert not np.array_equal(batch.numpy(), images)
    again, _ = next(
        iter(make_dataset(images, labels, 10, training=True, seed=0, augmentation=jitter))
    )
    np.testing.assert_array_equal(batch.numpy(), again.numpy())


def test_exposure_and_blur_jitter_change_brightness_and_sharpness():

    # A sharp vertical edge at mid-grey: brightness moves the mean, blur softens the edge.
    image = np.full((1, 16, 16, 1), 100, dtype=np.uint8)
    image[:, :, 8:] = 160
    images, labels = np.repeat(image, 64, axis=0), np.zeros(64, dtype=int)
    off = augmentation()
    exposure = augmentation(brightness=0.2)
    blur = augmentation(blur=2.0)

    def batch(config: AugmentationConfig) -> np.ndarray:
        dataset = make_dataset(images, labels, 64, training=True, seed=3, augmentation=config)
        return next(iter(dataset))[0].numpy().astype(float)

    np.testing.assert_array_equal(batch(off), images)
    means = batch(exposure).mean(axis=(1, 2, 3))
    assert means.std() > 5 and np.abs(means - 130).max() <= 0.2 * 255 + 1
    # Blur keeps the mean (away from the clipped range) and shrinks the step at the edge.
    blurred = batch(blur)
    steps = blurred[:, 8, 8, 0] - blurred[:, 8, 7, 0]
    assert steps.min() < 60 and (steps < 60).sum() >= 8
    assert np.abs(blurred.mean(axis=(1, 2, 3)) - 130).max() < 3


def test_aspect_jitter_changes_width_but_not_height():

    # A bright centred box 16 px wide and 16 px tall on black: only its width may change.
    image = np.zeros((1, 32, 32, 1), dtype=np.uint8)
    image[:, 8:24, 8:24] = 200
    images, labels = np.repeat(image, 64, axis=0), np.zeros(64, dtype=int)
    aspect = augmentation(aspect=0.3)
    batch = next(iter(make_dataset(images, labels, 64, training=True, seed=5, augmentation=aspect)))
    bright = batch[0].numpy()[..., 0] > 100
    widths = bright[:, 16, :].sum(axis=1)
    heights = bright[:, :, 16].sum(axis=1)
    np.testing.assert_array_equal(heights, 16)
    assert widths.min() <= 14 and widths.max() >= 18
    # Zoom factors of +-0.3 keep the width between 16 / 1.3 and 16 / 0.7 (plus a pixel of rounding).
    assert widths.min() >= 11 and widths.max() <= 24


def test_label_smoothing_reaches_the_loss():
    from pneumonia.model.network import build_model
    from pneumonia.model.training import compile_model

    hyperparameters = fixture_train_config().hyperparameters

    def compiled(label_smoothing: float):
        model = build_model(32, hyperparameters.model, fused_batch_norm=True)
        compile_model(model, hyperparameters.optimizer, label_smoothing)
        return model

    model = compiled(0.2)
    assert model.loss.get_config()["label_smoothing"] == 0.2
    targets, outputs = np.array([[1.0], [0.0]]), np.array([[0.9], [0.1]])
    smoothed = float(model.loss(targets, outputs))
    plain = float(compiled(0.0).loss(targets, outputs))
    # Smoothing moves the targets to 0.9 / 0.1, exactly the outputs: the loss is their entropy.
    assert smoothed == pytest.approx(-(0.9 * np.log(0.9) + 0.1 * np.log(0.1)), rel=1e-3)
    assert plain == pytest.approx(-np.log(0.9), rel=1e-3)


def test_cosine_schedule_decays_the_learning_rate_to_zero_over_the_fit(tmp_path):
    import keras

    from pneumonia.model.training import SplitArrays, fit

    # Constant, whatever params.yaml's default: the last fit checks that the rate stays put.
    config = fixture_train_config({"train.learning_rate_schedule": "constant"})
    cosine = config.model_copy(update={"learning_rate_schedule": "cosine"})
    hyperparameters = config.hyperparameters.model_copy(
        update={
            "batch_size": 8,
            "model": config.model.model_copy(update={"depth": 2, "base_filters": 4}),
        }
    )
    generator = np.random.default_rng(0)
    images = generator.integers(0, 255, (20, 16, 16, 1), dtype=np.uint8)
    split = SplitArrays(images, np.arange(20) % 2)
    initial = hyperparameters.optimizer.learning_rate

    model, history = fit(hyperparameters, split, split, cosine, epochs=2, callbacks=[])
    # 20 images in batches of 8: 3 steps an epoch, 6 in all, after which the rate is 0.
    assert int(model.optimizer.iterations) == 6
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)
    schedule = model.optimizer._learning_rate
    assert float(schedule(0)) == pytest.approx(initial)
    assert float(schedule(3)) == pytest.approx(initial / 2, rel=1e-4)
    assert len(history.history["loss"]) == 2
    # The saved model (its optimizer carries the schedule) loads back.
    model.save(tmp_path / "cosine.keras")
    keras.models.load_model(tmp_path / "cosine.keras")

    constant, _ = fit(hyperparameters, split, split, config, epochs=1, callbacks=[])
    assert float(constant.optimizer.learning_rate) == pytest.approx(initial)


@pytest.mark.slow  # the real train stage in a subprocess: a one-trial study and a 3-epoch fit
def test_train_stage_keeps_the_epoch_curves_apart_from_the_saved_models_val_auc(tmp_path):
    """Keras' per-epoch `val_auc` holds one point per epoch, steps in order, equal to
    history.csv; the saved model's exact val AUC is `val_roc_auc` in train.json, in the run
    and on the console. The run and its fresh study carry the DVC experiment's name."""
    import json
    import os
    import re
    import subprocess
    import sys

    import mlflow
    import optuna

    from helpers import PROJECT_ROOT, write_tiny_project

    changes = {"train.epochs": 3, "train.early_stopping_patience": 0, "train.tuning.n_trials": 1}
    project = write_tiny_project(tmp_path / "project", changes).parent
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "stages" / "train.py")],
        cwd=project,
        env={**os.environ, "DVC_EXP_NAME": "q7-depth5"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((project / "reports" / "train.json").read_text())
    assert "val_auc" not in summary
    card = json.loads((project / "models" / "model.json").read_text())
    client = mlflow.MlflowClient()
    run = client.get_run(card["mlflow"]["run_id"])
    assert run.info.run_name == "train@q7-depth5"
    assert run.data.metrics["val_roc_auc"] == pytest.approx(summary["val_roc_auc"])
    assert f"train: val ROC AUC {summary['val_roc_auc']:.4f}" in result.stdout
    assert run.data.tags["mlflow.note.content"].startswith("train: val ROC AUC")

    history = pd.read_csv(project / "reports" / "train" / "history.csv")
    for key in ("val_auc", "auc", "loss", "val_loss"):
        points = client.get_metric_history(run.info.run_id, key)
        assert [point.step for point in points] == list(history["epoch"]), key
        assert [point.value for point in points] == pytest.approx(list(history[key])), key

    study_name = run.data.tags["optuna_study"]
    assert re.fullmatch(r"train@q7-depth5-[0-9a-f]{8}", study_name)
    storage = f"sqlite:///{project / 'studies' / 'optuna.db'}"
    assert optuna.load_study(study_name=study_name, storage=storage).metric_names == ["val_auc"]
    version = client.get_model_version(
        card["mlflow"]["registered_model"], card["mlflow"]["version"]
    )
    assert "Not yet evaluated" in version.description
    assert client.get_registered_model(card["mlflow"]["registered_model"]).description


def test_geometric_jitter_is_one_seeded_affine_within_its_ranges():
    from pneumonia.model.dataset import RandomAffine, augmentation_layers

    # Rotation, shift, zoom and aspect are one resampling; contrast stays a layer of its own.
    jitter = augmentation_layers(augmentation(rotation=0.1, shift=0.1, zoom=0.1, contrast=0.1), 0)
    assert [type(layer).__name__ for layer in jitter] == ["RandomAffine", "RandomContrast"]

    # A bright dot at the centre of a 33 px image: a shift of +-0.1 moves it at most 3.3 px
    # along each axis, and the dots of a batch land in different places.
    image = np.zeros((64, 33, 33, 1), dtype=np.float32)
    image[:, 16, 16] = 255
    shifted = RandomAffine(0.0, 0.1, 0.0, 0.0, seed=1)(image).numpy()[..., 0]
    rows, columns = np.unravel_index(shifted.reshape(64, -1).argmax(axis=1), (33, 33))
    assert np.abs(rows - 16).max() <= 4 and np.abs(columns - 16).max() <= 4
    assert len(set(zip(rows, columns, strict=True))) > 10

    # Rotation (+-0.05 of a turn, 18 degrees) and zoom turn about the centre: it stays put.
    turned = RandomAffine(0.05, 0.0, 0.2, 0.0, seed=2)(image).numpy()[..., 0]
    np.testing.assert_allclose(turned[:, 16, 16], 255, rtol=1e-5)
    # A horizontal bar through the centre tilts by up to 18 degrees: its end rows move by up to
    # tan(18 deg) * 12 ~ 3.9 px, and by more than one pixel in some images.
    bar = np.zeros((64, 33, 33, 1), dtype=np.float32)
    bar[:, 16, 4:29] = 255
    tilted = RandomAffine(0.05, 0.0, 0.0, 0.0, seed=3)(bar).numpy()[..., 0]
    end_rows = tilted[:, :, 28].argmax(axis=1)
    assert np.abs(end_rows - 16).max() <= 5 and (np.abs(end_rows - 16) >= 2).sum() >= 8

    # The same seed draws the same transforms; another seed others.
    again = RandomAffine(0.0, 0.1, 0.0, 0.0, seed=1)(image).numpy()[..., 0]
    np.testing.assert_array_equal(again, shifted)
    other = RandomAffine(0.0, 0.1, 0.0, 0.0, seed=9)(image).numpy()[..., 0]
    assert not np.array_equal(other, shifted)


def test_a_repeated_training_dataset_reshuffles_every_pass_and_is_seeded():

    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    labels = np.arange(10) % 2

    def passes(seed: int) -> list[list[int]]:
        dataset = make_dataset(images, labels, 5, training=True, seed=seed, repeat=True)
        pixels = np.concatenate([batch.numpy().reshape(-1) for batch, _ in dataset.take(6)])
        return pixels.reshape(3, 10).tolist()

    first = passes(4)
    assert all(sorted(one) == list(range(10)) for one in first)  # each pass: every image once
    assert len({tuple(one) for one in first}) == 3  # in a new order each pass
    assert passes(4) == first and passes(5) != first


def test_datasets_run_without_tf_data_autotuning_and_give_the_same_batches():
    from pneumonia.model.training import seed_everything

    images = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 1), dtype=np.uint8)
    labels = np.arange(40) % 2
    jitter = augmentation(rotation=0.1, shift=0.1, zoom=0.1, contrast=0.1)

    def batches(dataset) -> list[np.ndarray]:
        return [batch.numpy() for batch, _ in dataset.take(10)]

    seed_everything(0)
    dataset = make_dataset(
        images, labels, 8, training=True, seed=0, augmentation=jitter, repeat=True
    )
    assert dataset.options().autotune.enabled is False
    # Autotuning would only change buffer sizes and threads, never the batches: the same
    # pipeline with it on gives them byte for byte.
    options = tf.data.Options()
    options.autotune.enabled = True
    seed_everything(0)
    tuned = make_dataset(images, labels, 8, training=True, seed=0, augmentation=jitter, repeat=True)
    for one, other in zip(batches(dataset), batches(tuned.with_options(options)), strict=True):
        np.testing.assert_array_equal(one, other)
