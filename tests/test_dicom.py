"""DICOM input (imaging.dicom through imaging.decode and imaging.transforms): real Part 10 files
written with pydicom (and GDCM for the compressed syntaxes it encodes), read as viewers show
them, refused with the reason named before any pixel is decoded, and never quoting the patient
data every test file carries."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import time
import warnings

import keras
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

from pneumonia.imaging.decode import ImageDecodeError, inspect_image, load_grayscale
from pneumonia.imaging.dicom import DicomInfo, is_dicom, transfer_syntax_support
from pneumonia.imaging.transforms import preprocess_source
from pneumonia.inference.prediction import decode_sources, expand_inputs

from helpers import chest_like_pixels, preprocess_config
from helpers.dicom_files import (
    PHI_STRINGS,
    base_dataset,
    dicom_from_grey,
    dicom_from_rgb,
    gdcm_transcoded,
    huge_header_dicom,
    jpeg_baseline_dicom,
    rle_dicom,
    save,
    set_pixels,
    structured_report,
    write_dicom,
)
from helpers.paths import SHARED_DATASET
from helpers.project import TINY_CNN

SIZE = 64
# The equivalence is at params.yaml's size: a 224-px JPEG is decoded whole there, while at 64 px
# Pillow decodes it at half scale (draft mode), which a DICOM's stored pixels do not go through.
EQUIVALENCE_SIZE = 128


@pytest.fixture(scope="module")
def source_jpeg(tmp_path_factory):
    """A real test X-ray when ../shared is there, else a synthetic chest-like JPEG."""
    if SHARED_DATASET.is_dir():
        return sorted((SHARED_DATASET / "test" / "NORMAL").glob("*.jpeg"))[0]
    path = tmp_path_factory.mktemp("jpeg") / "xray.jpeg"
    Image.fromarray(chest_like_pixels(3, 200, 180)).save(path, quality=95)
    return path


@pytest.fixture(scope="module")
def grey(source_jpeg):
    return np.asarray(load_grayscale(source_jpeg))


def no_phi(*texts: object) -> None:
    for text in texts:
        for secret in PHI_STRINGS:
            assert secret not in str(text), f"{secret!r} leaked into {text!r}"


def refusal(path, **limits) -> str:
    with pytest.raises(ImageDecodeError) as error:
        load_grayscale(path, **limits)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    no_phi(message)
    return message.removeprefix(f"{path}: ")


def test_the_three_equivalence_kinds_give_the_jpegs_pixels_and_score(source_jpeg, grey, tmp_path):
    config = preprocess_config(EQUIVALENCE_SIZE)
    jpeg, none = preprocess_source(source_jpeg, config, "jpeg")
    assert none is None
    rgb = np.asarray(Image.open(source_jpeg).convert("RGB"))
    files = {
        "monochrome2": dicom_from_grey(tmp_path / "m2.dcm", grey, "monochrome2"),
        "monochrome1": dicom_from_grey(tmp_path / "m1.dcm", grey, "monochrome1"),
        "rgb": dicom_from_rgb(tmp_path / "rgb.dcm", rgb),
    }
    keras.utils.set_random_seed(0)
    from pneumonia.model.network import build_model

    model = build_model(EQUIVALENCE_SIZE, TINY_CNN)
    reference = model.predict(jpeg[None, ..., None], verbose=0)[0, 0]
    for kind, path in files.items():
        pixels, info = preprocess_source(path, config, str(path))
        assert info == DicomInfo("DX", "PA", ()), kind
        # MONOCHROME2 and RGB give the JPEG's pixels exactly; MONOCHROME1 16-bit through its
        # rescale and window within one grey level (here: exactly too).
        assert np.abs(pixels.astype(int) - jpeg).max() <= (1 if kind == "monochrome1" else 0)
        score = model.predict(pixels[None, ..., None], verbose=0)[0, 0]
        assert abs(score - reference) <= (1e-3 if kind == "monochrome1" else 0), kind


def test_a_file_and_its_bytes_give_the_same_pixels(grey, tmp_path):
    config = preprocess_config(SIZE)
    path = dicom_from_grey(tmp_path / "scan.dcm", grey, "monochrome1")
    from_file, info = preprocess_source(path, config, "scan")
    from_bytes, same = preprocess_source(path.read_bytes(), config, "scan")
    assert (from_file == from_bytes).all() and info == same
    check = inspect_image(path)
    assert check.ok and check.mode == "DICOM" and (check.width, check.height) == grey.shape[::-1]
    assert is_dicom(path.read_bytes()[:132]) and not is_dicom(b"\xff\xd8\xff" + bytes(129))


def test_window_function_and_full_range(tmp_path):
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (40, 1))  # 256 columns
    # No window: the 12 stored bits' whole range to 0..255.
    full = write_dicom(tmp_path / "full.dcm", ramp, bits_stored=12)
    assert np.asarray(load_grayscale(full))[0, [0, 128, 255]].tolist() == [0, 128, 254]
    # A window narrower than the data clips both ends.
    windowed = write_dicom(tmp_path / "window.dcm", ramp, bits_stored=12, window=(2048, 1024))
    row = np.asarray(load_grayscale(windowed))[0]
    assert row[:90].max() == 0 and row[170:].min() == 255 and 100 < row[128] < 155
    # An 8-bit MONOCHROME2 without rescale or window is taken as it is.
    eight = np.tile(np.arange(256, dtype=np.uint8), (40, 1))
    plain = write_dicom(tmp_path / "eight.dcm", eight)
    assert (np.asarray(load_grayscale(plain)) == eight).all()


@pytest.mark.parametrize(
    "syntax",
    [
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless, first-order prediction (CR/DX's usual)
        "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    ],
)
def test_lossless_compressed_syntaxes_decode_to_the_source_pixels(grey, tmp_path, syntax):
    source = write_dicom(tmp_path / "plain.dcm", grey)
    compressed = gdcm_transcoded(source, tmp_path / "compressed.dcm", syntax)
    assert compressed.read_bytes() != source.read_bytes()
    assert (np.asarray(load_grayscale(compressed)) == grey).all()


def test_rle_and_jpeg_baseline_decode(grey, tmp_path):
    assert (np.asarray(load_grayscale(rle_dicom(tmp_path / "rle.dcm", grey))) == grey).all()
    lossy = np.asarray(load_grayscale(jpeg_baseline_dicom(tmp_path / "jpeg.dcm", grey)))
    assert np.abs(lossy.astype(int) - grey).mean() < 1.5


def test_the_supported_syntaxes_are_listed():
    support = {entry["uid"]: entry for entry in transfer_syntax_support()}
    for uid in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50"):
        assert support[uid]["decodable"], uid
    assert support["1.2.840.10008.1.2.4.70"]["decoders"] == ["gdcm"]


def test_what_is_refused_is_named_before_decoding(grey, tmp_path):
    assert refusal(write_dicom(tmp_path / "ct.dcm", grey, modality="CT")) == (
        "modality CT is not a radiograph; only CR, DX, DR are read"
    )
    assert refusal(write_dicom(tmp_path / "multi.dcm", grey, frames=3)) == (
        "3 frames; only single-frame images are read"
    )
    assert refusal(structured_report(tmp_path / "report.dcm")).startswith("holds no image")
    huge = huge_header_dicom(tmp_path / "huge.dcm")
    assert huge.stat().st_size < 2000
    started = time.perf_counter()
    message = refusal(huge)
    assert time.perf_counter() - started < 1.0
    assert message.startswith("60000x60000 is 3,600,000,000 pixels, over preprocess.limits")
    assert refusal(write_dicom(tmp_path / "big.dcm", grey), max_pixels=1000).startswith(
        f"{grey.shape[1]}x{grey.shape[0]} is"
    )
    whole = write_dicom(tmp_path / "whole.dcm", grey).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(whole[: len(whole) // 2])
    assert refusal(tmp_path / "cut.dcm").startswith("truncated pixel data (")
    (tmp_path / "header.dcm").write_bytes(whole[:200])
    assert "cut short" in refusal(tmp_path / "header.dcm") or "readable" in refusal(
        tmp_path / "header.dcm"
    )
    palette = base_dataset()
    set_pixels(palette, grey, photometric="PALETTE COLOR")
    assert refusal(save(palette, tmp_path / "palette.dcm")).startswith(
        "photometric interpretation PALETTE COLOR is not read"
    )


@pytest.mark.parametrize(
    ("uid", "named"),
    [
        ("1.2.840.10008.1.2.4.201", "High-Throughput JPEG 2000 Image Compression (Lossless Only)"),
        ("1.2.826.0.1.3680043.99.1", "1.2.826.0.1.3680043.99.1"),  # a private syntax
    ],
)
def test_an_undecodable_syntax_is_named(grey, tmp_path, uid, named):
    dataset = base_dataset()
    set_pixels(dataset, grey)
    dataset.PixelData = encapsulate([b"\x00" * 64])
    dataset["PixelData"].VR = "OB"
    dataset["PixelData"].is_undefined_length = True
    message = refusal(save(dataset, tmp_path / "htj2k.dcm", uid))
    assert message.startswith(f"transfer syntax {named}") and "cannot be decoded here" in message


def test_a_lateral_view_or_no_modality_is_read_with_a_warning(grey, tmp_path):
    config = preprocess_config(SIZE)
    lateral = write_dicom(tmp_path / "lateral.dcm", grey, view="LL")
    assert preprocess_source(lateral, config, "l")[1] == DicomInfo(
        "DX", "LL", ("view LL, not PA/AP",)
    )
    unnamed = write_dicom(tmp_path / "unnamed.dcm", grey, modality=None, view=None)
    assert preprocess_source(unnamed, config, "u")[1] == DicomInfo(
        None, None, ("modality not recorded", "view not recorded")
    )
    # A header that holds other text where a code string belongs is not shown.
    odd = write_dicom(tmp_path / "odd.dcm", grey, view="Zebulon^Quixotic")
    info = preprocess_source(odd, config, "o")[1]
    assert info.view == "(not a code string)"
    no_phi(info)


def test_no_patient_data_reaches_a_message_a_warning_or_a_log(grey, tmp_path, caplog):
    files = [
        write_dicom(tmp_path / "ok.dcm", grey),
        write_dicom(tmp_path / "ct.dcm", grey, modality="CT"),
        write_dicom(tmp_path / "lateral.dcm", grey, view="LATERAL"),
        # A PatientName pydicom warns about (over 64 characters in a component group).
        write_dicom(tmp_path / "bad-name.dcm", grey, patient_name="Zebulon^Quixotic" * 8),
        huge_header_dicom(tmp_path / "huge.dcm"),
    ]
    whole = files[0].read_bytes()
    (tmp_path / "cut.dcm").write_bytes(whole[: len(whole) // 3])
    files.append(tmp_path / "cut.dcm")
    # A ViewPosition that is not a code string: pydicom's warning on reading it quotes it.
    files.append(write_dicom(tmp_path / "odd-view.dcm", grey, view="Zebulon^Quixotic"))
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # what writing the files logged: only reading them is under test
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoded = decode_sources(preprocess_config(SIZE), [(path.name, path) for path in files])
        checks = [inspect_image(path) for path in files]
    assert decoded.positions == [0, 2, 3, 6] and set(decoded.errors) == {1, 4, 5}
    no_phi(*decoded.errors.values(), *decoded.dicom.values(), *checks)
    no_phi(*(str(warning.message) for warning in caught), *caplog.messages)


def test_folders_take_dicom_by_suffix_or_content_but_not_dicomdir(grey, tmp_path):
    folder = tmp_path / "export"
    write_dicom(folder / "a.dcm", grey)
    write_dicom(folder / "series" / "IM000001", grey)  # a PACS export's suffix-less name
    write_dicom(folder / "DICOMDIR", grey)
    (folder / "README").write_text("not an image")
    found = [path.relative_to(folder).as_posix() for path, _ in expand_inputs([folder])]
    assert found == ["a.dcm", "series/IM000001"]


def test_a_dicom_stream_is_read_where_it_stands(grey, tmp_path):
    data = write_dicom(tmp_path / "s.dcm", grey).read_bytes()
    stream = io.BytesIO(data)
    assert (np.asarray(load_grayscale(stream)) == grey).all()


PYDICOM_READ = """
import logging, sys, warnings
logging.basicConfig(stream=sys.stdout, level=logging.DEBUG)
if sys.argv[2] == "with-reader":
    import pneumonia.imaging.dicom  # the reader: it silences pydicom for the process
import pydicom
with warnings.catch_warnings(record=True) as caught:
    warnings.filterwarnings("always", append=True)  # after the reader's filter, not before
    str(pydicom.dcmread(sys.argv[1]).PatientName)
print("warnings:", len(caught))
"""


@pytest.mark.parametrize(("mode", "silent"), [("with-reader", True), ("without", False)])
def test_pydicom_is_silent_in_a_process_that_reads_dicom(grey, tmp_path, mode, silent):
    """The safeguard behind the test above: a warning and a log line pydicom gives on a header
    value (an over-long PatientName, which it does warn about when read, quoting nothing here
    but quoting values elsewhere) go nowhere in a process that has imported imaging.dicom,
    which silences pydicom once for the process (threads, the served model's requests, cannot
    undo it for each other). The control, without the reader, sees both: the test can fail."""
    path = write_dicom(tmp_path / "long.dcm", grey, patient_name="Zebulon^Quixotic" * 8)
    result = subprocess.run(
        [sys.executable, "-c", PYDICOM_READ, str(path), mode], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    logged = "pydicom" in result.stdout.replace("warnings:", "")
    assert (result.stdout.strip().endswith("warnings: 0") and not logged) == silent, result.stdout


def test_header_values_that_are_not_numbers_never_reach_the_message(grey, tmp_path):
    """A rescale or window that holds text (patient data, here) or an empty LUT sequence is
    refused naming the kind of failure, never the value."""
    cases = {
        "window": {"WindowCenter": "Zebulon^Quixotic", "WindowWidth": "PID-8c1f7e2a"},
        "rescale": {"RescaleSlope": "PID-8c1f7e2a"},
    }
    for name, values in cases.items():
        dataset = base_dataset()
        set_pixels(dataset, grey)
        for keyword, value in values.items():
            dataset.add_new(keyword, "LO", value)  # text where a decimal string belongs
        message = refusal(save(dataset, tmp_path / f"{name}.dcm"))
        assert "cannot be" in message, message
        assert not inspect_image(tmp_path / f"{name}.dcm").ok
    for sequence in ("VOILUTSequence", "ModalityLUTSequence"):
        dataset = base_dataset()
        set_pixels(dataset, grey)
        setattr(dataset, sequence, [])
        refusal(save(dataset, tmp_path / f"{sequence}.dcm"))


def test_signed_data_and_lut_sequences(tmp_path):
    ramp = np.tile(np.arange(-2048, 2048, 16, dtype=np.int16), (8, 1))  # 256 columns
    dataset = base_dataset()
    set_pixels(dataset, ramp, bits_stored=12, signed=True)
    row = np.asarray(load_grayscale(save(dataset, tmp_path / "signed.dcm")))[0]
    assert row[0] == 0 and row[-1] == 254 and (np.diff(row.astype(int)) >= 0).all()
    # A VOI LUT Sequence: 256 entries of 8 bits, inverted, first mapped value 0.
    stored = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    dataset = base_dataset()
    set_pixels(dataset, stored)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = list(range(255, -1, -1))
    item["LUTData"].VR = "US"
    dataset.VOILUTSequence = [item]
    assert (np.asarray(load_grayscale(save(dataset, tmp_path / "voi.dcm"))) == 255 - stored).all()


def test_a_file_named_by_its_uid_is_found_by_content(grey, tmp_path):
    folder = tmp_path / "received"
    write_dicom(folder / "1.2.840.113619.2.55.3.604688119.969", grey)
    (folder / "notes.txt").write_text("not an image")
    found = [path.name for path, _ in expand_inputs([folder])]
    assert found == ["1.2.840.113619.2.55.3.604688119.969"]
