"""A quiet console: third-party noise silenced once, each line where it comes from, by every entry
point (the stages, the `pneumonia` command, the served model) before TensorFlow is imported.

Real warnings and errors still show; what is silenced, and why each is noise:

- TensorFlow's C++ INFO and WARNING lines at start-up (oneDNN, CPU instructions):
  TF_CPP_MIN_LOG_LEVEL=2.
- `E ... cuda_platform.cc:51] failed call to cuInit: ...`: the CUDA build of TensorFlow (the pip
  wheel) logs it as an ERROR when it initializes its devices on a machine without an NVIDIA
  driver. TF_CPP_MIN_LOG_LEVEL=3 would hide every other C++ error too, so `start_tensorflow`
  initializes the devices once with file descriptor 2 captured and writes back every line but
  that one.
- `WARNING:tensorflow:5 out of the last 15 calls to ... triggered tf.function retracing`: Keras
  traces new functions for every model a process fits, and tuning and ensembles fit several.
- Optuna's ExperimentalWarning for its matplotlib plots, which the train stage draws.
- MLflow's INFO lines when it creates its SQLite tables and when it validates an input example,
  and its artifact download bars.
- Keras' progress bar for the one-batch predict with which MLflow checks an input example: Keras'
  interactive logging is off; the pipeline's own progress (pneumonia.progress) replaces it.

- `E ... NodeDef mentions attribute use_unbounded_threadpool which is not in the op definition`:
  tf.data logs it when op determinism (on while training) makes it rewrite a parallel map into a
  sequential one. The training datasets map sequentially (model/dataset.py), so it is not
  printed in the first place; registry.py drops it around MLflow's check of the logged model,
  whose Keras predict builds such a map.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
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
# Python warnings dropped, as regular expressions matched against the start of the message.
NOISE_WARNINGS = (r"optuna\.visualization\.matplotlib\.\S+ is experimental",)
# Lines TensorFlow's C++ code writes to file descriptor 2 while it initializes its devices.
NOISE_NATIVE_LINES = (re.compile(rb"\] failed call to cuInit: "),)
# Written when tf.data rewrites a parallel map under op determinism (model/dataset.py avoids it
# in the pipeline's own datasets; Keras' predict on arrays still builds one).
NODEDEF_LINE = re.compile(rb"\] NodeDef mentions attribute use_unbounded_threadpool ")

_quieted = False
_started = False


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


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
    """Capture what is written to file descriptor 2 (C++ code included) inside the block, then
    write back every line that matches none of `patterns`."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep clean
        yield
        return
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError, OSError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().splitlines(keepends=True)
                if not any(pattern.search(line) for pattern in patterns)
            ]
            if kept:
                os.write(2, b"".join(kept))


def start_tensorflow() -> None:
    """Import TensorFlow and Keras quietly (idempotent): quiet_console, then TensorFlow's devices
    initialized without the no-driver cuInit line, and Keras' own progress bars off."""
    global _started
    quiet_console()
    if _started:
        return
    _started = True
    import tensorflow as tf

    with native_stderr_without(NOISE_NATIVE_LINES):
        tf.config.list_physical_devices()
    import keras

    keras.config.disable_interactive_logging()
