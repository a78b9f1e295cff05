"""Progress and a quiet console: bars on a terminal, plain lines in a log, the headers of training,
and third-party noise dropped while real messages stay."""

import io
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import mlflow
import pytest

import pneumonia
from pneumonia.console import (
    NODEDEF_LINE,
    NOISE_NATIVE_LINES,
    ignore_noise_warnings,
    native_stderr_without,
    quiet_console,
)
from pneumonia.progress import Progress, track

from helpers import tool_environment, write_tiny_project


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_with_an_eta_then_one_summary_line():
    stream = FakeTerminal()
    with Progress("epoch 1/3", 4, "batches", stream=stream, bar_interval=0) as progress:
        for _ in range(4):
            progress.update(1, loss=0.5)
    text = stream.getvalue()
    assert "\r" in text  # a bar redrawn in place
    assert "epoch 1/3" in text and "4/4" in text and "loss=0.5000" in text
    assert text.rstrip("\n").splitlines()[-1].endswith("epoch 1/3: 4 batches in 00:00")


def test_a_pseudo_terminal_without_a_size_still_gets_a_bar():
    # As `script` or a CI runner may give: tqdm alone would draw nothing on it.
    master, slave = os.openpty()
    with (
        os.fdopen(slave, "w") as terminal,
        Progress("scoring", 2, "images", stream=terminal, bar_interval=0) as progress,
    ):
        progress.update(2)
    # All of it: one read may return only part of what the terminal holds. Once the other end
    # is closed, Linux answers a read of the drained master with EIO.
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    output = b"".join(chunks).decode()
    assert "\rscoring: 100%" in output and "2/2" in output
    assert output.endswith("\rscoring: 2 images in 00:00\r\n")


def test_a_log_gets_plain_lines_with_elapsed_and_eta_and_no_carriage_returns():
    stream = io.StringIO()
    with Progress("preprocess train", 4, "images", stream=stream, interval=0) as progress:
        for _ in range(4):
            progress.update(1)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0] == lines[0].strip() and lines[0].startswith(
        "preprocess train: 1/4 images (25%)"
    )
    assert "elapsed" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("preprocess train: 4 images in ")
    assert len(lines) == 5  # one per update (interval 0), then the summary


def test_a_log_gets_no_lines_between_intervals_and_a_failed_step_no_summary():
    stream = io.StringIO()
    with pytest.raises(RuntimeError), Progress("scoring", 100, stream=stream) as progress:
        progress.update(50)
        raise RuntimeError("stop")
    assert stream.getvalue() == ""  # 30 s did not pass; a step that raised says nothing


def test_track_yields_every_item_and_counts_them():
    stream = io.StringIO()
    assert list(track(["a", "b", "c"], "panels", unit="panels", stream=stream)) == ["a", "b", "c"]
    assert stream.getvalue().startswith("panels: 3 panels in ")


def test_known_noise_is_dropped_and_real_messages_kept(caplog):
    quiet_console()
    with caplog.at_level(logging.INFO):
        logging.getLogger("tensorflow").warning("5 calls triggered tf.function retracing")
        logging.getLogger("tensorflow").warning("a real TensorFlow warning")
        logging.getLogger("mlflow.store.db.utils").info(
            "Creating initial MLflow database tables..."
        )
    assert [record.getMessage() for record in caplog.records] == ["a real TensorFlow warning"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        ignore_noise_warnings()
        warnings.warn(
            "optuna.visualization.matplotlib._param_importances.plot_param_importances is "
            "experimental (supported from v2.2.0).",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("a real warning", UserWarning, stacklevel=1)
    assert [str(warning.message) for warning in caught] == ["a real warning"]


def test_native_stderr_lines_are_dropped_only_when_they_match(capfd):
    with native_stderr_without((*NOISE_NATIVE_LINES, NODEDEF_LINE)):
        os.write(
            2,
            b"2026-11-23 14:34:10.28: E cuda_platform.cc:51] failed call to cuInit: INTERNAL: "
            b"CUDA error: Failed call to cuInit: CUDA_ERROR_NO_DEVICE: no CUDA-capable device is "
            b"detected\n",
        )
        os.write(2, b"2026-11-23 14:34:12.33: E node_def_util.cc:680] NodeDef mentions attribute ")
        os.write(2, b"use_unbounded_threadpool which is not in the op definition\n")
        os.write(2, b"2026-11-23 14:34:12.40: E some_op.cc:1] a real error\n")
    assert capfd.readouterr().err == "2026-11-23 14:34:12.40: E some_op.cc:1] a real error\n"


def test_an_augmented_training_dataset_logs_no_nodedef_error(capfd):
    import numpy as np

    from pneumonia.config import AugmentationConfig
    from pneumonia.model.dataset import make_dataset
    from pneumonia.model.training import seed_everything

    seed_everything(0)  # op determinism, as every fit has it
    augmentation = AugmentationConfig(
        rotation=0.03, shift=0.05, zoom=0.1, contrast=0.1, brightness=0, blur=0, aspect=0
    )
    images = np.zeros((8, 16, 16, 1), dtype=np.uint8)
    dataset = make_dataset(
        images, np.arange(8) % 2, 4, training=True, seed=0, augmentation=augmentation
    )
    assert sum(1 for _ in dataset) == 2
    assert "NodeDef" not in capfd.readouterr().err


@pytest.mark.slow  # four tiny fits (two trials, two members): ~30 s on 2 cores
def test_training_prints_trial_final_fit_member_and_epoch_lines(tmp_path, capsys):
    from pneumonia.config import load_config
    from pneumonia.model.training import fit_ensemble, load_training_splits
    from pneumonia.model.tuning import run_study

    changes = {
        "train.tuning.n_trials": 2,
        "train.ensemble": 2,
        "train.tuning.search_space.batch_size": [16],
    }
    config = load_config(write_tiny_project(tmp_path, changes, images=32))
    train, val = load_training_splits(config)
    mlflow.set_experiment("progress-test")
    with mlflow.start_run() as run:
        study = run_study(config.train, train, val, run.info.run_id, config.project_root)
        fit_ensemble(config.train.hyperparameters, train, val, config.train, run.info.run_id)
    err = capsys.readouterr().err
    lines = err[err.index("tuning: ") :].splitlines()  # after MLflow's note on the experiment
    assert lines[0].startswith(
        f"tuning: 2 trial(s) of 1 epoch(s) on val_auc, study {study.study_name}"
    )
    headers = [line for line in lines if not line.startswith(" ")]
    assert [re.split(r"[:(]", line)[0].strip() for line in headers] == [
        "tuning",
        "trial 1/2",
        "trial 1/2",
        "trial 2/2",
        "trial 2/2",
        "final fit",
        "member 1/2",
        "member 2/2",
        "final fit",
    ]
    assert headers[1].startswith("trial 1/2: optimizer ") and "batch_size 16" in headers[1]
    assert headers[2].startswith("trial 1/2: val_auc 0.")
    epochs = [line for line in lines if line.startswith("  epoch 1/1: loss ")]
    assert len(epochs) == 4  # two trials and two members, one epoch each
    assert all("auc" in line and "val_auc" in line for line in epochs)
    assert "\r" not in err  # not a terminal: no bars


@pytest.mark.slow  # a fresh interpreter: TensorFlow initializes its devices once per process
def test_starting_tensorflow_prints_nothing():
    code = (
        "from pneumonia.console import start_tensorflow; start_tensorflow(); "
        "import tensorflow as tf; print(int(tf.constant(2) * 3))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=tool_environment(PYTHONPATH=str(Path(pneumonia.__file__).parents[1])),
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "6\n"
    assert result.stderr == ""
