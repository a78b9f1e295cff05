"""The console filter lets real errors through: only the exact no-GPU cuInit lines are dropped,
native stderr is written through as it arrives (an abort inside the block still shows what came
before it), Keras' download notices stay visible, and train names its device on its first line."""

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import pneumonia
from pneumonia.console import (
    NO_DRIVER_LINE,
    NOISE_NATIVE_LINES,
    benign_native_lines,
    device_summary,
    native_stderr_without,
    nvidia_driver_installed,
    uses_mixed_precision,
)

from helpers import PROJECT_ROOT, tool_environment, write_params

PREFIX = b"2026-12-06 23:32:16.257602: E external/local_xla/xla/stream_executor/cuda/"
NO_DEVICE = (
    PREFIX + b"cuda_platform.cc:51] failed call to cuInit: INTERNAL: CUDA error: Failed call to "
    b"cuInit: CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected\n"
)
# As TensorFlow before 2.16 and the absl log format write it.
NO_DEVICE_OLD = (
    b"E0000 00:00:1774276356.402831 1594808 cuda_driver.cc:314] failed call to cuInit: "
    b"CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected\n"
)
NO_DRIVER = (
    PREFIX + b"cuda_platform.cc:51] failed call to cuInit: INTERNAL: CUDA error: Failed call to "
    b"cuInit: UNKNOWN ERROR (303)\n"
)
# cuInit failures that are real errors: each is why training would fall back to the CPU.
REAL_CUINIT_ERRORS = [
    PREFIX + b"cuda_platform.cc:51] failed call to cuInit: INTERNAL: CUDA error: Failed call to "
    b"cuInit: " + reason + b"\n"
    for reason in (
        b"CUDA_ERROR_SYSTEM_DRIVER_MISMATCH: system has unsupported display driver / cuda "
        b"driver combination",
        b"CUDA_ERROR_OUT_OF_MEMORY: out of memory",
        b"CUDA_ERROR_UNKNOWN: unknown error",
        b"CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE: forward compatibility was attempted on non "
        b"supported HW",
        # The benign message with anything after it is not the benign message.
        b"CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected; and then something else",
    )
]


def python_environment() -> dict[str, str]:
    return tool_environment(PYTHONPATH=str(Path(pneumonia.__file__).parents[1]))


def test_only_the_exact_no_device_cuinit_line_is_dropped(capfd):
    with native_stderr_without(NOISE_NATIVE_LINES):
        for line in (NO_DEVICE, NO_DEVICE_OLD, *REAL_CUINIT_ERRORS, NO_DRIVER):
            os.write(2, line)
    kept = capfd.readouterr().err.encode()
    # The no-driver line is only dropped where no driver is installed (benign_native_lines).
    assert kept == b"".join([*REAL_CUINIT_ERRORS, NO_DRIVER])


def test_the_no_driver_line_is_benign_only_without_a_driver_library(capfd):
    patterns = benign_native_lines()
    assert (NO_DRIVER_LINE in patterns) is not nvidia_driver_installed()
    with native_stderr_without(patterns):
        os.write(2, NO_DRIVER)
        os.write(2, REAL_CUINIT_ERRORS[0])
    kept = capfd.readouterr().err.encode()
    assert kept == (b"" if NO_DRIVER_LINE in patterns else NO_DRIVER) + REAL_CUINIT_ERRORS[0]


def test_a_line_longer_than_the_filter_holds_is_written_through_whole(capfd):
    long_line = b"E x.cc:1] " + b"y" * 200_000 + b"\n"
    with native_stderr_without(NOISE_NATIVE_LINES):
        os.write(2, long_line)
        os.write(2, NO_DEVICE)
    assert capfd.readouterr().err.encode() == long_line


# A process that writes native lines inside the block (the benign one among them), starts a child
# that writes and aborts, then aborts itself inside the block, the last line without a newline.
ABORTING = textwrap.dedent(
    """
    import os, subprocess, sys
    from pneumonia.console import benign_native_lines, native_stderr_without
    with native_stderr_without(benign_native_lines()):
        os.write(2, {no_device!r})
        os.write(2, {real!r})
        subprocess.run([sys.executable, "-c",
                        "import os; os.write(2, b'child: before its abort\\\\n'); os.abort()"])
        print("python: a traceback line", file=sys.stderr, flush=True)
        os.write(2, {no_device!r})
        os.write(2, b"F check.cc:1] Check failed: the last words, no newline")
        os.abort()
    """
)


@pytest.mark.slow  # a subprocess
def test_an_abort_inside_the_block_still_shows_every_line_written_before_it():
    code = ABORTING.format(no_device=NO_DEVICE, real=REAL_CUINIT_ERRORS[0])
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        env=python_environment(),
        timeout=60,
        check=False,
    )
    assert result.returncode == -signal.SIGABRT, result.stderr
    assert result.stderr == (
        REAL_CUINIT_ERRORS[0]
        + b"child: before its abort\n"
        + b"python: a traceback line\n"
        + b"F check.cc:1] Check failed: the last words, no newline"
    )


STREAMING = textwrap.dedent(
    """
    import os, sys
    from pneumonia.console import NOISE_NATIVE_LINES, native_stderr_without
    with native_stderr_without(NOISE_NATIVE_LINES):
        os.write(2, b"E a.cc:1] written inside the block\\n")
        sys.stdin.readline()  # the block goes on until the test has seen that line
    os.write(2, b"after the block\\n")
    """
)


@pytest.mark.slow  # a subprocess
def test_native_stderr_is_written_through_while_the_block_runs():
    process = subprocess.Popen(
        [sys.executable, "-c", STREAMING],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=python_environment(),
    )
    try:
        seen, deadline = b"", time.monotonic() + 30
        while b"\n" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stderr], [], [], 1)
            if ready:
                seen += os.read(process.stderr.fileno(), 4096)
        # Seen while the block still waits for this test.
        assert seen == b"E a.cc:1] written inside the block\n"
        process.stdin.write(b"go on\n")
        process.stdin.close()
        assert process.stderr.read() == b"after the block\n"
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow  # a fresh interpreter: TensorFlow and Keras set up as every entry point has them
def test_keras_download_notices_show_and_its_progress_lines_do_not(tmp_path):
    """The message path of keras.utils.get_file, from a local file:// origin (no network)."""
    weights = tmp_path / "weights.h5"
    weights.write_bytes(b"not really weights")
    (tmp_path / "cache").mkdir()  # Keras falls back to /tmp/.keras for a folder that is not there
    code = textwrap.dedent(
        f"""
        from pneumonia.console import start_tensorflow
        start_tensorflow()
        import keras
        from keras.src.utils import io_utils
        io_utils.print_msg("12/12 a Keras progress line")
        keras.utils.get_file(
            "weights.h5", origin={weights.as_uri()!r}, cache_dir={str(tmp_path / "cache")!r}
        )
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=python_environment(),
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert f"Downloading data from {weights.as_uri()}" in output
    assert "a Keras progress line" not in output
    assert (tmp_path / "cache" / "datasets" / "weights.h5").exists()


def test_the_device_summary_names_the_device_and_the_precision():
    import tensorflow as tf

    from pneumonia.model.training import configure_runtime

    gpus = tf.config.list_physical_devices("GPU")
    summary = device_summary("auto")
    if gpus:
        assert summary.startswith("device GPU:0 (") and summary.endswith("mixed precision on")
    else:
        assert summary in (
            "device CPU (no GPU found), mixed precision off",
            "device CPU (this TensorFlow is built without CUDA), mixed precision off",
        )
    assert device_summary("off").endswith("mixed precision off")
    # The same rule as the precision policy training sets.
    for setting in ("auto", "off"):
        policy = configure_runtime(0, setting)["precision_policy"]
        assert uses_mixed_precision(len(gpus), setting) == (policy == "mixed_float16")
    configure_runtime(0, "off")
    assert not uses_mixed_precision(0, "auto") and uses_mixed_precision(1, "auto")
    assert not uses_mixed_precision(1, "off")


@pytest.mark.slow  # runs the train stage script (it stops at the missing processed data)
def test_train_names_its_device_on_its_first_line(tmp_path):
    write_params(tmp_path, {})
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "stages" / "train.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=tool_environment(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}"),
        timeout=300,
        check=False,
    )
    lines = result.stderr.splitlines()
    assert lines[0].startswith("train: device "), result.stderr
    assert lines[0].endswith(("mixed precision on", "mixed precision off"))
    assert result.returncode == 2 and lines[-1].startswith("error: "), result.stderr
    assert "failed call to cuInit" not in result.stderr  # this machine's benign line


def test_mlflow_registration_lines_are_dropped_and_the_rest_kept(capsys):
    """MLflow's registry client prints its registration lines with its own eprint (to
    sys.stderr, not through logging); inside without_registry_chatter only those go."""
    from mlflow.utils.logging_utils import eprint

    from pneumonia.console import without_registry_chatter

    with without_registry_chatter():
        eprint("Successfully registered model 'pneumonia-cnn'.")
        eprint(
            "Registered model 'pneumonia-classifier' already exists. Creating a new version of "
            "this model..."
        )
        eprint("Created version '3' of model 'pneumonia-classifier'.")
        eprint("a real warning")
        print("partial line without a newline", end="", file=sys.stderr)
    err = capsys.readouterr().err
    assert err == "a real warning\npartial line without a newline"
