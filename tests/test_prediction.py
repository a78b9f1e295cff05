"""`pneumonia predict` and the library under it: inputs, scoring with the training preprocessing,
failures that do not stop the others, the threshold, CSV/JSON output and Grad-CAM overlays."""

import csv
import io
import json
import shutil

import keras
import numpy as np
import pytest
from PIL import Image

from pneumonia.contracts.labels import label_for
from pneumonia.contracts.model_card import read_model_card, write_model_card
from pneumonia.contracts.model_reference import ModelReference
from pneumonia.contracts.operating_point import (
    OperatingPoint,
    OperatingPointError,
    read_operating_point,
    write_operating_point,
)
from pneumonia.errors import PipelineError
from pneumonia.imaging.transforms import preprocess_file
from pneumonia.inference.classifier import PredictionError
from pneumonia.inference.gradcam import ANNOTATED_SIDE, annotated_overlay
from pneumonia.inference.loading import load_classifier, load_model_file
from pneumonia.inference.prediction import expand_inputs, predict_paths

from helpers import TINY_SIDE, run_cli, truncated_jpeg_bytes, write_image, write_params


def expected_scores(tiny_model, paths):
    """What the saved Keras model says on the training preprocessing of each file."""
    model = keras.saving.load_model(tiny_model["model_path"], compile=False)
    pixels = np.stack([preprocess_file(path, tiny_model["settings"]) for path in paths])
    return model.predict(pixels[..., None], verbose=0).reshape(-1)


def test_folders_are_searched_for_images_and_named_files_taken_as_given(tmp_path):
    folder = tmp_path / "scans"
    for name in ("b.PNG", "a.jpeg", "sub/c.JPG", "sub/deeper/d.jpg", ".hidden.jpeg"):
        write_image(folder / name, seed=1)
    write_image(folder / "__MACOSX" / "sub" / "e.jpeg", seed=2)
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    named = tmp_path / "report.pdf"
    named.write_bytes(b"%PDF-1.4")
    entries = expand_inputs([folder, named, tmp_path / "missing.jpeg", tmp_path / "empty"])
    relative = [(path.relative_to(tmp_path).as_posix(), error) for path, error in entries]
    assert relative[:4] == [
        ("scans/a.jpeg", None),
        ("scans/b.PNG", None),
        ("scans/sub/c.JPG", None),
        ("scans/sub/deeper/d.jpg", None),
    ]
    assert relative[4] == ("report.pdf", None)  # named explicitly: tried, and will fail there
    assert relative[5][0] == "missing.jpeg" and "file not found" in relative[5][1]
    assert relative[6][0] == "empty" and "no .jpeg/.jpg/.png/.dcm/.dicom file" in relative[6][1]
    assert len(relative) == 7


def test_predictions_use_the_training_preprocessing_and_the_evaluate_threshold(tiny_model):
    classifier = load_model_file(tiny_model["model_path"])
    assert classifier.threshold == tiny_model["threshold"]
    paths = tiny_model["images"]
    predictions = list(predict_paths(classifier, paths, batch_size=3))
    assert [prediction.path for prediction in predictions] == [str(path) for path in paths]
    scores = np.array([prediction.score for prediction in predictions])
    np.testing.assert_allclose(scores, expected_scores(tiny_model, paths), rtol=1e-5, atol=1e-6)
    labels = [prediction.label for prediction in predictions]
    assert labels == [label_for(score, tiny_model["threshold"]) for score in scores]
    # The threshold is the median score, so both labels occur, and the image scored exactly at
    # the threshold is called pneumonia (>=), as evaluate counts it.
    assert set(labels) == {"NORMAL", "PNEUMONIA"}
    assert labels.count("PNEUMONIA") == len(paths) - len(paths) // 2
    assert all(prediction.ok for prediction in predictions)
    assert {prediction.threshold for prediction in predictions} == {classifier.threshold}


def test_a_bad_file_gets_an_error_and_the_others_are_still_scored(tiny_model, tmp_path):
    good = tiny_model["images"][:3]
    truncated = tmp_path / "truncated.jpeg"
    truncated.write_bytes(truncated_jpeg_bytes())
    text = tmp_path / "notes.png"
    text.write_text("a text file with an image name")
    classifier = load_model_file(tiny_model["model_path"])
    inputs = [good[0], truncated, good[1], text, tmp_path / "gone.jpeg", good[2]]
    predictions = list(predict_paths(classifier, inputs, batch_size=4))
    assert [prediction.ok for prediction in predictions] == [True, False, True, False, False, True]
    assert "truncated.jpeg: truncated image" in predictions[1].error
    assert "notes.png: not an image" in predictions[3].error
    assert "gone.jpeg: file not found" in predictions[4].error
    assert predictions[1].score is None and predictions[1].label is None
    scores = [predictions[index].score for index in (0, 2, 5)]
    np.testing.assert_allclose(scores, expected_scores(tiny_model, good), rtol=1e-5, atol=1e-6)


def test_cli_json_lines_on_stdout_error_lines_on_stderr_and_exit_one(tiny_model, tmp_path, capsys):
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(truncated_jpeg_bytes())
    arguments = ["predict", str(tiny_model["images"][0]), str(bad), str(tiny_model["images"][1])]
    status, out, err = run_cli([*arguments, "--model", str(tiny_model["model_path"])], capsys)
    assert status == 1
    rows = [json.loads(line) for line in out.splitlines()]
    columns = [
        "path",
        "score",
        "label",
        "threshold",
        "operating_point",
        "ood_score",
        "flag",
        "modality",
        "view",
        "error",
    ]
    assert [list(row) for row in rows] == [columns] * 3
    assert rows[1]["path"] == str(bad) and rows[1]["score"] is None
    assert rows[1]["error"].startswith(f"{bad}: truncated image")
    assert rows[0]["error"] is None and rows[0]["label"] in {"NORMAL", "PNEUMONIA"}
    assert rows[0]["threshold"] == tiny_model["threshold"]
    # The tiny model's folder has no site reference: no out-of-distribution score, said once.
    assert {row["operating_point"] for row in rows} == {"val"}
    assert all(row["ood_score"] is None and row["flag"] is None for row in rows)
    assert err.count("has no site reference (site_reference.npz") == 1
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert error_lines == [f"error: {rows[1]['error']}"]
    assert "2 image(s) scored, 1 failed" in err


def test_cli_csv_with_a_threshold_override_exits_zero(tiny_model, capsys):
    folder = tiny_model["folder"] / "images"
    arguments = ["predict", str(folder), "--model", str(tiny_model["model_path"])]
    status, out, _ = run_cli([*arguments, "--format", "csv", "--threshold", "0"], capsys)
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == len(tiny_model["images"])
    assert {row["label"] for row in rows} == {"PNEUMONIA"}  # everything is >= 0
    assert {row["threshold"] for row in rows} == {"0.0"} and {row["error"] for row in rows} == {""}
    assert {row["operating_point"] for row in rows} == {"--threshold override"}
    scores = [float(row["score"]) for row in rows]
    paths = sorted(tiny_model["images"])
    np.testing.assert_allclose(scores, expected_scores(tiny_model, paths), rtol=1e-5, atol=1e-6)


def test_gradcam_writes_one_overlay_per_image_with_unique_names(tiny_model, tmp_path, capsys):
    first, second = tiny_model["images"][:2]
    twin = tmp_path / "other" / first.name  # same file name in another folder
    twin.parent.mkdir()
    shutil.copyfile(first, twin)
    overlays = tmp_path / "gradcam"
    arguments = ["predict", str(first), str(second), str(twin), "--gradcam", str(overlays)]
    status, out, _ = run_cli([*arguments, "--model", str(tiny_model["model_path"])], capsys)
    assert status == 0
    rows = [json.loads(line) for line in out.splitlines()]
    written = [row["gradcam"] for row in rows]
    assert written == [
        str(overlays / f"{first.stem}.png"),
        str(overlays / f"{second.stem}.png"),
        str(overlays / f"{first.stem}-1.png"),
    ]
    for path in written:
        with Image.open(path) as image:
            assert image.mode == "RGB" and min(image.size) >= ANNOTATED_SIDE
            pixels = np.asarray(image)
        # The colour bar beside the X-ray runs from red (1.0, top) to blue (0.0, bottom), and
        # the footer under it carries dark text on white.
        bar = pixels[:ANNOTATED_SIDE, ANNOTATED_SIDE + 8 + 10]
        assert bar[0, 0] > 100 > bar[0, 2] and bar[-1, 2] > 100 > bar[-1, 0]
        footer = pixels[ANNOTATED_SIDE:]
        assert (footer < 100).all(axis=-1).sum() > 200 and (footer == 255).all(axis=-1).mean() > 0.5


def test_annotated_overlay_says_the_score_label_and_threshold():
    """The text differs with the label: a call on either side of the threshold is drawn apart."""
    grey = np.full((TINY_SIDE, TINY_SIDE), 128, np.uint8)
    heatmap = np.zeros((TINY_SIDE, TINY_SIDE), np.float32)
    heatmap[8:16, 8:16] = 1.0
    above = annotated_overlay(grey, heatmap, 0.9, "PNEUMONIA", 0.5, "val (youden)")
    below = annotated_overlay(grey, heatmap, 0.1, "NORMAL", 0.5, "val (youden)")
    assert above.shape == below.shape and above.shape[0] > ANNOTATED_SIDE
    assert (above[:ANNOTATED_SIDE] == below[:ANNOTATED_SIDE]).all()  # same map, same overlay
    assert (above[ANNOTATED_SIDE:] != below[ANNOTATED_SIDE:]).any()  # other text
    # The operating point's name is a line of its own.
    site = annotated_overlay(grey, heatmap, 0.9, "PNEUMONIA", 0.5, "site st-marys v2")
    assert (site[ANNOTATED_SIDE:] != above[ANNOTATED_SIDE:]).any()
    with pytest.raises(ValueError, match="at least 64 pixels"):
        annotated_overlay(grey, heatmap, 0.9, "PNEUMONIA", 0.5, side=8)


def test_missing_default_model_names_the_file_and_dvc_repro(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, err = run_cli(["predict", "x.jpeg"], capsys)
    assert status == 2 and out == ""
    assert "error: no --model given and no params.yaml here" in err
    # A project whose pipeline has not run: its params.yaml names the model that is missing.
    write_params(tmp_path, {})
    status, out, err = run_cli(["predict", "x.jpeg"], capsys)
    assert status == 2 and out == ""
    assert "models/model.keras: not found; run the pipeline first (dvc repro)" in err


def test_threshold_must_belong_to_the_model(tiny_model, tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(tiny_model["folder"], folder, ignore=shutil.ignore_patterns("images"))
    stale = OperatingPoint(threshold=0.3, model={"version": "7", "model_id": "m-older"})
    write_operating_point(folder / "threshold.json", stale)
    with pytest.raises(
        OperatingPointError, match=r"threshold\.json was chosen for model version 7"
    ):
        load_classifier(folder / "model.keras")
    assert load_classifier(folder / "model.keras", threshold=0.25).threshold == 0.25
    (folder / "threshold.json").unlink()
    with pytest.raises(
        OperatingPointError, match=r"threshold\.json: not found; the evaluate stage"
    ):
        load_classifier(folder / "model.keras")
    (folder / "model.json").write_text(json.dumps({"preprocess": {"image_size": 32}}))
    with pytest.raises(PipelineError, match="preprocess settings lack resize"):
        load_classifier(folder / "model.keras", threshold=0.5)


def test_preprocess_settings_must_fit_the_model(tiny_model, tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(tiny_model["folder"], folder, ignore=shutil.ignore_patterns("images"))
    card = read_model_card(folder / "model.json")
    resized = card.model_copy(update={"preprocess": {**card.preprocess, "image_size": 64}})
    write_model_card(folder / "model.json", resized)
    with pytest.raises(PredictionError, match=r"takes \(32, 32, 1\) but its preprocess settings"):
        load_classifier(folder / "model.keras")


def test_gradcam_is_refused_where_inputs_are_read_before_the_model_loads(
    tiny_model, tmp_path, capsys
):
    scans = tmp_path / "scans"
    shutil.copytree(tiny_model["images"][0].parent, scans)
    before = {path.name: path.read_bytes() for path in scans.iterdir()}
    for overlays in (scans, scans / "overlays"):
        arguments = ["predict", str(scans), "--gradcam", str(overlays)]
        # A model that does not exist: the check must come before loading it.
        status, out, err = run_cli([*arguments, "--model", str(tmp_path / "none.keras")], capsys)
        assert status == 2 and out == ""
        assert f"--gradcam {overlays}: the overlays would be written where inputs are read" in err
    # A named input file in the overlay folder would be overwritten by its own overlay.
    png = next(path for path in scans.iterdir() if path.suffix == ".png")
    arguments = [
        "predict",
        str(png),
        "--gradcam",
        str(scans),
        "--model",
        str(tiny_model["model_path"]),
    ]
    status, _, err = run_cli(arguments, capsys)
    assert status == 2 and "would be written where inputs are read" in err
    assert {path.name: path.read_bytes() for path in scans.iterdir()} == before


def test_an_unusable_gradcam_folder_is_one_error_line(tiny_model, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    image = str(tiny_model["images"][0])
    for target in (blocker, blocker / "inside"):
        arguments = ["predict", image, "--gradcam", str(target)]
        status, out, err = run_cli([*arguments, "--model", str(tiny_model["model_path"])], capsys)
        assert status == 2 and out == "" and "Traceback" not in err
        assert err.startswith(f"error: --gradcam {target}")


def test_broken_and_looping_links_and_folder_links_get_a_row(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "gone.jpeg").symlink_to(tmp_path / "missing.jpeg")
    (scans / "loop.png").symlink_to(scans / "loop.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    (scans / "elsewhere").symlink_to(outside)
    (scans / "self").symlink_to(scans)  # a folder loop: must not hang the walk
    entries = dict(expand_inputs([scans]))
    assert "a broken or looping link" in entries[scans / "gone.jpeg"]
    assert "a broken or looping link" in entries[scans / "loop.png"]
    assert "a link to a folder, not followed" in entries[scans / "elsewhere"]
    assert "a link to a folder, not followed" in entries[scans / "self"]


def test_a_corrupt_model_file_is_a_clear_error(tiny_model, tmp_path, capsys):
    folder = tmp_path / "models"
    shutil.copytree(tiny_model["folder"], folder, ignore=shutil.ignore_patterns("images"))
    (folder / "model.keras").write_bytes(b"PK\x03\x04 not really a zip")
    image = str(tiny_model["images"][0])
    # With its own threshold, as the operating point no longer names this file.
    arguments = ["predict", image, "--model", str(folder / "model.keras"), "--threshold", "0.5"]
    status, out, err = run_cli(arguments, capsys)
    assert status == 2 and out == "" and "Traceback" not in err
    assert "model.keras: not a readable Keras model" in err


def test_the_threshold_applies_only_to_the_model_file_it_names(tiny_model, tmp_path, capsys):
    """Another .keras dropped beside model.json and threshold.json is not scored at their
    threshold, and an operating point that names no model file is not used."""
    folder = tmp_path / "models"
    shutil.copytree(tiny_model["folder"], folder, ignore=shutil.ignore_patterns("images"))
    other = folder / "other.keras"
    keras.saving.load_model(folder / "model.keras").save(other)  # same weights, other bytes
    image = str(tiny_model["images"][0])
    status, out, err = run_cli(["predict", image, "--model", str(other)], capsys)
    assert status == 2 and out == ""
    assert "threshold.json was chosen for a model file with sha256" in err
    assert "other.keras has sha256" in err
    point = read_operating_point(folder / "threshold.json")
    write_operating_point(
        folder / "threshold.json", point.model_copy(update={"model": ModelReference()})
    )
    status, _, err = run_cli(["predict", image, "--model", str(folder / "model.keras")], capsys)
    assert status == 2 and "does not name the model file it was chosen for" in err
    # An explicit threshold needs no operating point.
    arguments = ["predict", image, "--model", str(other), "--threshold", "0.5"]
    assert run_cli(arguments, capsys)[0] == 0


def test_a_registry_error_does_not_print_the_tracking_password(tmp_path, monkeypatch, capsys):
    from helpers import free_port

    uri = f"http://reader:s3cret-pass@127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.chdir(tmp_path)
    model = "models:/pneumonia-classifier@champion"
    # The loader's own message, for a registry that stops answering after the command's check.
    with pytest.raises(PredictionError) as refused:
        load_classifier(model)
    message = str(refused.value)
    assert message.startswith(f"{model}: cannot load this MLflow model")
    assert "http://reader:***@127.0.0.1" in message and "s3cret" not in message
    status, out, err = run_cli(["predict", "x.jpeg", "--model", model], capsys)
    assert status == 2 and out == "" and "Traceback" not in err
    assert "http://reader:***@127.0.0.1" in err and "s3cret" not in err
