import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from pneumonia.imaging.decode import (
    ImageDecodeError,
    draft_size,
    inspect_image,
    load_grayscale,
    to_grayscale,
)

from helpers import truncated_jpeg_bytes, write_image


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("gray.jpeg", "L"),
        ("rgb.jpg", "RGB"),
        ("cmyk.JPEG", "CMYK"),
        ("gray.png", "L"),
        ("rgb.png", "RGB"),
        ("rgba.png", "RGBA"),
        ("sixteen.png", "I;16"),
    ],
)
def test_valid_images_pass_and_load_as_8_bit_gray(tmp_path, name, mode):
    path = write_image(tmp_path / name, seed=3, mode=mode)
    check = inspect_image(path)
    assert check.ok, check.reason
    assert (check.width, check.height) == (96, 80)
    assert check.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    gray = load_grayscale(path)
    assert gray.mode == "L"
    assert gray.size == (96, 80)
    # Every mode carries the same picture: the gray levels agree with the source ramp.
    assert abs(float(np.asarray(gray).mean()) - 120) < 12


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (truncated_jpeg_bytes(), "truncated"),
        (b"<html>Not found</html>", "not an image"),
        (b"\x00\x05\x16\x07AppleDouble", "not an image"),
    ],
)
def test_bad_files_are_reported_with_their_reason(tmp_path, content, reason):
    path = tmp_path / "bad.jpeg"
    path.write_bytes(content)
    check = inspect_image(path)
    assert not check.ok
    assert reason in check.reason
    with pytest.raises(ImageDecodeError, match=r"bad\.jpeg"):
        load_grayscale(path)


def test_bytes_after_the_image_end_are_counted_and_the_image_kept(tmp_path):
    jpeg = write_image(tmp_path / "padded.jpeg", seed=4)
    png = write_image(tmp_path / "padded.png", seed=4)
    assert inspect_image(jpeg).trailing_bytes == 0 and inspect_image(png).trailing_bytes == 0
    jpeg.write_bytes(jpeg.read_bytes() + bytes(5_000))
    appended = b"PK\x03\x04 an appended archive"
    png.write_bytes(png.read_bytes() + appended)
    for path, extra in ((jpeg, 5_000), (png, len(appended))):
        check = inspect_image(path)
        assert check.ok, check.reason
        assert check.trailing_bytes == extra


def test_a_file_over_the_limit_is_not_read(tmp_path):
    path = write_image(tmp_path / "large.jpeg", seed=5)
    size = path.stat().st_size
    assert inspect_image(path, max_file_bytes=size).ok
    check = inspect_image(path, max_file_bytes=size - 1)
    assert not check.ok and "bytes is over preprocess.limits.max_file_bytes" in check.reason
    assert check.sha256 == ""  # refused before reading, not after


def test_a_named_pipe_is_refused_without_blocking(tmp_path):
    pipe = tmp_path / "pipe.jpeg"
    os.mkfifo(pipe)
    check = inspect_image(pipe)
    assert not check.ok and check.reason == "not a regular file"


def test_unsupported_format_is_bad(tmp_path):
    path = tmp_path / "scan.jpeg"
    Image.new("L", (8, 8)).save(path, format="BMP")
    check = inspect_image(path)
    assert not check.ok and "BMP" in check.reason


def test_sixteen_bit_is_scaled_not_clipped():
    ramp = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    gray = np.asarray(to_grayscale(Image.fromarray(ramp)))
    assert gray.tolist() == [[0, 100, 255]]


def test_draft_size_covers_the_output():
    assert draft_size(2000, 1000, 200, "letterbox") == (200, 100)
    assert draft_size(2000, 1000, 200, "crop") == (400, 200)
    assert draft_size(2000, 1000, 200, "stretch") == (200, 200)
    assert draft_size(100, 80, 200, "letterbox") == (100, 80)


def test_draft_decode_is_close_to_full_decode(tmp_path):
    path = write_image(tmp_path / "big.jpeg", seed=5, mode="RGB", size=(1024, 800))
    full = load_grayscale(path).resize((128, 100), Image.Resampling.BICUBIC)
    drafted = load_grayscale(path, target=128, resize="letterbox")
    assert drafted.size[0] >= 128 and drafted.size[0] < 1024  # decoded at reduced scale
    drafted = drafted.resize((128, 100), Image.Resampling.BICUBIC)
    difference = np.abs(np.asarray(full, dtype=int) - np.asarray(drafted, dtype=int))
    assert difference.mean() < 4
