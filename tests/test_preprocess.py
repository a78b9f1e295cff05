import filecmp

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pneumonia.contracts.arrays import ProcessedDataError, load_split
from pneumonia.data.preprocess import PreprocessError, run_preprocess, sample_grid
from pneumonia.imaging.decode import ImageDecodeError
from pneumonia.imaging.transforms import (
    PreprocessSettingsError,
    config_from_settings,
    model_input_settings,
    preprocess_bytes,
    preprocess_file,
    preprocess_image,
)

from helpers import preprocess_config, truncated_jpeg_bytes, write_image

CONFIG = preprocess_config(32)


def with_image(**changes):
    return CONFIG.model_copy(update={"image": CONFIG.image.model_copy(update=changes)})


def white(width, height):
    return Image.new("L", (width, height), 255)


def test_letterbox_keeps_aspect_and_pads_with_black():
    pixels = preprocess_image(white(64, 32), CONFIG)
    assert pixels.shape == (32, 32) and pixels.dtype == np.uint8
    assert (pixels[:8] == 0).all() and (pixels[-8:] == 0).all()
    assert (pixels[8:24] == 255).all()


def test_stretch_fills_the_frame():
    pixels = preprocess_image(white(64, 32), with_image(resize="stretch"))
    assert (pixels == 255).all()


def test_crop_takes_the_centre_square():
    image = Image.fromarray(
        np.hstack([np.zeros((32, 16)), np.full((32, 32), 255), np.zeros((32, 16))]).astype(np.uint8)
    )
    pixels = preprocess_image(image, with_image(resize="crop"))
    assert (pixels == 255).all()


def test_clahe_raises_local_contrast_inside_the_content_only():
    rng = np.random.default_rng(0)
    flat = Image.fromarray(rng.integers(100, 120, size=(32, 64), dtype=np.uint8))
    plain = preprocess_image(flat, CONFIG)
    equalised = preprocess_image(flat, with_image(clahe=True))
    content = slice(8, 24)
    assert equalised[content].std() > plain[content].std() * 1.5
    assert (equalised[:8] == 0).all()


@pytest.fixture
def split_frames(tmp_path):
    images_dir = tmp_path / "images"
    rows = []
    for position in range(12):
        label = "PNEUMONIA" if position % 3 else "NORMAL"
        name = f"{label}/{position}.jpeg" if position % 4 else f"{label}/{position}.png"
        mode = ("L", "RGB", "CMYK")[position % 3] if name.endswith("jpeg") else "L"
        write_image(
            images_dir / "train" / name,
            seed=position,
            mode=mode,
            size=(60 + position * 7, 50 + position * 3),
        )
        rows.append(
            {
                "path": f"train/{name}",
                "label": label,
                "patient_id": f"p{position}",
                "sha256": str(position),
            }
        )
    frame = pd.DataFrame(rows)
    return {"train": frame.iloc[:8], "val": frame.iloc[8:]}, images_dir


def test_outputs_are_byte_identical_across_runs_and_worker_counts(split_frames, tmp_path):
    frames, images_dir = split_frames
    first, second = tmp_path / "first", tmp_path / "second"
    run_preprocess(frames, images_dir, first, CONFIG)
    run_preprocess(frames, images_dir, second, CONFIG.model_copy(update={"workers": 2}))
    for relative in (
        "train/images.npy",
        "train/labels.npy",
        "train/index.csv",
        "val/images.npy",
        "meta.json",
    ):
        assert filecmp.cmp(first / relative, second / relative, shallow=False), relative


def test_written_split_reads_back(split_frames, tmp_path):
    frames, images_dir = split_frames
    summary = run_preprocess(frames, images_dir, tmp_path / "out", CONFIG)
    images, labels, index = load_split(tmp_path / "out" / "train")
    assert images.shape == (8, 32, 32, 1) and images.dtype == np.uint8
    assert labels.tolist() == [int(label == "PNEUMONIA") for label in frames["train"]["label"]]
    assert index["path"].tolist() == frames["train"]["path"].tolist()
    assert summary["images_train"] == 8 and summary["images_per_second"] > 0
    grid = sample_grid(images, labels, CONFIG.sample_grid)
    assert grid.size == (64, 64)


def test_empty_split_and_missing_output_are_clear_errors(split_frames, tmp_path):
    frames, images_dir = split_frames
    with pytest.raises(PreprocessError, match="split 'val' has no images"):
        run_preprocess({"val": frames["val"].iloc[:0]}, images_dir, tmp_path / "out", CONFIG)
    with pytest.raises(ProcessedDataError, match=r"missing images\.npy.*run the preprocess stage"):
        load_split(tmp_path / "nowhere")


def test_bytes_preprocess_exactly_like_the_file(split_frames, tmp_path):
    """The served model gets the file's bytes; it must see the pixels training saw (same JPEG
    draft scale, same resize), for every mode and format of the fixtures."""
    frames, images_dir = split_frames
    for relative in frames["train"]["path"]:
        path = images_dir / relative
        np.testing.assert_array_equal(
            preprocess_bytes(path.read_bytes(), CONFIG), preprocess_file(path, CONFIG)
        )
    with pytest.raises(ImageDecodeError, match=r"^row 3: not an image"):
        preprocess_bytes(b"GIF? no", CONFIG, name="row 3")
    with pytest.raises(ImageDecodeError, match=r"^upload: truncated image"):
        preprocess_bytes(truncated_jpeg_bytes(), CONFIG, name="upload")


def test_model_settings_round_trip_and_are_validated():
    settings = model_input_settings(CONFIG)
    assert config_from_settings(settings, "model.json") == CONFIG.model_copy(
        update={"workers": 1, "sample_grid": 0}
    )
    with pytest.raises(
        PreprocessSettingsError, match=r"model\.json: preprocess settings lack clahe"
    ):
        without_clahe = {key: value for key, value in settings.items() if key != "clahe"}
        config_from_settings(without_clahe, "model.json")
    with pytest.raises(
        PreprocessSettingsError, match=r"model\.json: bad preprocess settings: .*resize"
    ):
        config_from_settings({**settings, "resize": "squash"}, "model.json")
    with pytest.raises(PreprocessSettingsError, match="unknown key"):
        config_from_settings({**settings, "gamma": 2.2}, "model.json")
