"""Input limits: only JPEG and PNG are opened, pixel and byte limits are checked before decoding,
16-bit PNGs convert without whole-image 32-bit arrays, and inference refuses what cannot be a
chest X-ray. Every input is a real file or bytes made here."""

import io
import json
import re
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from pneumonia.config import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS, ConfigError, load_config
from pneumonia.imaging.decode import (
    ImageDecodeError,
    NotAnXrayError,
    check_chest_xray,
    inspect_image,
    load_grayscale,
    to_grayscale,
)
from pneumonia.imaging.transforms import (
    PreprocessSettingsError,
    config_from_settings,
    preprocess_bytes,
    preprocess_file,
)
from pneumonia.inference.loading import load_model_file
from pneumonia.inference.prediction import predict_paths

from helpers import (
    REFUSED_FORMATS,
    TINY_PREPROCESS,
    blank_sixteen_bit_png,
    chest_like_pixels,
    image_bytes,
    run_cli,
    write_image,
    write_params,
)

HUGE_SIDE = 13000  # 169 megapixels: the review's file


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> bytes:
    return blank_sixteen_bit_png(HUGE_SIDE, HUGE_SIDE)


def old_sixteen_bit_conversion(image: Image.Image) -> np.ndarray:
    """to_grayscale's 16-bit arithmetic before the lookup table, for comparison."""
    array = np.asarray(image, dtype=np.uint32)
    return ((array * 255 + 65535 // 2) // 65535).astype(np.uint8)


# --- Pixel and byte limits -------------------------------------------------------------------


def test_a_huge_sixteen_bit_png_is_refused_from_its_header_without_decoding(huge_png, tmp_path):
    assert len(huge_png) < 1_000_000
    path = tmp_path / "huge.png"
    path.write_bytes(huge_png)
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(ImageDecodeError) as refused:
        load_grayscale(path, target=128, resize="letterbox")
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    message = str(refused.value)
    assert message.startswith(f"{path}: 13000x13000 is 169,000,000 pixels")
    assert "preprocess.limits.max_pixels (40,000,000)" in message
    # Decoding would take 338 MB and seconds; the header alone takes neither.
    assert seconds < 0.5 and peak < 5_000_000
    check = inspect_image(path)
    assert not check.ok and "over preprocess.limits.max_pixels" in check.reason
    with pytest.raises(ImageDecodeError, match="row 0: 13000x13000"):
        preprocess_bytes(huge_png, config_from_settings(TINY_PREPROCESS, "test"), name="row 0")


def test_the_pixel_limit_is_the_param(tmp_path):
    path = write_image(tmp_path / "scan.png", seed=1, size=(96, 80))  # 7,680 pixels
    assert inspect_image(path, max_pixels=7680).ok
    check = inspect_image(path, max_pixels=7679)
    assert not check.ok and "96x80 is 7,680 pixels, over preprocess.limits.max_pixels (7,679)" in (
        check.reason
    )
    limited = config_from_settings(TINY_PREPROCESS, "test", {"max_pixels": 7679})
    with pytest.raises(ImageDecodeError, match=r"over preprocess\.limits\.max_pixels"):
        preprocess_file(path, limited)


def test_a_file_over_the_byte_limit_is_refused_before_it_is_read(tmp_path):
    path = write_image(tmp_path / "scan.jpeg", seed=1)
    size = path.stat().st_size
    assert inspect_image(path, max_file_bytes=size).ok
    check = inspect_image(path, max_file_bytes=size - 1)
    assert not check.ok and check.sha256 == ""  # never read, so never hashed
    assert f"{size:,} bytes is over preprocess.limits.max_file_bytes ({size - 1:,})" in check.reason
    limited = config_from_settings(TINY_PREPROCESS, "test", {"max_file_bytes": size - 1})
    with pytest.raises(
        ImageDecodeError, match=r"scan\.jpeg: .* over preprocess\.limits\.max_file_bytes"
    ):
        preprocess_file(path, limited)
    with pytest.raises(
        ImageDecodeError, match=r"^row 2: .* over preprocess\.limits\.max_file_bytes"
    ):
        preprocess_bytes(path.read_bytes(), limited, name="row 2")


# --- Formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", REFUSED_FORMATS)
def test_formats_other_than_jpeg_and_png_are_refused(tmp_path, image_format):
    data = image_bytes(chest_like_pixels(0, 64, 64), image_format)
    path = tmp_path / "scan.jpeg"  # the name does not matter: the bytes do
    path.write_bytes(data)
    check = inspect_image(path)
    assert not check.ok
    assert (
        f"unsupported format {image_format}; only JPEG, PNG and DICOM are accepted" in check.reason
    )
    with pytest.raises(ImageDecodeError, match=f"scan.jpeg: unsupported format {image_format}"):
        load_grayscale(path)
    with pytest.raises(ImageDecodeError, match=f"^row 1: unsupported format {image_format}"):
        preprocess_bytes(data, config_from_settings(TINY_PREPROCESS, "test"), name="row 1")


def test_eps_is_never_handed_to_ghostscript(tmp_path, monkeypatch):
    """Pillow's EPS plugin runs `gs` to decode; with only JPEG and PNG allowed it is never
    asked. An empty PATH makes any attempt to start Ghostscript fail differently."""
    monkeypatch.setenv("PATH", "")
    data = image_bytes(chest_like_pixels(0, 64, 64), "EPS")
    with pytest.raises(ImageDecodeError, match="unsupported format EPS"):
        load_grayscale(io.BytesIO(data), name="upload")


def test_mpo_from_cameras_is_accepted_as_jpeg(tmp_path):
    path = tmp_path / "camera.jpg"
    path.write_bytes(image_bytes(chest_like_pixels(2, 96, 80), "MPO"))
    with Image.open(path) as image:
        assert image.format == "MPO"
    check = inspect_image(path)
    assert check.ok and (check.width, check.height) == (96, 80)
    assert load_grayscale(path, target=32, resize="letterbox").mode == "L"


# --- 16-bit conversion -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_sixteen_bit_conversion_gives_the_same_pixels_as_before(mode):
    pixels = np.random.default_rng(0).integers(0, 65536, (300, 400)).astype(np.uint16)
    byte_order = ">u2" if mode == "I;16B" else "<u2"
    image = Image.frombytes(mode, (400, 300), pixels.astype(byte_order).tobytes())
    np.testing.assert_array_equal(np.asarray(image), pixels)
    gray = to_grayscale(image)
    assert gray.mode == "L"
    np.testing.assert_array_equal(np.asarray(gray), old_sixteen_bit_conversion(image))


def test_a_sixteen_bit_png_file_decodes_to_the_same_pixels_as_before(tmp_path):
    pixels = (chest_like_pixels(4, 640, 480).astype(np.uint16) * 257) + 100
    path = tmp_path / "deep.png"
    Image.fromarray(pixels).save(path)
    gray = np.asarray(load_grayscale(path, target=128, resize="letterbox"))
    with Image.open(path) as image:
        assert image.mode == "I;16"
        np.testing.assert_array_equal(gray, old_sixteen_bit_conversion(image))


def test_thirty_two_bit_integer_images_keep_their_scaling():
    small = np.array([[0, 100, 255]], dtype=np.int32)
    assert np.asarray(to_grayscale(Image.fromarray(small, mode="I"))).tolist() == [[0, 100, 255]]
    wide = np.array([[0, 257 * 100, 65535, 70000, -5]], dtype=np.int32)
    assert np.asarray(to_grayscale(Image.fromarray(wide, mode="I"))).tolist() == [
        [0, 100, 255, 255, 0]
    ]


# --- Not a chest X-ray -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "value", "reason"),
    [
        (1, 1, 128, "1x1 is under 32 pixels on its short side"),
        (1, 2000, 128, "1x2000 is under 32 pixels on its short side"),
        (2000, 31, 128, "2000x31 is under 32 pixels on its short side"),
        (640, 480, 0, "nearly constant (standard deviation 0.00 grey levels, under 1)"),
        (640, 480, 200, "nearly constant"),
    ],
)
def test_what_cannot_be_a_chest_xray_is_refused_at_inference(width, height, value, reason):
    data = image_bytes(np.full((height, width), value, dtype=np.uint8), "PNG")
    config = config_from_settings(TINY_PREPROCESS, "test")
    with pytest.raises(NotAnXrayError, match=f"^row 0: not a chest X-ray: {re.escape(reason)}"):
        preprocess_bytes(data, config, name="row 0", check_xray=True)
    # The data stages keep their images: the check is inference's only.
    assert preprocess_bytes(data, config, name="row 0").shape == (32, 32)


def test_a_real_looking_image_and_a_small_noisy_one_pass_the_check():
    for width, height in ((96, 80), (32, 32)):
        gray = Image.fromarray(chest_like_pixels(7, width, height))
        check_chest_xray(gray, width, height, "scan")
    nearly_flat = np.full((64, 64), 100, dtype=np.uint8)
    nearly_flat[::2] = 102  # standard deviation exactly 1 grey level: kept
    check_chest_xray(Image.fromarray(nearly_flat), 64, 64, "scan")


# --- Params ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"preprocess.limits.max_pixels": 1000}, "'preprocess.limits.max_pixels' must be >= 1024"),
        (
            {"preprocess.limits.max_pixels": "40M"},
            "'preprocess.limits.max_pixels' must be an integer",
        ),
        (
            {"preprocess.limits.max_pixels": 4e7},
            "'preprocess.limits.max_pixels' must be an integer",
        ),
        ({"preprocess.limits.max_pixels": None}, "'preprocess.limits.max_pixels' is missing"),
        (
            {"preprocess.limits.max_file_bytes": 0},
            "'preprocess.limits.max_file_bytes' must be >= 1",
        ),
        (
            {"preprocess.limits.max_file_bytes": True},
            "'preprocess.limits.max_file_bytes' must be an integer",
        ),
        (
            {"preprocess.limits.max_file_bytes": None},
            "'preprocess.limits.max_file_bytes' is missing",
        ),
    ],
)
def test_bad_limit_params_fail_naming_the_key(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_params(tmp_path, changes))


def test_limit_params_load_and_settings_default_without_them(tmp_path):
    changes = {"preprocess.limits.max_pixels": 1024, "preprocess.limits.max_file_bytes": 10}
    config = load_config(write_params(tmp_path, changes)).preprocess
    assert (config.limits.max_pixels, config.limits.max_file_bytes) == (1024, 10)
    # A model card, or a served model logged before the limits: the defaults.
    recorded = config_from_settings(TINY_PREPROCESS, "model.json")
    assert (recorded.limits.max_pixels, recorded.limits.max_file_bytes) == (
        DEFAULT_MAX_PIXELS,
        DEFAULT_MAX_FILE_BYTES,
    )
    with pytest.raises(PreprocessSettingsError, match=r"settings\.json: bad preprocess settings"):
        config_from_settings(TINY_PREPROCESS, "settings.json", {"max_pixels": 0})
    with pytest.raises(PreprocessSettingsError, match=r"settings\.json: limits must be a mapping"):
        config_from_settings(TINY_PREPROCESS, "settings.json", [1, 2])


# --- predict ---------------------------------------------------------------------------------


def write_refused_inputs(folder):
    """One file per refusal predict must answer with an error row, named by the expected
    message."""
    folder.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for image_format in ("BMP", "GIF", "TIFF", "EPS"):
        path = folder / f"{image_format.lower()}.png"
        path.write_bytes(image_bytes(chest_like_pixels(1, 64, 64), image_format))
        inputs[path] = f"unsupported format {image_format}"
    one_pixel = folder / "one_pixel.png"
    one_pixel.write_bytes(image_bytes(np.full((1, 1), 128, np.uint8), "PNG"))
    inputs[one_pixel] = "not a chest X-ray: 1x1"
    blank = folder / "blank.jpeg"
    blank.write_bytes(image_bytes(np.zeros((300, 400), np.uint8), "JPEG"))
    inputs[blank] = "not a chest X-ray: nearly constant"
    return inputs


def test_predict_gives_refused_inputs_error_rows_and_scores_the_rest(tiny_model, tmp_path):
    refused = write_refused_inputs(tmp_path / "inputs")
    good = tiny_model["images"][:2]
    classifier = load_model_file(tiny_model["model_path"])
    predictions = list(predict_paths(classifier, [good[0], *refused, good[1]], batch_size=3))
    assert predictions[0].ok and predictions[-1].ok
    for prediction, (path, reason) in zip(predictions[1:-1], refused.items(), strict=True):
        assert prediction.error.startswith(f"{path}: {reason}"), prediction.error
        assert prediction.score is None and prediction.label is None


def test_cli_predict_takes_the_limits_from_params_and_exits_one(tiny_model, tmp_path, capsys):
    refused = write_refused_inputs(tmp_path / "inputs")
    big = write_image(tmp_path / "inputs" / "big.png", seed=3, size=(600, 500))
    assert big.stat().st_size > 100_000 > max(path.stat().st_size for path in refused)
    params = write_params(tmp_path / "project", {"preprocess.limits.max_file_bytes": 100_000})
    model = ["--model", str(tiny_model["model_path"])]
    arguments = ["predict", *map(str, [*refused, big]), *model, "--params", str(params)]
    status, out, err = run_cli(arguments, capsys)
    assert status == 1
    rows = [json.loads(line) for line in out.splitlines()]
    assert all(row["score"] is None and row["label"] is None for row in rows)
    expected = [*refused.values(), "over preprocess.limits.max_file_bytes"]
    for row, reason in zip(rows, expected, strict=True):
        assert reason in row["error"], row
    assert f"0 image(s) scored, {len(refused) + 1} failed" in err
    # Without the project's params.yaml, the defaults: the same file is scored.
    status, out, _ = run_cli(["predict", str(big), *model, "--params", "none.yaml"], capsys)
    assert status == 0 and json.loads(out)["error"] is None
