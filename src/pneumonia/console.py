"""A quiet console: third-party noise silenced once, each line where it comes from, by every entry
point (the stages, the `pneumonia` command, the served model) before TensorFlow is imported.

Real warnings and errors still show; what is silenced, and why each is noise:

- TensorFlow's C++ INFO and WARNING lines at start-up (oneDNN, CPU instructions):
  TF_CPP_MIN_LOG_LEVEL=2.
- `E ... cuda_platform.cc:51] failed call to cuInit: ...`, but only the two forms that mean "this
  machine has no NVIDIA GPU": CUDA_ERROR_NO_DEVICE ("no CUDA-capable device is detected"), and
  the nameless `UNKNOWN ERROR (303)` that TensorFlow's CUDA stub answers when there is no driver
  library at all (dropped only when libcuda.so.1 indeed cannot be loaded). The CUDA build of
  TensorFlow (the pip wheel) logs them as an ERROR on every CPU machine. Any other cuInit failure
  (a driver mismatch, out of memory, a driver that is installed but broken) is a real error and
  shows: it is why training would fall back to the CPU, and train's first line names the device
  it uses. TF_CPP_MIN_LOG_LEVEL=3 would hide every other C++ error too, so `start_tensorflow`
  initializes the devices once through `native_stderr_without`, which drops those lines only.
- `WARNING:tensorflow:5 out of the last 15 calls to ... triggered tf.function retracing`: Keras
  traces new functions for every model a process fits, and tuning and ensembles fit several.
- Optuna's ExperimentalWarning for its matplotlib plots, which the train stage draws.
- MLflow's INFO lines when it creates its SQLite tables and when it validates an input example,
  and its artifact download bars.
- Keras' progress bar for the one-batch predict with which MLflow checks an input example: Keras'
  interactive logging is off; the pipeline's own progress (pneumonia.progress) replaces it. With
  it off, Keras sends its messages to absl's logger at INFO, which absl hides; the ones a user
  needs, "Downloading data from ..." (ImageNet weights) and the re-download notice of a cached
  file whose hash does not match, are let through (KERAS_NOTICES), and the rest stays hidden.

- `E ... NodeDef mentions attribute use_unbounded_threadpool which is not in the op definition`:
  tf.data logs it when op determinism (on while training) makes it rewrite a parallel map into a
  sequential one. The training datasets map sequentially (model/dataset.py), so it is not
  printed in the first place; registry.py drops it around MLflow's check of the logged model,
  whose Keras predict builds such a map.

Native lines are filtered as they arrive, not when the block ends: file descriptor 2 is a pipe
to a small filter process that writes every kept line to the real stderr at once. A separate
process, not a thread: when the code inside the block aborts (a C++ CHECK failure, SIGABRT) or
is killed, the filter still reads what was written before and passes it on.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator

# Logger name -> fragments of the INFO/WARNING messages dropped from it.
NOISE_LOG_MESSAGES: dict[str, tuple[str, ...]] = {
    "tensorflow": ("triggered tf.function retracing",),
    "mlflow.store.db.utils": (
        "Creating initial MLflow database tables",
        "Updating database tables",
    ),
    "mlflow.pyfunc": ("Validating input example against model signature",),
}
# What MLflow's registry client prints itself when it registers a model (to sys.stderr, not
# through logging): the stages' summary lines say what they registered.
REGISTRY_CHATTER = re.compile(
    r"(Successfully registered model '.*'\.|Registered model '.*' already exists\. Creating a new "
    r"version of this model\.\.\.|Created version '.*' of model '.*'\.)\n?\Z"
)
# Python warnings dropped, as regular expressions matched against the start of the message.
NOISE_WARNINGS = (r"optuna\.visualization\.matplotlib\.\S+ is experimental",)
# The cuInit failure of a machine with an NVIDIA driver and no NVIDIA GPU, as TensorFlow 2.16+
# (`failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: CUDA_ERROR_NO_DEVICE...`)
# and earlier versions write it; the whole rest of the line, nothing else.
NO_DEVICE_LINE = re.compile(
    rb"\] failed call to cuInit: (?:INTERNAL: CUDA error: Failed call to cuInit: )?"
    rb"CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected\r?\n?\Z"
)
# With no driver library at all, TensorFlow's CUDA stub answers every driver call with
# CUDA_ERROR_SHARED_OBJECT_INIT_FAILED (303), which it cannot name without the driver. Benign only
# when libcuda.so.1 cannot be loaded (`benign_native_lines`): with a driver installed, 303 means
# a broken one.
NO_DRIVER_LINE = re.compile(
    rb"\] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: "
    rb"UNKNOWN ERROR \(303\)\r?\n?\Z"
)
# Lines TensorFlow's C++ code writes to file descriptor 2 while it initializes its devices that
# are dropped on every machine (see benign_native_lines for the no-driver one).
NOISE_NATIVE_LINES = (NO_DEVICE_LINE,)
NVIDIA_DRIVER_LIBRARY = "libcuda.so.1"  # what TensorFlow's CUDA stub opens
# Keras' messages (io_utils.print_msg, sent to absl's logger while interactive logging is off)
# that stay visible: file_utils.get_file's notices.
KERAS_NOTICES = ("Downloading data from ", "A local file was found, but it seems to be incomplete")
# How long the end of a native_stderr_without block waits for the filter to pass on the last
# lines; longer only when a process started inside the block still holds the pipe (the filter
# then goes on passing its lines until it exits).
FILTER_DRAIN_SECONDS = 5.0
# A line longer than this without a newline is written through unfiltered, in pieces: the filter
# never holds more.
FILTER_MAX_LINE_BYTES = 1 << 16
# The filter process: standard library only (run with -I -S). Arguments: the longest line it
# holds, then each pattern as <hex of its bytes source>:<flags>. It ignores SIGINT, so that after
# a Ctrl-C the parent's last words (its traceback) still pass through it.
FILTER_CODE = r"""
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
max_line = int(sys.argv[1])
patterns = []
for argument in sys.argv[2:]:
    source, _, flags = argument.partition(":")
    patterns.append(re.compile(bytes.fromhex(source), int(flags)))
open_output = True
def write(data):
    global open_output
    while data and open_output:
        try:
            data = data[os.write(1, data):]
        except InterruptedError:
            continue
        except OSError:
            open_output = False  # no stderr left: keep draining, so the writers never block
def emit(line):
    if not any(pattern.search(line) for pattern in patterns):
        write(line)
pending = b""
while True:
    try:
        chunk = os.read(0, 65536)
    except InterruptedError:
        continue
    if not chunk:
        break
    pending += chunk
    *lines, pending = pending.split(b"\n")
    for line in lines:
        emit(line + b"\n")
    if len(pending) > max_line:
        write(pending)
        pending = b""
if pending:
    emit(pending)
"""
# Written when tf.data rewrites a parallel map under op determinism (model/dataset.py avoids it
# in the pipeline's own datasets; Keras' predict on arrays still builds one).
NODEDEF_LINE = re.compile(rb"\] NodeDef mentions attribute use_unbounded_threadpool ")

_quieted = False
_started = False
# Filters still draining a pipe that a process started inside their block holds open: kept so
# that they are not garbage collected (and warned about) while they run.
_draining: list[subprocess.Popen] = []


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


class _KerasNotices(logging.Filter):
    """On absl's logger: its warnings and errors, and of its INFO records only Keras' notices
    (KERAS_NOTICES); Keras' progress lines and the rest stay hidden as absl's default hides them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.getMessage().startswith(KERAS_NOTICES)


class _LinesWithout:
    """A text stream that passes whole lines on to `stream`, except those `pattern` matches."""

    def __init__(self, stream, pattern: re.Pattern[str]):
        self.stream, self.pattern, self.pending = stream, pattern, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if not self.pattern.match(line + "\n"):
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self.pending and not self.pattern.match(self.pending):
            self.stream.write(self.pending)
        self.pending = ""
        self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextlib.contextmanager
def without_registry_chatter() -> Iterator[None]:
    """sys.stderr without MLflow's registration lines (REGISTRY_CHATTER) inside the block."""
    real = sys.stderr
    filtered = _LinesWithout(real, REGISTRY_CHATTER)
    sys.stderr = filtered
    try:
        yield
    finally:
        filtered.flush()
        sys.stderr = real


def quiet_console() -> None:
    """Silence the known noise that does not need TensorFlow imported (cheap; idempotent). Call
    before TensorFlow is imported: TensorFlow reads TF_CPP_MIN_LOG_LEVEL once."""
    global _quieted
    if _quieted:
        return
    _quieted = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name, fragments in NOISE_LOG_MESSAGES.items():
        logging.getLogger(name).addFilter(_DropMessages(fragments))
    ignore_noise_warnings()


def ignore_noise_warnings() -> None:
    """Ignore the known third-party Python warnings (NOISE_WARNINGS), and only those."""
    for message in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


@contextlib.contextmanager
def native_stderr_without(patterns: tuple[re.Pattern[bytes], ...]) -> Iterator[None]:
    """Filter what is written to file descriptor 2 (C++ code and child processes included) inside
    the block: every line that matches none of `patterns` goes to the real stderr as soon as it is
    complete, and also when the process aborts inside the block. Where no filter process can be
    started, nothing is filtered (and nothing lost)."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep clean
        yield
        return
    started = _start_filter(patterns, saved)
    if started is None:
        os.close(saved)
        yield
        return
    filter_process, pipe = started
    with contextlib.suppress(ValueError, OSError):
        sys.stderr.flush()
    os.dup2(pipe, 2)
    os.close(pipe)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError, OSError):
            sys.stderr.flush()
        # Closes this process's last write end of the pipe: the filter reads to the end, writes
        # the rest and exits.
        os.dup2(saved, 2)
        os.close(saved)
        try:
            filter_process.wait(timeout=FILTER_DRAIN_SECONDS)
        except subprocess.TimeoutExpired:
            _draining.append(filter_process)
        _draining[:] = [process for process in _draining if process.poll() is None]


def _start_filter(
    patterns: tuple[re.Pattern[bytes], ...], output: int
) -> tuple[subprocess.Popen, int] | None:
    """The filter process reading a new pipe and writing to `output`, and the pipe's write end;
    None when it cannot be started."""
    try:
        read_end, write_end = os.pipe()
    except OSError:
        return None
    arguments = [f"{pattern.pattern.hex()}:{int(pattern.flags)}" for pattern in patterns]
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", FILTER_CODE, str(FILTER_MAX_LINE_BYTES), *arguments],
            stdin=read_end,
            stdout=output,
            stderr=output,
        )
    except (OSError, ValueError):  # no interpreter to run (an embedded Python): unfiltered
        os.close(write_end)
        return None
    finally:
        os.close(read_end)
    return process, write_end


def nvidia_driver_installed() -> bool:
    """Whether the NVIDIA driver library that TensorFlow's CUDA stub opens can be loaded."""
    try:
        ctypes.CDLL(NVIDIA_DRIVER_LIBRARY)
    except OSError:
        return False
    return True


def benign_native_lines() -> tuple[re.Pattern[bytes], ...]:
    """The native lines dropped while TensorFlow initializes its devices on this machine."""
    if nvidia_driver_installed():
        return NOISE_NATIVE_LINES
    return (*NOISE_NATIVE_LINES, NO_DRIVER_LINE)


def start_tensorflow() -> None:
    """Import TensorFlow and Keras quietly (idempotent): quiet_console, then TensorFlow's devices
    initialized without the no-GPU cuInit line, Keras' own progress bars off and its download
    notices kept."""
    global _started
    quiet_console()
    if _started:
        return
    _started = True
    import tensorflow as tf

    with native_stderr_without(benign_native_lines()):
        tf.config.list_physical_devices()
    import keras

    keras.config.disable_interactive_logging()
    keep_keras_notices()


def keep_keras_notices() -> None:
    """Let Keras' notices (KERAS_NOTICES) through absl's logger, where they go while interactive
    logging is off; absl hides INFO, so its other INFO records are dropped by a filter instead."""
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(existing, _KerasNotices) for existing in absl_logger.filters):
        absl_logger.addFilter(_KerasNotices())
    if absl_logger.getEffectiveLevel() > logging.INFO:
        absl_logger.setLevel(logging.INFO)


def uses_mixed_precision(gpus: int, setting: str) -> bool:
    """train.mixed_precision: `auto` is mixed float16 on a GPU, float32 on the CPU; `off` is
    float32. The one statement of the rule: the device line and model.training.configure_runtime
    both ask it."""
    return gpus > 0 and setting == "auto"


def device_summary(mixed_precision: str) -> str:
    """The device training runs on and its precision, in words: `device GPU:0 (NVIDIA H100 80GB
    HBM3, compute 9.0), mixed precision on` or `device CPU (no GPU found), mixed precision off`.
    Keras places the model on the first GPU; others are named as unused."""
    start_tensorflow()
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        facts = [str(details.get("device_name") or "unnamed GPU")]
        capability = details.get("compute_capability")
        if capability:
            facts.append("compute " + ".".join(str(part) for part in capability))
        device = f"GPU:0 ({', '.join(facts)})"
        if len(gpus) > 1:
            device += f", {len(gpus) - 1} more GPU(s) unused"
    elif tf.test.is_built_with_cuda():
        device = "CPU (no GPU found)"
    else:
        device = "CPU (this TensorFlow is built without CUDA)"
    precision = "on" if uses_mixed_precision(len(gpus), mixed_precision) else "off"
    return f"device {device}, mixed precision {precision}"
