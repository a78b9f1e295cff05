"""`pneumonia predict` with the site workflow (issue 25): each row's score, the operating point
it was called at and its out-of-distribution score against the model's site reference; a chart
screenshot and a photo flagged; a site's own operating point (`--site`), refused for another
model file; one warning for a large batch that differs from the model's val images."""

import json
import shutil

import keras
import numpy as np
import pytest

from pneumonia.contracts.files import file_sha256
from pneumonia.contracts.labels import label_for
from pneumonia.contracts.site_reference import read_site_reference
from pneumonia.imaging.transforms import preprocess_file
from pneumonia.inference.loading import load_model_file
from pneumonia.inference.prediction import ScoredFeatures, predict_paths
from pneumonia.inference.site_use import (
    BATCH_CHECK_AT_MOST,
    batch_site_check,
    collector,
    shift_warning,
)
from pneumonia.site.check import OutOfDistribution
from pneumonia.site.features import features_and_scores
from pneumonia.site.points import store_site_point

from helpers import run_cli
from helpers.site_inputs import (
    tiny_site_point,
    tiny_val_pixels,
    write_blob_images,
    write_chart_png,
    write_photo_jpeg,
    write_shifted_images,
    write_tiny_site_reference,
)

SITE = "st-marys"
SHIFT_WARNING = "differ from the model's validation images"


@pytest.fixture(scope="module")
def site_model(tiny_model, tmp_path_factory):
    """The tiny model's folder with a site reference beside the model, as evaluate leaves it."""
    folder = tmp_path_factory.mktemp("site-model") / "models"
    shutil.copytree(tiny_model["folder"], folder, ignore=shutil.ignore_patterns("images"))
    model_path = folder / "model.keras"
    write_tiny_site_reference(model_path, folder / "site_reference.npz", tiny_model["threshold"])
    return {**tiny_model, "folder": folder, "model_path": model_path}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Images of the tiny model's own kind (unshifted), of another kind (shifted), and a chart
    screenshot and a photo."""
    folder = tmp_path_factory.mktemp("site-inputs")
    return {
        "unshifted": write_blob_images(folder / "unshifted", 60, first_seed=9000),
        "shifted": write_shifted_images(folder / "shifted", 60, first_seed=9000),
        "chart": write_chart_png(folder / "chart.png"),
        "photo": write_photo_jpeg(folder / "photo.jpeg"),
    }


def rows_of(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


def test_rows_carry_the_score_the_operating_point_and_the_ood_score(site_model, inputs):
    classifier = load_model_file(site_model["model_path"])
    assert classifier.reference is not None and classifier.operating_point == "val"
    paths = inputs["unshifted"][:5]
    predictions = list(predict_paths(classifier, paths, batch_size=2))
    # What the saved model's pooled features say, measured apart from predict.
    model = keras.saving.load_model(site_model["model_path"], compile=False)
    pixels = np.stack([preprocess_file(path, site_model["settings"]) for path in paths])
    features, scores = features_and_scores(model, pixels[..., None])
    reference = read_site_reference(site_model["folder"] / "site_reference.npz")
    expected_ood = OutOfDistribution(reference).scores(features)
    for prediction, score, ood in zip(predictions, scores, expected_ood, strict=True):
        assert prediction.score == pytest.approx(score, rel=1e-5, abs=1e-6)
        assert prediction.label == label_for(prediction.score, classifier.threshold)
        assert prediction.operating_point == "val"
        assert prediction.ood_score == pytest.approx(ood, rel=1e-4, abs=1e-5)
        assert prediction.flag == ("out-of-distribution" if ood > 1 else None)
        assert list(prediction.row()) == [
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


def test_a_chart_screenshot_and_a_photo_are_flagged_out_of_distribution(site_model, inputs, capsys):
    ordinary = inputs["unshifted"][:3]
    arguments = ["predict", str(inputs["chart"]), str(inputs["photo"]), *map(str, ordinary)]
    status, out, err = run_cli([*arguments, "--model", str(site_model["model_path"])], capsys)
    assert status == 0, err
    chart, photo, *others = rows_of(out)
    for row in (chart, photo):
        assert row["flag"] == "out-of-distribution", row
        assert row["ood_score"] > 1 and row["label"] in {"NORMAL", "PNEUMONIA"}
    for row in others:  # images of the model's own kind
        assert row["flag"] is None and row["ood_score"] <= 1, row
    assert min(chart["ood_score"], photo["ood_score"]) > max(row["ood_score"] for row in others)
    assert "5 image(s) scored, 0 failed, 2 flagged out-of-distribution" in err
    assert "no site reference" not in err and not warnings_in(err)  # 5 images: no batch check


def test_site_uses_the_site_threshold_and_names_it(site_model, inputs, tmp_path, capsys):
    folder = tmp_path / "models"
    shutil.copytree(site_model["folder"], folder)
    model_path = folder / "model.keras"
    first, _ = store_site_point(folder, tiny_site_point(model_path, target=0.9))
    second, _ = store_site_point(folder, tiny_site_point(model_path, target=0.8, seed=8000))
    assert (first.version, second.version) == (1, 2)
    assert len({first.threshold, second.threshold, site_model["threshold"]}) == 3
    images = [*map(str, inputs["unshifted"][:6]), str(inputs["chart"])]
    for site, point in ((SITE, second), (f"{SITE}@v1", first)):
        arguments = ["predict", *images, "--model", str(model_path), "--site", site]
        status, out, err = run_cli(arguments, capsys)
        assert status == 0, err
        rows = rows_of(out)
        assert {row["threshold"] for row in rows} == {point.threshold}
        assert {row["operating_point"] for row in rows} == {f"site {SITE} v{point.version}"}
        assert all(row["label"] == label_for(row["score"], point.threshold) for row in rows)
        assert rows[-1]["flag"] == "out-of-distribution"  # the site point does not hide it
        assert f"(site {SITE} v{point.version})" in err
    arguments = ["predict", images[0], "--model", str(model_path), "--site", SITE]
    status, out, err = run_cli([*arguments, "--threshold", "0.5"], capsys)
    assert status == 2 and out == ""
    assert "argument --threshold: not allowed with argument --site" in err
    status, out, err = run_cli([*arguments[:-1], "elsewhere"], capsys)
    assert status == 2 and "no operating point for site 'elsewhere'" in err
    assert f"known: {SITE}" in err


def test_a_site_point_for_another_model_file_is_refused(site_model, inputs, tmp_path, capsys):
    folder = tmp_path / "models"
    shutil.copytree(site_model["folder"], folder)
    _, point_path = store_site_point(folder, tiny_site_point(folder / "model.keras", target=0.9))
    other = folder / "other.keras"
    keras.saving.load_model(folder / "model.keras").save(other)  # same weights, other bytes
    image = str(inputs["unshifted"][0])
    status, out, err = run_cli(["predict", image, "--model", str(other), "--site", SITE], capsys)
    assert status == 2 and out == "" and "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith(f"error: site point {point_path} was chosen for a model file")
    assert f"sha256 {file_sha256(folder / 'model.keras')[:12]}..." in line
    assert f"{other} has sha256 {file_sha256(other)[:12]}..." in line
    assert f"pneumonia site calibrate FOLDER --name {SITE} --model {other}" in line


def test_a_reference_for_another_model_file_is_refused(site_model, inputs, tmp_path, capsys):
    folder = tmp_path / "models"
    shutil.copytree(site_model["folder"], folder)
    keras.saving.load_model(folder / "model.keras").save(folder / "model.keras")  # other bytes
    image = str(inputs["unshifted"][0])
    arguments = ["predict", image, "--model", str(folder / "model.keras"), "--threshold", "0.5"]
    status, out, err = run_cli(arguments, capsys)
    assert status == 2 and out == ""
    assert "site_reference.npz was written for a model file with sha256" in err


def test_a_shifted_batch_of_fifty_warns_once_and_an_unshifted_one_does_not(
    site_model, inputs, tmp_path, capsys
):
    model = ["--model", str(site_model["model_path"])]
    status, _, err = run_cli(["predict", *map(str, inputs["unshifted"]), *model], capsys)
    assert status == 0 and "60 image(s) scored" in err
    assert not warnings_in(err), err
    status, out, err = run_cli(["predict", *map(str, inputs["shifted"]), *model], capsys)
    assert status == 0 and len(rows_of(out)) == 60
    (warning,) = warnings_in(err)
    assert f"the 60 images {SHIFT_WARNING} (MMD test p = " in warning
    assert "a classifier tells them apart with ROC AUC" in warning
    assert "The threshold chosen on val may not hold here" in warning
    assert "`pneumonia site calibrate FOLDER --name NAME`, then predict with `--site" in warning
    # Fewer than 50 images say little about a population: no check.
    status, _, err = run_cli(["predict", *map(str, inputs["shifted"][:49]), *model], capsys)
    assert status == 0 and not warnings_in(err)
    # A site's own operating point is the fix: no warning with one.
    folder = tmp_path / "models"
    shutil.copytree(site_model["folder"], folder)
    store_site_point(folder, tiny_site_point(folder / "model.keras", target=0.9))
    arguments = ["predict", *map(str, inputs["shifted"]), "--model", str(folder / "model.keras")]
    status, _, err = run_cli([*arguments, "--site", SITE], capsys)
    assert status == 0 and "60 image(s) scored" in err and not warnings_in(err)


def test_predict_help_says_what_a_score_a_val_threshold_and_a_flag_mean(capsys):
    status, out, _ = run_cli(["predict", "--help"], capsys)
    text = " ".join(out.split())  # argparse's line breaks aside
    assert status == 0
    assert "comparable only between images scored by one model version" in text
    assert (
        "A threshold chosen (calibrated) on val does not carry to a site whose images differ"
        in text
    )
    assert "flagged `out-of-distribution`: far from anything the model was checked on" in text
    assert "[--threshold THRESHOLD | --site NAME]" in text


def test_a_very_large_run_is_checked_on_a_seeded_draw_of_its_images(site_model):
    """The check's cost grows with the images checked: past BATCH_CHECK_AT_MOST a run keeps a
    uniform sample of that many as it scores (memory bounded), drawn with the reference's seed
    (the same draw every run)."""
    classifier = load_model_file(site_model["model_path"])
    pixels = tiny_val_pixels(BATCH_CHECK_AT_MOST + 100, first_seed=20000)
    collected = collector(classifier)
    for start in range(0, len(pixels), 512):  # batch by batch, as predict adds them
        collected.add(*classifier.features_and_scores(pixels[start : start + 512]))
    assert len(collected) == BATCH_CHECK_AT_MOST + 100
    kept, _ = collected.arrays()
    assert kept.dtype == np.float32 and len(kept) == BATCH_CHECK_AT_MOST
    check = batch_site_check(classifier, collected)
    assert check.n_images == BATCH_CHECK_AT_MOST
    assert batch_site_check(classifier, collected) == check
    assert not check.shifted, check.sentence()  # images of the model's own kind
    warning = shift_warning(check, len(collected))
    assert warning.startswith(f"warning: {BATCH_CHECK_AT_MOST} images (drawn from the 2100 scored)")


def test_the_kept_sample_is_uniform_over_every_image_seen():
    """Reservoir sampling: images of early and late batches are kept alike."""
    kept_late = []
    for seed in range(40):
        collected = ScoredFeatures(50, seed)
        for start in range(0, 500, 25):
            index = np.arange(start, start + 25, dtype=np.float32)[:, None]
            collected.add(index, index[:, 0])
        features, scores = collected.arrays()
        assert len(features) == 50 and len(collected) == 500
        assert np.array_equal(features[:, 0], scores.astype(np.float32))
        kept_late.append(float((scores >= 250).mean()))
    assert 0.4 < np.mean(kept_late) < 0.6
