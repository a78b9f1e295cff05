"""`pneumonia site check | calibrate | list` end to end, in-process: the tiny trained model with a
site reference built as evaluate builds it (from val-like images), real image folders, the
test's own MLflow store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from pneumonia.cli import main

from helpers import blob_pixels, run_cli, truncated_jpeg_bytes, write_params

# The reference's val-like images: one patient each, half of them in the reference part.
REFERENCE_IMAGES = 40
# A target and confidence the guarantee meets with few cases: 8 pneumonia images caught.
EASY = ["--sensitivity", "0.8", "--confidence", "0.8"]


def write_blobs(folder: Path, count: int, first_seed: int, positive: bool | None = None) -> list:
    """`count` tiny-model images as PNG files (alternating labels unless `positive` is given)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        label = bool(index % 2) if positive is None else positive
        path = folder / f"image{first_seed + index}.png"
        Image.fromarray(blob_pixels(first_seed + index, label)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def model_folder(tiny_model, tmp_path_factory) -> Path:
    """The tiny model, its card and operating point, with a site reference written for it as the
    evaluate stage writes one (site.reference.build_site_reference on val-like images)."""
    import keras

    from pneumonia.contracts.files import file_sha256
    from pneumonia.contracts.site_reference import write_site_reference
    from pneumonia.imaging.transforms import preprocess_file
    from pneumonia.site.features import feature_layer_names, features_and_scores
    from pneumonia.site.reference import build_site_reference

    folder = tmp_path_factory.mktemp("site-model")
    for name in ("model.keras", "model.json", "threshold.json"):
        shutil.copyfile(tiny_model["folder"] / name, folder / name)
    paths = write_blobs(folder / "val-images", REFERENCE_IMAGES, first_seed=5000)
    images = np.stack([preprocess_file(path, tiny_model["settings"]) for path in paths])[..., None]
    model = keras.saving.load_model(folder / "model.keras", compile=False)
    features, scores = features_and_scores(model, images)
    reference = build_site_reference(
        features,
        scores,
        np.arange(REFERENCE_IMAGES),
        model_sha256=file_sha256(folder / "model.keras"),
        feature_layers=feature_layer_names(model),
        threshold=tiny_model["threshold"],
        seed=0,
    )
    write_site_reference(folder / "site_reference.npz", reference)
    shutil.rmtree(folder / "val-images")
    return folder


@pytest.fixture
def project(model_folder, tmp_path) -> Path:
    """A project of the test's own: params.yaml, and paths.models holding the model."""
    write_params(tmp_path, {})
    shutil.copytree(model_folder, tmp_path / "models")
    return tmp_path


@pytest.fixture
def in_project(project, monkeypatch) -> Path:
    monkeypatch.chdir(project)
    return project


def labeled_folder(root: Path, positives: int, negatives: int, first_seed: int = 7000) -> Path:
    write_blobs(root / "NORMAL", negatives, first_seed, positive=False)
    write_blobs(root / "PNEUMONIA", positives, first_seed + negatives, positive=True)
    return root


def test_check_reports_the_test_and_skips_an_unreadable_image(in_project, capsys):
    site = in_project / "site"
    write_blobs(site, 20, first_seed=9000)
    (site / "broken.jpeg").write_bytes(truncated_jpeg_bytes())
    status, out, err = run_cli(["site", "check", str(site), "--json"], capsys)
    assert status == 0, err
    report = json.loads(out)
    for key in ("shifted", "p_value", "n_images", "classifier_auc", "atypical", "skipped"):
        assert key in report, key
    assert report["n_images"] == 20
    assert report["skipped"] == 1
    assert isinstance(report["shifted"], bool)
    assert 0.0 < report["p_value"] <= 1.0
    assert 0.0 <= report["classifier_auc"] <= 1.0
    assert report["atypical"] and {"path", "ood_score", "score"} <= set(report["atypical"][0])
    assert "broken.jpeg" in err and "1 image(s) skipped" in err


def test_check_in_words_names_the_atypical_images(in_project, capsys):
    site = in_project / "site"
    paths = write_blobs(site, 12, first_seed=9100)
    status, out, err = run_cli(["site", "check", str(site)], capsys)
    assert status == 0, err
    assert "the model's validation images (MMD test p = " in out
    assert "most atypical images" in out
    assert any(str(path) in out for path in paths)


def test_check_of_too_few_images_is_a_usage_error(in_project, capsys):
    site = in_project / "site"
    write_blobs(site, 3, first_seed=9200)
    status, _, err = run_cli(["site", "check", str(site)], capsys)
    assert status == 2
    assert "3 readable image(s)" in err and "at least 10" in err


def test_check_without_a_site_reference_names_the_file_and_the_fix(in_project, capsys):
    (in_project / "models" / "site_reference.npz").unlink()
    write_blobs(in_project / "site", 12, first_seed=9300)
    status, _, err = run_cli(["site", "check", str(in_project / "site")], capsys)
    assert status == 2
    assert "site_reference.npz: not found" in err and "evaluate" in err


def test_calibrate_writes_v1_then_v2_without_overwriting(in_project, capsys):
    cases = labeled_folder(in_project / "cases", positives=12, negatives=12)
    calibrate = ["site", "calibrate", str(cases), "--name", "st-marys", *EASY]
    status, out, err = run_cli(calibrate, capsys)
    assert status == 0, err
    assert out.startswith("site st-marys v1 written\n")
    first = in_project / "models" / "sites" / "st-marys" / "v1.json"
    written = first.read_text()
    point = json.loads(written)
    assert point["site"] == "st-marys" and point["version"] == 1
    assert point["calibration"]["positives"] == 12 and point["calibration"]["negatives"] == 12
    assert point["calibration"]["target_sensitivity"] == 0.8

    status, out, err = run_cli(calibrate, capsys)
    assert status == 0, err
    assert out.startswith("site st-marys v2 written (v1 kept)\n")
    assert first.read_text() == written
    assert json.loads((first.parent / "v2.json").read_text())["version"] == 2


def test_calibrate_logs_a_run_with_its_settings_and_the_point(in_project, capsys):
    cases = labeled_folder(in_project / "cases", positives=12, negatives=12)
    status, _, err = run_cli(["site", "calibrate", str(cases), "--name", "north", *EASY], capsys)
    assert status == 0, err
    from pneumonia.contracts.files import file_sha256

    runs = mlflow.search_runs(
        experiment_names=["pneumonia"],
        filter_string="attributes.run_name = 'site-calibrate@north'",
        output_format="list",
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.note.content"].startswith("Site north v1: threshold ")
    params = run.data.params
    assert params["site"] == "north"
    assert params["target"] == "0.8" and params["confidence"] == "0.8"
    assert params["folder"] == str(cases)
    assert params["model_sha256"] == file_sha256(in_project / "models" / "model.keras")
    metrics = run.data.metrics
    assert metrics["positives"] == 12 and metrics["negatives"] == 12
    for name in ("threshold", "sensitivity", "sensitivity_low", "specificity_high"):
        assert name in metrics
    artifacts = mlflow.MlflowClient().list_artifacts(run.info.run_id, "site")
    # The point, and the served version registered for it (recorded after the point is stored).
    assert [item.path for item in artifacts] == ["site/v1.json", "site/v1.serving.json"]


def test_calibrate_registers_a_served_version_for_the_site(in_project, capsys):
    cases = labeled_folder(in_project / "cases", positives=12, negatives=12)
    status, out, err = run_cli(["site", "calibrate", str(cases), "--name", "east", *EASY], capsys)
    assert status == 0, err
    point = json.loads((in_project / "models" / "sites" / "east" / "v1.json").read_text())
    served = json.loads((in_project / "models" / "sites" / "east" / "v1.serving.json").read_text())
    assert served["alias"] == "site-east"
    version = mlflow.MlflowClient().get_model_version_by_alias(
        served["registered_model"], "site-east"
    )
    assert str(version.version) == served["version"]
    assert version.tags["site"] == "east" and version.tags["site_version"] == "1"
    assert float(version.tags["threshold"]) == point["threshold"]
    assert f"models:/{served['registered_model']}@site-east" in out
    # What a server of that alias loads: the site's threshold, named as the site's point.
    from pneumonia.inference.loading import load_classifier

    classifier = load_classifier(f"models:/{served['registered_model']}@site-east")
    assert classifier.threshold == point["threshold"]
    assert classifier.operating_point == "site east v1"


def test_predict_uses_the_calibrated_point_by_the_site_name(in_project, capsys):
    cases = labeled_folder(in_project / "cases", positives=12, negatives=12)
    status, _, err = run_cli(["site", "calibrate", str(cases), "--name", "east", *EASY], capsys)
    assert status == 0, err
    point = json.loads((in_project / "models" / "sites" / "east" / "v1.json").read_text())
    status, out, err = run_cli(["predict", str(cases / "NORMAL"), "--site", "east"], capsys)
    assert status == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 12
    assert {row["operating_point"] for row in rows} == {"site east v1"}
    assert {row["threshold"] for row in rows} == {point["threshold"]}


def test_calibrate_with_too_few_pneumonia_images_names_how_many_are_needed(in_project, capsys):
    cases = labeled_folder(in_project / "cases", positives=12, negatives=12)
    status, _, err = run_cli(["site", "calibrate", str(cases), "--name", "west"], capsys)
    assert status == 2
    assert "12 pneumonia image(s)" in err and "needs at least 59" in err
    assert str(cases / "PNEUMONIA") in err
    assert not (in_project / "models" / "sites" / "west").exists()


@pytest.mark.parametrize("missing", ["NORMAL", "PNEUMONIA"])
def test_calibrate_refuses_a_folder_without_a_class_subfolder(in_project, capsys, missing):
    cases = labeled_folder(in_project / "cases", positives=3, negatives=3)
    shutil.rmtree(cases / missing)
    status, _, err = run_cli(["site", "calibrate", str(cases), "--name", "south"], capsys)
    assert status == 2
    assert f"{cases}: no {missing}/ subfolder" in err


def test_calibrate_refuses_a_folder_that_is_not_there(in_project, capsys):
    status, _, err = run_cli(
        ["site", "calibrate", str(in_project / "nowhere"), "--name", "south"], capsys
    )
    assert status == 2
    assert f"{in_project / 'nowhere'}: not a folder" in err


def test_calibrate_refuses_a_bad_site_name_and_a_target_of_one(in_project, capsys):
    cases = labeled_folder(in_project / "cases", positives=3, negatives=3)
    status, _, err = run_cli(["site", "calibrate", str(cases), "--name", "../up"], capsys)
    assert status == 2 and "site name '../up'" in err
    status, _, err = run_cli(
        ["site", "calibrate", str(cases), "--name", "a", "--sensitivity", "1"], capsys
    )
    assert status == 2 and "must be in (0, 1), got 1" in err


def test_list_shows_every_point_and_whether_it_fits_the_current_model(in_project, capsys):
    status, out, _ = run_cli(["site", "list"], capsys)
    assert status == 0 and out.startswith("no site operating points in ")
    cases = labeled_folder(in_project / "cases", positives=12, negatives=12)
    for name in ("alpha", "alpha", "beta"):
        status, _, err = run_cli(["site", "calibrate", str(cases), "--name", name, *EASY], capsys)
        assert status == 0, err
    status, out, _ = run_cli(["site", "list", "--json"], capsys)
    assert status == 0
    rows = json.loads(out)
    assert [(row["site"], row["version"]) for row in rows] == [
        ("alpha", 1),
        ("alpha", 2),
        ("beta", 1),
    ]
    first = rows[0]
    assert first["current_model"] is True
    assert first["positives"] == 12 and first["target_sensitivity"] == 0.8
    assert first["confidence"] == 0.8 and 0.0 <= first["specificity"] <= 1.0
    assert len(first["model_sha256"]) == 12 and first["created"]
    # Another model file in the same place: the points were chosen for the old one.
    model = in_project / "models" / "model.keras"
    model.write_bytes(model.read_bytes() + b"\0")
    status, out, _ = run_cli(["site", "list"], capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["site", "version"]
    assert len(lines) == 4 and all("no (another model file)" in line for line in lines[1:])


def test_check_refuses_an_mlflow_uri_for_the_model_in_one_line(in_project, capsys):
    write_blobs(in_project / "site", 12, first_seed=9400)
    arguments = ["site", "check", str(in_project / "site"), "--model", "models:/pneumonia@x"]
    status, _, err = run_cli(arguments, capsys)
    assert status == 2
    assert "--model models:/pneumonia@x: the site commands take a .keras file" in err


@pytest.mark.parametrize("action", ["check", "calibrate", "list"])
def test_site_help_renders_with_its_example(action, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["site", action, "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert f"example:\n  pneumonia site {action}" in out
    assert "%(default)" not in out


def test_a_calibration_that_fails_midway_stores_nothing_and_marks_its_run_failed(
    in_project, capsys
):
    """A site reference of another model file beside the model: the served version cannot be
    registered with it, so no point is stored and the run says why."""
    from dataclasses import replace

    from pneumonia.contracts.site_reference import read_site_reference, write_site_reference

    path = in_project / "models" / "site_reference.npz"
    reference = read_site_reference(path)
    foreign = reference.record.model_copy(update={"model_sha256": "0" * 64})
    write_site_reference(path, replace(reference, record=foreign))
    cases = labeled_folder(in_project / "cases", positives=12, negatives=12)
    status, _, err = run_cli(["site", "calibrate", str(cases), "--name", "north", *EASY], capsys)
    assert status == 2
    assert "site_reference.npz was written for a model file with sha256 000000000000" in err
    assert not (in_project / "models" / "sites" / "north").exists()
    (run,) = mlflow.search_runs(experiment_names=["pneumonia"], output_format="list")
    assert run.info.run_name == "site-calibrate@north"
    assert run.info.status == "FAILED"
    assert "SiteReferenceError" in run.data.tags["error"]
