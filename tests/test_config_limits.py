"""params.yaml that passed validation and then crashed, hung or lied (issue 23, items 11, 16, 17
and the unbounded worker count): each is refused at load, fast, with one short line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pneumonia
from pneumonia.config import (
    MAX_SEED,
    ConfigError,
    load_config,
    parse_override,
    resolve_workers,
    usable_cores,
)
from pneumonia.data.parallel import parallel_map
from pneumonia.params_file import MAX_VALUES

from helpers import PROJECT_PARAMS, tool_environment, write_params

# The project's params.yaml as written (comments, line numbers), edited as text below: these
# tests only load it, so the tests' speed overrides have nothing to do here.
PARAMS_TEXT = PROJECT_PARAMS.read_text()


def write_text(folder: Path, text: str | bytes) -> Path:
    path = folder / "params.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def alias_bomb(levels: int = 8, width: int = 9) -> str:
    """Anchors of anchors: a few hundred bytes that expand to width**levels values."""
    lines = [f"a0: &a0 [{', '.join(['xxxxxxxxxx'] * width)}]"]
    for level in range(1, levels + 1):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def with_duplicate_threshold() -> tuple[str, int, int]:
    """The project's params with evaluate.threshold given twice; the two line numbers."""
    lines = PARAMS_TEXT.splitlines()
    first = next(index for index, line in enumerate(lines) if line.startswith("  threshold: "))
    lines.insert(first + 1, "  threshold: 0.3")
    return "\n".join(lines) + "\n", first + 1, first + 2


# --- Item 11: an alias bomb, and every echoed value bounded -------------------------------


def test_an_alias_bomb_fails_fast_with_a_short_message(tmp_path):
    text = PARAMS_TEXT + "bomb:\n" + "".join(f"  {line}\n" for line in alias_bomb().splitlines())
    path = write_text(tmp_path, text)
    started = time.perf_counter()
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert time.perf_counter() - started < 1.0
    message = str(raised.value)
    assert f"expands to more than {MAX_VALUES} values through aliases" in message
    assert "params.yaml: line" in message and len(message) < 400


def test_a_bounded_alias_is_still_allowed(tmp_path):
    text = PARAMS_TEXT.replace(
        "learning_rate: [0.0001, 0.003]", "learning_rate: &range [0.0001, 0.003]"
    )
    assert text != PARAMS_TEXT
    lines = [line for line in text.splitlines() if "fine_tuning_learning_rate:" not in line]
    lines.insert(
        lines.index(next(line for line in lines if "&range" in line)) + 1,
        "      fine_tuning_learning_rate: *range",
    )
    config = load_config(write_text(tmp_path, "\n".join(lines) + "\n"))
    assert config.train.tuning.search_space.fine_tuning_learning_rate == (0.0001, 0.003)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &x [1, *x]\n", "refers to the value that holds it"),
        ("a: " + "[" * 50 + "]" * 50 + "\n", "nested deeper than 20 levels"),
        ("a: " + "[" * 100_000 + "\n", "nested deeper than 20 levels"),
    ],
)
def test_recursive_and_deep_documents_fail_fast(tmp_path, text, message):
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        load_config(write_text(tmp_path, text))
    assert time.perf_counter() - started < 2.0


def test_a_file_over_a_megabyte_is_refused_unread(tmp_path):
    path = write_text(tmp_path, PARAMS_TEXT + "#" * 1_000_001 + "\n")
    with pytest.raises(ConfigError, match="larger than 1000000 bytes"):
        load_config(path)


@pytest.mark.parametrize(
    "changes",
    [
        {"preprocess.image.resize": "x" * 100_000},
        {"split.seed": "9" * 100_000},
        {"paths.images": "/" + "a" * 100_000},
        {"train.tuning.search_space.optimizer": ["sgd" * 1000] * 3},
        {f"split.{'k' * 50_000}": 1},
    ],
)
def test_echoed_values_are_truncated(tmp_path, changes):
    with pytest.raises(ConfigError) as raised:
        load_config(write_params(tmp_path, changes))
    message = str(raised.value)
    assert len(message) < 1_000, message[:2_000]
    assert "..." in message


def test_many_problems_are_counted_not_listed(tmp_path):
    changes = {f"split.unknown{index}": index for index in range(500)}
    with pytest.raises(ConfigError, match=r"and 480 more problem\(s\)$") as raised:
        load_config(write_params(tmp_path, changes))
    assert len(str(raised.value)) < 5_000


# --- Item 17: a key given twice --------------------------------------------------------------


def test_a_duplicate_key_is_refused_naming_it_and_both_lines(tmp_path):
    text, first, second = with_duplicate_threshold()
    with pytest.raises(
        ConfigError,
        match=rf"line {second}: duplicate key 'evaluate\.threshold' \(first at line {first}\)",
    ):
        load_config(write_text(tmp_path, text))


def test_an_override_value_with_a_duplicate_key_is_refused():
    with pytest.raises(ConfigError, match=r"override .*duplicate key 'a'"):
        parse_override("evaluate.threshold={a: 1, a: 2}")


# --- Item 16: bytes that are not UTF-8 --------------------------------------------------------


def test_a_latin1_byte_names_its_line_and_says_utf8(tmp_path):
    text = PARAMS_TEXT.replace("# Every knob", "# Every knob (caf\u00e9)", 1)
    data = text.encode("latin-1")
    offset = data.index(b"\xe9")
    line = data[:offset].count(b"\n") + 1
    path = write_text(tmp_path, data)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: byte {offset} (line {line}, column ")
    assert "is 0xe9, not UTF-8; save the file as UTF-8" in message


def test_a_utf8_file_with_a_byte_order_mark_loads(tmp_path):
    load_config(write_text(tmp_path, b"\xef\xbb\xbf" + PARAMS_TEXT.encode()))


# --- Item 16: names MLflow, Optuna or NumPy would refuse after the work -----------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"train.registered_model_name": "pneumonia'cnn"},
            "'train.registered_model_name' must be a registered model name",
        ),
        (
            {"train.registered_model_name": "models/cnn"},
            "'train.registered_model_name' must be a registered model name",
        ),
        (
            {"train.registered_model_name": "m" * 257},
            "'train.registered_model_name' must be a registered model name .*at most 256",
        ),
        (
            {"evaluate.serving_model_name": "s" * 257},
            "'evaluate.serving_model_name' must be a registered model name",
        ),
        ({"mlflow.experiment": "e" * 257}, "'mlflow.experiment' must be at most 256 characters"),
        ({"mlflow.experiment": "e" * 600}, "'mlflow.experiment' must be at most 256 characters"),
        ({"mlflow.experiment": "two\nlines"}, "'mlflow.experiment' must not hold control"),
        ({"train.tuning.study_name": "s" * 513}, "'train.tuning.study_name' must be at most 512"),
        ({"train.tuning.study_name": "a\x00b"}, "'train.tuning.study_name' must not hold"),
        ({"train.seed": 2**32}, r"'train.seed' must be in \[0, 4294967295\], got 4294967296"),
        ({"split.seed": 2**40}, r"'split.seed' must be in \[0, 4294967295\]"),
        ({"evaluate.seed": 2**32}, r"'evaluate.seed' must be in \[0, 4294967295\]"),
        (
            {"train.seed": MAX_SEED, "train.ensemble": 3},
            r"'train.seed' \(4294967295\) plus 'train.ensemble' - 1 \(2\) must be at most",
        ),
    ],
)
def test_names_and_seeds_the_tools_refuse_are_refused_at_load(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_params(tmp_path, changes))


def test_the_bounds_themselves_load(tmp_path):
    changes = {
        "train.registered_model_name": "m" * 256,
        "mlflow.experiment": "experiment with spaces, é and 256 characters".ljust(256, "e"),
        "train.tuning.study_name": "s" * 512,
        "train.seed": MAX_SEED,
        "train.ensemble": 1,  # the members' seeds, seed + 1 and on, would pass the bound
        "split.seed": MAX_SEED,
    }
    config = load_config(write_params(tmp_path, changes))
    assert config.train.seed == MAX_SEED


def test_the_seed_bound_is_numpys():
    np.random.seed(MAX_SEED)
    with pytest.raises(ValueError):
        np.random.seed(MAX_SEED + 1)


def test_the_name_bounds_are_what_mlflow_takes():
    """256 characters is what MLflow's SQL stores hold; MLflow itself refuses over 500."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    client.create_experiment("e" * 256)
    client.create_registered_model("m" * 256)
    with pytest.raises(MlflowException):
        client.create_experiment("e" * 501)


# --- Worker counts: clamped to the cores this machine has ------------------------------------


def _pid(_: int) -> int:
    time.sleep(0.01)
    return os.getpid()


def test_more_workers_than_cores_are_clamped_with_one_note(capsys):
    cores = usable_cores()
    assert resolve_workers(0) == cores
    assert resolve_workers(1) == 1
    assert resolve_workers(cores + 148) == cores
    assert resolve_workers(cores + 148) == cores
    notes = capsys.readouterr().err.splitlines()
    assert notes == [
        f"note: {cores + 148} workers asked for, {cores} core(s) usable here: using {cores}"
    ]


def test_a_map_with_150_workers_starts_no_more_processes_than_cores():
    pids = set(parallel_map(_pid, range(64), workers=150, chunksize=1))
    assert 1 <= len(pids) <= usable_cores()


# --- Item 7: check-params reports each as one line, exit 2 -----------------------------------


def bad_files(folder: Path) -> dict[str, Path]:
    cases = {
        "protected": (
            {"paths.images": "mlruns"},
            "'paths.images' (mlruns) is mlruns (the MLflow store)",
        ),
        "name": ({"train.registered_model_name": 'cnn"v2'}, "'train.registered_model_name'"),
        "seed": ({"train.seed": 2**32}, "'train.seed' must be in [0, 4294967295]"),
    }
    files = {}
    for name, (changes, message) in cases.items():
        files[name] = (write_params(folder / name, changes), message)
    duplicate, _, second = with_duplicate_threshold()
    files["duplicate"] = (
        write_text(_mkdir(folder / "duplicate"), duplicate),
        f"line {second}: duplicate key 'evaluate.threshold'",
    )
    latin = PARAMS_TEXT.replace("# Every knob", "# Every knob (caf\u00e9)", 1).encode("latin-1")
    files["latin-1"] = (write_text(_mkdir(folder / "latin-1"), latin), "not UTF-8")
    bomb = PARAMS_TEXT + "bomb:\n" + "".join(f"  {line}\n" for line in alias_bomb().splitlines())
    files["bomb"] = (write_text(_mkdir(folder / "bomb"), bomb), "through aliases")
    return files


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.slow  # a real `python -m pneumonia.cli check-params` per case, in a subprocess
def test_check_params_reports_each_as_one_line_with_exit_2(tmp_path):
    env = tool_environment(PYTHONPATH=str(Path(pneumonia.__file__).parents[1]))
    for name, (path, message) in bad_files(tmp_path).items():
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "pneumonia.cli", "check-params", "--params", str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        seconds = time.perf_counter() - started
        lines = result.stderr.splitlines()
        assert result.returncode == 2, (name, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, result.stderr)
        assert message in lines[0], (name, lines[0])
        assert len(lines[0]) < 1_000 and result.stdout == "", name
        assert seconds < 30, (name, seconds)
