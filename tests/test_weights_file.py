"""A weights file checked before Keras reads it (model.weights_file, through
backbones.resolve_weights): real HDF5 files, saved by Keras from MobileNetV3Small at 32 px with
random weights, then altered with h5py as a hostile or unlucky file would be. Every problem is
one WeightsError naming the file, raised at stage start, before any data is read."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import warnings

import h5py
import keras
import numpy as np
import pytest

from pneumonia.config import load_config
from pneumonia.model.backbones import BACKBONES, WeightsError, _application, resolve_weights
from pneumonia.model.weights_file import (
    MAX_DATASET_BYTES,
    WeightsLimits,
    check_weights_file,
    expected_variables,
)

from helpers import PROJECT_ROOT, write_params

SIDE = 32
GIB = 1 << 30
ARCHITECTURE = "mobilenetv3small"
MODEL_NAME = "MobileNetV3Small(include_top=False)"


@pytest.fixture(scope="module")
def application() -> keras.Model:
    """The stand-alone application, as resolve_weights builds it to compare against."""
    return _application(BACKBONES[ARCHITECTURE], None, SIDE, None)


def save_legacy_h5(model: keras.Model, path) -> None:
    """The format of Keras's downloaded ImageNet files (weights by layer, in order)."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)


@pytest.fixture
def legacy_file(tmp_path, application):
    path = tmp_path / "genuine.h5"
    save_legacy_h5(application, path)
    return path


@pytest.fixture
def keras3_file(tmp_path, application):
    path = tmp_path / "genuine.weights.h5"
    application.save_weights(path)
    return path


def not_built():
    raise AssertionError("the model was built: the file's bounds were not checked first")


def check(path, application):
    check_weights_file(path, lambda: application, MODEL_NAME)


def resolve(tmp_path, path):
    changes = {
        "preprocess.image.size": SIDE,
        "train.model.architecture": ARCHITECTURE,
        "train.model.weights": str(path),
    }
    config = load_config(write_params(tmp_path / "project", changes))
    return resolve_weights(config.train.model, config.project_root)


def text(name: str | bytes) -> str:
    return name.decode() if isinstance(name, bytes) else name


def first_layer_group(handle: h5py.File) -> h5py.Group:
    """The first layer with weights of a legacy file, as Keras's loader reads it first."""
    for name in handle.attrs["layer_names"]:
        group = handle[text(name)]
        if len(group.attrs["weight_names"]):
            return group
    raise AssertionError("no layer with weights")


def add_declared_datasets(path, count: int = 2, size: int = GIB) -> int:
    """`count` datasets of `size` bytes declared, never written, listed as weights of the file's
    first layer (the bomb of issue 23 item 8); the bytes the file grew by."""
    before = path.stat().st_size
    with h5py.File(path, "a") as handle:
        group = first_layer_group(handle)
        names = [text(name) for name in group.attrs["weight_names"]]
        for index in range(count):
            group.create_dataset(f"declared_{index}", shape=(size // 4,), dtype="float32")
            names.append(f"declared_{index}")
        group.attrs["weight_names"] = names
    return path.stat().st_size - before


@pytest.mark.parametrize("kind", ["legacy_file", "keras3_file"])
def test_a_genuine_file_passes_and_its_structure_is_keras_own(request, kind, application):
    path = request.getfixturevalue(kind)
    check(path, application)
    if kind == "keras3_file":
        # The recorded paths are the ones Keras wrote, each with its variables.
        with h5py.File(path) as handle:
            written = set()
            handle.visititems(
                lambda name, item: written.add(name) if isinstance(item, h5py.Dataset) else None
            )
        expected = {
            f"{saved.path}/vars/{index}" if saved.path else f"vars/{index}"
            for saved in expected_variables(application)
            for index in range(len(saved.shapes))
        }
        assert written == expected and len(expected) > 100


def test_declared_gigabytes_are_refused_from_metadata_before_keras_reads(
    tmp_path, legacy_file, application
):
    grown = add_declared_datasets(legacy_file)
    assert grown < 16 * 1024  # a few KiB of metadata declare 2 GiB
    with pytest.raises(WeightsError) as error:
        check_weights_file(legacy_file, not_built, MODEL_NAME)
    message = str(error.value)
    assert message.startswith(f"{legacy_file}: dataset ") and "declared_" in message
    assert "declares 1.0 GiB" in message and "\n" not in message
    assert "'train.model.weights'" in message
    # Through resolve_weights, as the stages call it: the same line.
    with pytest.raises(WeightsError, match=r"declares 1\.0 GiB"):
        resolve(tmp_path, legacy_file)


def test_a_small_declared_never_written_dataset_is_refused(legacy_file, application):
    # Within every cap: refused because the file does not store it, not for its size.
    add_declared_datasets(legacy_file, count=1, size=1 << 20)
    with pytest.raises(WeightsError, match=r"declares 1\.0 MiB .* stores 0 bytes of it"):
        check_weights_file(legacy_file, not_built, MODEL_NAME)


@pytest.mark.slow  # a subprocess (h5py's and NumPy's imports)
def test_the_declared_gigabytes_leave_peak_memory_flat(tmp_path, legacy_file):
    """HDF5 allocates natively, so the peak resident size of a fresh process is measured."""
    add_declared_datasets(legacy_file)
    script = f"""
import json, resource, sys
from pathlib import Path
from pneumonia.model.weights_file import WeightsError, check_weights_file
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def not_built():
    sys.exit("the model was built")
try:
    check_weights_file(Path({str(legacy_file)!r}), not_built, "model")
    message = None
except WeightsError as error:
    message = str(error)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"before": before, "after": after, "message": message}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["message"] and "declares 1.0 GiB" in result["message"]
    grew_kib = result["after"] - result["before"]  # Linux: KiB
    assert grew_kib < 32 * 1024, f"peak memory grew by {grew_kib} KiB"


def test_chunked_compressed_datasets_are_bounded(tmp_path, legacy_file, application):
    # Declared only, chunked and compressed: over the cap, refused on its declared size.
    with h5py.File(legacy_file, "a") as handle:
        group = first_layer_group(handle)
        group.create_dataset(
            "declared", shape=(GIB // 4,), dtype="float32", chunks=(1 << 20,), compression="gzip"
        )
    with pytest.raises(WeightsError, match=r"'.*declared' declares 1\.0 GiB"):
        check_weights_file(legacy_file, not_built, MODEL_NAME)
    # Small enough for every cap, compressed, never written: its values would be fill values.
    path = tmp_path / "fill.h5"
    save_legacy_h5(application, path)
    with h5py.File(path, "a") as handle:
        first_layer_group(handle).create_dataset(
            "fill", shape=(1024,), dtype="float32", chunks=(256,), compression="gzip"
        )
    with pytest.raises(WeightsError, match=r"'.*fill' declares 4\.0 KiB .* stores 0 bytes"):
        check_weights_file(path, not_built, MODEL_NAME)
    # Genuinely stored, within the cap, but compressed beyond what weights compress.
    path = tmp_path / "zeros.h5"
    save_legacy_h5(application, path)
    with h5py.File(path, "a") as handle:
        first_layer_group(handle).create_dataset(
            "zeros", data=np.zeros(MAX_DATASET_BYTES // 8, "float32"), compression="gzip"
        )
    assert path.stat().st_size < 2 * (1 << 20) + (8 << 20)
    with pytest.raises(WeightsError, match=r"'.*zeros' declares 32\.0 MiB but stores .* 100:1"):
        check_weights_file(path, not_built, MODEL_NAME)


def test_the_total_and_attributes_are_capped(legacy_file):
    total = WeightsLimits(total_bytes=1 << 20)  # the genuine file holds 3.6 MiB
    with pytest.raises(WeightsError, match=r"its datasets declare more than 1\.0 MiB in all"):
        check_weights_file(legacy_file, not_built, MODEL_NAME, total)
    attributes = WeightsLimits(attribute_bytes=1024)  # layer_names is larger
    with pytest.raises(WeightsError, match=r"attribute 'layer_names' of '/' declares"):
        check_weights_file(legacy_file, not_built, MODEL_NAME, attributes)
    with pytest.raises(WeightsError, match=r"more than 10 objects"):
        check_weights_file(legacy_file, not_built, MODEL_NAME, WeightsLimits(objects=10))
    size = WeightsLimits(file_bytes=1 << 20)
    with pytest.raises(WeightsError, match=r": 3\.\d MiB, more than a weights file"):
        check_weights_file(legacy_file, not_built, MODEL_NAME, size)


def test_a_truncated_or_non_hdf5_file_is_one_line(tmp_path, legacy_file):
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(legacy_file.read_bytes()[: legacy_file.stat().st_size // 2])
    with pytest.raises(WeightsError) as error:
        resolve(tmp_path, truncated)
    assert str(error.value).startswith(f"{truncated}: not an HDF5 weights file (truncated file")
    text = tmp_path / "text.weights.h5"
    text.write_text("not weights\n")
    with pytest.raises(WeightsError) as error:
        resolve(tmp_path, text)
    message = str(error.value)
    assert message.startswith(f"{text}: not an HDF5 weights file (file signature not found)")
    assert "\n" not in message and "'train.model.weights'" in message
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match=r"empty\.h5: not an HDF5 weights file"):
        resolve(tmp_path, empty)


def test_links_and_data_outside_the_file_are_refused(tmp_path, application):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(bytes(64))
    cases = {
        "external link": lambda group: group.__setitem__(
            "elsewhere", h5py.ExternalLink(str(outside), "/x")
        ),
        "soft link": lambda group: group.__setitem__("alias", h5py.SoftLink("/missing")),
        "external storage": lambda group: group.create_dataset(
            "raw", shape=(16,), dtype="float32", external=[(str(outside), 0, 64)]
        ),
    }
    for kind, add in cases.items():
        path = tmp_path / f"{kind.replace(' ', '_')}.h5"
        save_legacy_h5(application, path)
        with h5py.File(path, "a") as handle:
            add(first_layer_group(handle))
        expected = {
            "external link": r"is an external link",
            "soft link": r"is a soft link",
            "external storage": r"keeps its data outside the file \(external storage\)",
        }[kind]
        with pytest.raises(WeightsError, match=expected):
            check_weights_file(path, not_built, MODEL_NAME)


def test_a_group_linked_into_itself_is_walked_once(legacy_file, application):
    with h5py.File(legacy_file, "a") as handle:
        group = first_layer_group(handle)
        group["loop"] = group  # a hard link: a cycle
    check(legacy_file, application)


def test_a_non_numeric_dataset_is_refused(legacy_file):
    with h5py.File(legacy_file, "a") as handle:
        first_layer_group(handle)["text"] = np.array([b"abc"])
    with pytest.raises(WeightsError, match=r"'.*text' holds \|S3, not numbers"):
        check_weights_file(legacy_file, not_built, MODEL_NAME)


def reshape_first(handle: h5py.File, name: str) -> tuple[int, ...]:
    """The dataset `name` replaced by one of another shape (stored, so within bounds)."""
    old = handle[name]
    shape = (*old.shape[:-1], old.shape[-1] + 1)
    del handle[name]
    handle[name] = np.zeros(shape, "float32")
    return shape


def no_warnings_flood(capfd, call) -> WeightsError:
    """The WeightsError `call` raises, after no warning and no line on stdout or stderr."""
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(WeightsError) as error:
            call()
    printed = capfd.readouterr()
    assert caught == [] and printed.out == "" and printed.err == ""
    assert "\n" not in str(error.value)
    return error.value


def test_a_legacy_file_of_another_shape_is_one_line_naming_the_layer(
    legacy_file, application, capfd
):
    with h5py.File(legacy_file, "a") as handle:
        group = first_layer_group(handle)
        layer = group.name.strip("/")
        weight = text(group.attrs["weight_names"][0])
        shape = reshape_first(group, weight)
    error = no_warnings_flood(capfd, lambda: check(legacy_file, application))
    message = str(error)
    assert message.startswith(f"{legacy_file}: does not fit {MODEL_NAME}: layer #0")
    assert f"'{layer}' in the file, holds shapes [{shape}]" in message
    # A layer missing from the file.
    shorter = legacy_file.with_name("shorter.h5")
    save_legacy_h5(application, shorter)
    with h5py.File(shorter, "a") as handle:
        names = [text(name) for name in handle.attrs["layer_names"]]
        weighted = [name for name in names if len(handle[name].attrs["weight_names"])]
        names.remove(weighted[-1])
        handle.attrs["layer_names"] = names
    with pytest.raises(WeightsError, match=r"the first missing is the model's layer #\d+ \('"):
        check(shorter, application)


def test_a_keras3_file_of_another_shape_is_one_line_naming_the_layer(
    keras3_file, application, capfd
):
    with h5py.File(keras3_file, "a") as handle:
        shape = reshape_first(handle, "layers/conv2d/vars/0")
    error = no_warnings_flood(capfd, lambda: check(keras3_file, application))
    assert str(error).startswith(
        f"{keras3_file}: does not fit {MODEL_NAME}: 'layers/conv2d' (the model's "
    )
    assert f"variable 0 has shape {shape} in the file" in str(error)
    # A legacy file under a Keras 3 name: nothing where Keras 3 looks.
    legacy_named = keras3_file.with_name("legacy.weights.h5")
    save_legacy_h5(application, legacy_named)
    with pytest.raises(WeightsError, match=r"'layers/conv2d' .* holds 0 variable\(s\) in the"):
        check(legacy_named, application)


def test_a_keras3_file_as_a_legacy_one_says_which_format(keras3_file, application):
    renamed = keras3_file.with_name("renamed.h5")
    keras3_file.rename(renamed)
    with pytest.raises(WeightsError, match=r"no 'layer_names' attribute, .* ends in \.weights"):
        check(renamed, application)


def test_the_train_stage_refuses_a_bad_weights_file_before_reading_data(
    tmp_path, legacy_file, monkeypatch, capsys
):
    add_declared_datasets(legacy_file)
    # No processed data at all: reading it first would fail on that instead.
    params = {
        "preprocess.image.size": SIDE,
        "train.model.architecture": ARCHITECTURE,
        "train.model.weights": str(legacy_file),
    }
    write_params(tmp_path / "project", params)
    monkeypatch.chdir(tmp_path / "project")
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "stages"))
    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(PROJECT_ROOT / "stages" / "train.py"), run_name="__main__")
    assert exit_info.value.code == 2
    printed = capsys.readouterr()
    errors = [line for line in printed.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {legacy_file}: dataset ")
    assert printed.err.rstrip().endswith(errors[0])  # the last line: nothing ran after it
    assert "declares 1.0 GiB" in errors[0] and "Traceback" not in printed.err
    assert "preprocess" not in printed.err


def test_a_tune_worker_refuses_a_bad_weights_file_before_reading_data(tmp_path):
    from pneumonia.model.workers import run_worker

    text = tmp_path / "text.h5"
    text.write_text("not weights\n")
    params = {
        "preprocess.image.size": SIDE,
        "train.model.architecture": ARCHITECTURE,
        "train.model.weights": str(text),
        "train.tuning.storage": "sqlite:///studies/s.db",
        "train.tuning.study_name": "backbone",
    }
    config = load_config(write_params(tmp_path / "project", params))
    with pytest.raises(WeightsError, match=r"text\.h5: not an HDF5 weights file"):
        run_worker(config, n_trials=1, study_trials=None)
    assert not (tmp_path / "project" / "studies").exists()  # nothing made before the check


@pytest.mark.slow  # each backbone's weights saved twice (ConvNeXtTiny's are 106 MiB)
@pytest.mark.parametrize("architecture", sorted(set(BACKBONES) - {ARCHITECTURE}))
def test_every_backbone_s_genuine_files_pass_within_the_caps(tmp_path, architecture):
    reference = _application(BACKBONES[architecture], None, SIDE, None)
    name = f"{BACKBONES[architecture].constructor.__name__}(include_top=False)"
    legacy, keras3 = tmp_path / "w.h5", tmp_path / "w.weights.h5"
    save_legacy_h5(reference, legacy)
    reference.save_weights(keras3)
    for path in (legacy, keras3):
        check_weights_file(path, lambda: reference, name)
    os.remove(legacy)
    os.remove(keras3)
