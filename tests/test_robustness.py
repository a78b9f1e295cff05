"""The acquisition-shift check: each shift does what its name says, the report takes its
threshold from the clean images only, and the check runs end to end on real files and a model."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pneumonia.config import ThresholdRule
from pneumonia.imaging.transforms import config_from_settings
from pneumonia.model.robustness import (
    SHIFTS,
    ShiftCheckError,
    check_model,
    shift_report,
    shifted_images,
)

from helpers import TINY_PREPROCESS, fixture_params

RAMP = np.tile(np.linspace(20, 235, 64).round().astype(np.uint8), (48, 1))  # (48, 64)
PLAIN = config_from_settings(TINY_PREPROCESS, "test settings")  # 32 px letterbox, no CLAHE


def edges(pixels: np.ndarray) -> float:
    """Mean absolute difference between horizontal neighbours: high for sharp detail."""
    return float(np.abs(np.diff(pixels.astype(float), axis=1)).mean())


def apply(name: str, pixels: np.ndarray, seed: int = 0) -> np.ndarray:
    return SHIFTS[name](pixels, np.random.default_rng(seed))


def test_every_shift_keeps_shape_and_dtype_and_is_reproducible():
    checker = np.indices((48, 64)).sum(axis=0) % 2 * 200 + 20
    image = np.where(checker > 100, RAMP, checker).astype(np.uint8)
    for name in SHIFTS:
        once, again = apply(name, image, 5), apply(name, image, 5)
        assert once.shape == image.shape and once.dtype == np.uint8, name
        np.testing.assert_array_equal(once, again)
        assert not np.array_equal(once, image), f"{name} left the image unchanged"


def test_exposure_and_contrast_shifts_move_the_grey_levels_the_named_way():
    mean, spread = RAMP.mean(), RAMP.std()
    assert apply("gamma_0.67", RAMP).mean() > mean + 15  # brighter mid-tones
    assert apply("gamma_1.5", RAMP).mean() < mean - 15
    # Endpoints stay: a gamma curve maps 0 to 0 and 255 to 255.
    assert apply("gamma_0.67", np.array([[0, 255]], dtype=np.uint8)).tolist() == [[0, 255]]
    assert apply("contrast_0.7", RAMP).std() == pytest.approx(0.7 * spread, rel=0.02)
    assert apply("contrast_1.3", RAMP).std() == pytest.approx(1.3 * spread, rel=0.02)
    assert apply("contrast_0.7", RAMP).mean() == pytest.approx(mean, abs=1)


def test_sharpness_noise_resolution_and_field_of_view_shifts():
    rng = np.random.default_rng(1)
    detail = rng.integers(60, 200, size=(48, 64)).astype(np.uint8)
    assert edges(apply("blur_1.5", detail)) < 0.4 * edges(detail)
    assert edges(apply("downsample_0.4", detail)) < 0.6 * edges(detail)
    flat = np.full((48, 64), 128, dtype=np.uint8)
    noisy = apply("noise_8", flat).astype(float)
    assert noisy.std() == pytest.approx(8, rel=0.15) and noisy.mean() == pytest.approx(128, abs=1)
    assert not np.array_equal(apply("noise_8", flat, 1), apply("noise_8", flat, 2))
    zoomed = apply("zoom_out_0.85", flat)
    # 0.85 of 48 x 64 is 41 x 54, centred: black rows and columns around it.
    assert (zoomed > 0).sum() == 41 * 54
    assert zoomed[0].max() == 0 and zoomed[:, 0].max() == 0 and zoomed[24, 32] == 128


def brightness_scores(images: np.ndarray) -> np.ndarray:
    """A real, transparent scorer: the mean grey level of the image, as a probability."""
    return images.reshape(len(images), -1).mean(axis=1) / 255.0


def test_report_keeps_the_clean_threshold_and_catches_overcalling():
    # Bright images are "pneumonia"; brightening everything must cost specificity, not AUC.
    rng = np.random.default_rng(0)
    levels = np.concatenate([rng.uniform(90, 120, 20), rng.uniform(125, 160, 20)])
    labels = np.array([0] * 20 + [1] * 20, dtype=np.uint8)
    sources = [np.full((40, 40), level, dtype=np.uint8) for level in levels]
    conditions = shifted_images(sources, PLAIN, seed=0)
    assert list(conditions) == ["none", *SHIFTS]
    assert conditions["none"].shape == (40, 32, 32, 1)
    report = shift_report(brightness_scores, conditions, labels, ThresholdRule(kind="youden"))
    table = report.table.set_index("condition")
    # Youden on separated classes: the highest threshold that keeps every positive.
    assert report.threshold == pytest.approx(brightness_scores(conditions["none"][20:]).min())
    assert table.loc["none", "roc_auc"] == 1.0
    assert table.loc["none", "balanced_accuracy"] == 1.0
    assert table.loc["gamma_0.67", "roc_auc"] == 1.0  # monotone: ranking unchanged
    assert table.loc["gamma_0.67", "specificity"] < 0.5  # but normals now look bright
    assert table.loc["gamma_0.67", "sensitivity"] == 1.0
    assert table.loc["gamma_1.5", "sensitivity"] < 0.5
    assert table.loc["gamma_1.5", "specificity"] == 1.0
    shifted = table.drop(index="none")
    assert report.summary["val_shift_auc_min"] == shifted["roc_auc"].min()
    assert report.summary["val_shift_specificity_mean"] == pytest.approx(
        shifted["specificity"].mean()
    )
    assert report.summary["val_shift_balanced_accuracy_mean"] == pytest.approx(
        ((shifted["sensitivity"] + shifted["specificity"]) / 2).mean()
    )
    with pytest.raises(ShiftCheckError, match="'none'"):
        shift_report(brightness_scores, {"gamma_1.5": conditions["gamma_1.5"]}, labels, None)


def write_val_split(folder, tiny_model) -> tuple:
    images_dir = folder / "images"
    rows = []
    for path in tiny_model["images"]:
        relative = f"train/{path.name}"
        (images_dir / "train").mkdir(parents=True, exist_ok=True)
        (images_dir / relative).write_bytes(path.read_bytes())
        label = "PNEUMONIA" if int(path.stem.removeprefix("xray")) % 2 else "NORMAL"
        rows.append({"path": relative, "label": label})
    split_csv = folder / "val.csv"
    pd.DataFrame(rows).to_csv(split_csv, index=False)
    return split_csv, images_dir


def test_check_model_runs_on_files_and_names_a_missing_split(tmp_path, tiny_model):
    import keras

    from pneumonia.model.scoring import score

    split_csv, images_dir = write_val_split(tmp_path, tiny_model)
    model = keras.saving.load_model(tiny_model["model_path"], compile=False)
    report = check_model(
        lambda images: score(model, images),
        split_csv,
        images_dir,
        tiny_model["settings"],
        seed=0,
    )
    assert list(report.table["condition"]) == ["none", *SHIFTS]
    # The bright-square model separates its own sample images cleanly.
    assert report.table.iloc[0]["roc_auc"] == 1.0
    assert set(report.summary) == {
        "val_shift_auc_mean",
        "val_shift_auc_min",
        "val_shift_sensitivity_mean",
        "val_shift_specificity_mean",
        "val_shift_balanced_accuracy_mean",
    }
    with pytest.raises(ShiftCheckError, match=r"missing\.csv: not found; run the split stage"):
        check_model(
            lambda images: images,
            tmp_path / "missing.csv",
            images_dir,
            PLAIN,
            0,
        )


@pytest.mark.slow  # three CLI subprocesses, each importing TensorFlow
def test_shift_check_command_reads_the_models_card(tmp_path, tiny_model):
    """`pneumonia shift-check` on a saved model, with params pointing at a val split."""
    import shutil

    import yaml

    split_csv, images_dir = write_val_split(tmp_path, tiny_model)
    (tmp_path / "data" / "split").mkdir(parents=True)
    shutil.move(split_csv, tmp_path / "data" / "split" / "val.csv")
    params = fixture_params()
    params["paths"]["images"] = images_dir.relative_to(tmp_path).as_posix()  # inside, relative
    params["paths"]["split"] = "data/split"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "pneumonia.cli", "shift-check", "--params", "params.yaml"]
    result = subprocess.run(
        [*command, "--model", str(tiny_model["model_path"])],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert [row["condition"] for row in shown["conditions"]] == ["none", *SHIFTS]
    assert 0 < shown["threshold"] < 1 and shown["members"] == 1
    too_many = subprocess.run(
        [*command, "--model", str(tiny_model["model_path"]), "--members", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert too_many.returncode == 2 and "--members 2, but the model has 1" in too_many.stderr
    missing = subprocess.run(
        [*command, "--model", str(tmp_path / "nowhere" / "model.keras")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2
    assert "nowhere/model.keras: not found; run the pipeline first" in missing.stderr
