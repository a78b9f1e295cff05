"""The evaluate stage's pieces: input checks, the report, outcome selection and Grad-CAM."""

import json

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from pneumonia.config import load_config
from pneumonia.contracts.model_card import ModelCardError, read_model_card
from pneumonia.evaluation.outputs import write_figures, write_gradcam_panels
from pneumonia.evaluation.report import (
    EvaluationError,
    check_model_input,
    curve_tables,
    evaluation_report,
    flat_metrics,
    gradcam_examples,
    predictions_table,
)
from pneumonia.inference.classifier import PredictionError
from pneumonia.inference.gradcam import feature_layer, gradcam_heatmaps, overlay
from pneumonia.inference.loading import load_carded_model
from pneumonia.model.network import build_model

from helpers import TINY_CNN, write_params

SIDE = 32


def blob_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise; "pneumonia" images carry a bright square at a random place. Returns images,
    labels and a mask of where each square is."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 90, size=(count, SIDE, SIDE, 1)).astype(np.uint8)
    labels = np.arange(count) % 2
    masks = np.zeros((count, SIDE, SIDE), dtype=bool)
    for index in np.flatnonzero(labels):
        row, column = rng.integers(2, SIDE - 10, size=2)
        images[index, row : row + 8, column : column + 8, 0] = 230
        masks[index, row : row + 8, column : column + 8] = True
    return images, labels, masks


@pytest.fixture(scope="module")
def blob_model():
    """A real small CNN of the project's architecture, trained to find the squares."""
    keras.utils.set_random_seed(0)
    model = build_model(
        SIDE,
        TINY_CNN,
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    images, labels, _ = blob_images(256, seed=0)
    model.fit(images, labels, epochs=8, batch_size=32, verbose=0)
    return model


def test_gradcam_points_at_the_evidence(blob_model):
    images, labels, masks = blob_images(40, seed=1)
    heatmaps, probabilities = gradcam_heatmaps(blob_model, images, threshold=0.5)
    assert heatmaps.shape == (40, SIDE, SIDE)
    assert np.isfinite(heatmaps).all() and heatmaps.min() >= 0 and heatmaps.max() <= 1
    np.testing.assert_allclose(
        probabilities, blob_model.predict(images, verbose=0)[:, 0], rtol=1e-4, atol=1e-5
    )
    hits = [index for index in np.flatnonzero(labels) if probabilities[index] >= 0.5]
    assert len(hits) >= 15  # the model learnt the task
    # The last block sees 4x4-pixel cells and its filters fire on the square's edges, so the
    # evidence is the square and the cell around it: a quarter of the image.
    cell = np.ones((9, 9), np.uint8)
    near = {i: cv2.dilate(masks[i].astype(np.uint8), cell) > 0 for i in hits}
    share = np.mean([heatmaps[i][region].sum() / heatmaps[i].sum() for i, region in near.items()])
    area = np.mean([region.mean() for region in near.values()])
    assert share > 2.5 * area, (share, area)
    peaks = [region.ravel()[np.argmax(heatmaps[i])] for i, region in near.items()]
    assert np.mean(peaks) >= 0.8


def copy_of(model: keras.Model) -> keras.Model:
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    return twin


def test_gradcam_of_an_ensemble_averages_its_members_maps(blob_model):
    from pneumonia.model.network import average_ensemble

    images, _, _ = blob_images(24, seed=2)
    single, _ = gradcam_heatmaps(blob_model, images)
    # Two identical members: the same maps and probabilities as the network alone.
    twins = average_ensemble([copy_of(blob_model), copy_of(blob_model)])
    heatmaps, probabilities = gradcam_heatmaps(twins, images)
    np.testing.assert_allclose(heatmaps, single, atol=1e-5)
    # A member that sees nothing (all weights of its head zero: probability 0.5 everywhere)
    # halves the distance to 0.5 and adds an empty map, so the maps keep their shape.
    blind = copy_of(blob_model)
    head = blind.layers[-1]
    head.set_weights([np.zeros_like(weight) for weight in head.get_weights()])
    mixed = average_ensemble([copy_of(blob_model), blind])
    heatmaps, probabilities = gradcam_heatmaps(mixed, images)
    alone = blob_model.predict(images, verbose=0)[:, 0]
    np.testing.assert_allclose(probabilities, (alone + 0.5) / 2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probabilities, mixed.predict(images, verbose=0)[:, 0], atol=1e-5)
    # Where the explained call is the same, the blind member adds nothing to the map.
    same_call = (alone >= 0.5) == (probabilities >= 0.5)
    np.testing.assert_allclose(heatmaps[same_call], single[same_call], atol=1e-5)


def test_gradcam_explains_the_last_convolution_block(blob_model):
    assert feature_layer(blob_model).name == "block2_relu2"
    with pytest.raises(ValueError, match="do not fit the model input"):
        gradcam_heatmaps(blob_model, np.zeros((1, 16, 16, 1), dtype=np.uint8))


def test_overlay_blends_the_heatmap_on_the_grey_image():
    grey = np.full((8, 8), 100, dtype=np.uint8)
    heat = np.zeros((8, 8))
    heat[:4] = 1.0
    blended = overlay(grey, heat, opacity=0.5)
    assert blended.shape == (8, 8, 3) and blended.dtype == np.uint8
    np.testing.assert_array_equal(overlay(grey, heat, opacity=0.0), np.stack([grey] * 3, -1))
    assert blended[0, 0, 0] > blended[7, 7, 0]  # hot = red in the jet map
    with pytest.raises(ValueError, match="opacity"):
        overlay(grey, heat, opacity=2)


def test_model_that_does_not_fit_the_arrays_fails_naming_both(tmp_path, blob_model):
    model_path, arrays = tmp_path / "model.keras", tmp_path / "test" / "images.npy"
    with pytest.raises(EvaluationError, match=r"model\.keras takes images of shape \(32, 32, 1\)"):
        check_model_input(blob_model, np.zeros((2, 64, 64, 1), np.uint8), model_path, arrays)
    with pytest.raises(EvaluationError, match="expected uint8"):
        check_model_input(blob_model, np.zeros((2, 32, 32, 1), np.float32), model_path, arrays)


def test_missing_upstream_outputs_name_the_stage_to_run(tmp_path):
    with pytest.raises(PredictionError, match=r"model\.keras: not found; run the pipeline"):
        load_carded_model(tmp_path / "model.keras")
    with pytest.raises(ModelCardError, match=r"model\.json: not found; .*run the train stage"):
        read_model_card(tmp_path / "model.json")
    (tmp_path / "model.json").write_text(json.dumps({"input": {}}))
    with pytest.raises(ModelCardError, match="no preprocess, mlflow section"):
        read_model_card(tmp_path / "model.json")
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelCardError, match="not valid JSON"):
        read_model_card(tmp_path / "model.json")


def synthetic_scores(count: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = (rng.random(count) < 0.6).astype(int)
    scores = np.clip(0.4 * labels + 0.6 * rng.random(count), 0, 1)
    patients = np.repeat(np.arange(count // 2), 2)[:count].astype(str)
    return labels, scores, patients


def test_report_measures_test_at_the_val_threshold_and_at_one_half(tmp_path):
    settings = load_config(write_params(tmp_path, {"evaluate.bootstrap": 200})).evaluate
    val, test = synthetic_scores(120, seed=1), synthetic_scores(80, seed=2)
    report = evaluation_report(settings, 0.42, val, test)
    assert report["threshold"] == {"rule": "youden", "value": 0.42, "chosen_on": "val"}
    assert report["bootstrap"]["unit"] == "patient"
    assert report["test"]["images"] == 80 and report["test"]["patients"] == 40
    assert report["test"]["at_threshold"]["threshold"] == 0.42
    assert report["test"]["at_0_5"]["threshold"] == 0.5
    for section in (report["val"]["at_threshold"], report["test"]["at_threshold"]):
        for name in ("accuracy", "sensitivity", "specificity", "roc_auc", "brier", "ece"):
            assert section[name]["ci_low"] <= section[name]["value"] <= section[name]["ci_high"]
        assert sum(section["confusion"].values()) in (80, 120)
    flat = flat_metrics(report["test"]["at_threshold"], "test")
    assert {"test/roc_auc", "test/roc_auc_low", "test/roc_auc_high", "test/true_positive"} <= set(
        flat
    )
    assert all(name.startswith("test/") for name in flat)  # one chart group in the MLflow UI
    json.dumps(report)  # what reports/metrics.json gets must serialise


def test_outcomes_pick_the_most_confident_images():
    labels = np.array([1, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.6, 0.7, 0.1, 0.2, 0.95])
    chosen = gradcam_examples(labels, scores, threshold=0.5, per_outcome=1)
    assert {name: index.tolist() for name, index in chosen.items()} == {
        "true_positive": [0],
        "false_positive": [5],  # the normal image called pneumonia most confidently
        "true_negative": [3],
        "false_negative": [4],
    }
    index = pd.DataFrame({"path": [f"x/{i}.jpeg" for i in range(6)], "patient_id": list("abcdef")})
    table = predictions_table(index, labels, scores, 0.5)
    assert table["actual"].tolist()[:3] == ["PNEUMONIA", "PNEUMONIA", "NORMAL"]
    assert table["predicted"].tolist()[:3] == ["PNEUMONIA", "PNEUMONIA", "PNEUMONIA"]
    assert table["outcome"].tolist()[2] == "false_positive"


def test_figures_and_gradcam_panels_are_written(tmp_path, blob_model):
    settings = load_config(write_params(tmp_path, {"evaluate.bootstrap": 100})).evaluate
    images, labels, _ = blob_images(24, seed=3)
    scores = blob_model.predict(images, verbose=0)[:, 0].astype(float)
    patients = np.arange(24).astype(str)
    scored = (labels, scores, patients)
    report = evaluation_report(settings, 0.5, scored, scored)
    tables = curve_tables(labels, scores, bins=5)
    assert tables["roc"]["fpr"].iloc[0] == 0 and tables["roc"]["tpr"].iloc[-1] == 1
    figures = write_figures(report["test"]["at_threshold"], tables, 0.5, tmp_path / "plots")
    assert [path.name for path in figures] == [
        "roc.png",
        "precision_recall.png",
        "calibration.png",
        "confusion_matrix.png",
    ]
    folder = tmp_path / "gradcam"
    folder.mkdir()
    (folder / "stale.png").write_bytes(b"old")
    index = pd.DataFrame({"path": [f"test/{i}.jpeg" for i in range(24)]})
    shown = write_gradcam_panels(blob_model, images, index, scores, labels, 0.5, 2, folder)
    written = sorted(path.stem for path in folder.glob("*.png"))
    assert written == sorted(name for name, count in shown.items() if count)
    assert all(path.stat().st_size > 1000 for path in folder.glob("*.png"))
