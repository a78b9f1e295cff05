"""MLflow isolation for every test (conftest.py's isolated_mlflow): what MLflow reads from and
writes into the environment and its module globals, reset around each test.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from typing import Any

# What MLflow reads from the environment, and writes back into it (set_tracking_uri and
# set_experiment export theirs so that subprocesses inherit them).
MLFLOW_ENVIRONMENT = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
)
# MLflow's process-wide settings, as (module, attribute). Private: MLflow offers no way to read
# whether a URI was set or to clear the active experiment, and an experiment id left over from
# another store breaks the next fluent start_run. A rename in MLflow fails here, loudly.
MLFLOW_GLOBALS = (
    ("mlflow.tracking._tracking_service.utils", "_tracking_uri"),
    ("mlflow.tracking._model_registry.utils", "_registry_uri"),
    ("mlflow.tracking.fluent", "_active_experiment_id"),
)


def _mlflow_globals() -> dict[tuple[str, str], Any]:
    """The current MLFLOW_GLOBALS; empty before anything imported mlflow (all unset then)."""
    if "mlflow" not in sys.modules:
        return {}
    return {
        (module, name): getattr(importlib.import_module(module), name)
        for module, name in MLFLOW_GLOBALS
    }


def _reset_mlflow(values: dict[tuple[str, str], Any], runs_store: str | None = None) -> None:
    """End every run left active (in `runs_store` when given), then set MLFLOW_GLOBALS to
    `values` (None where absent)."""
    if "mlflow" not in sys.modules:
        return
    import mlflow

    if runs_store is not None:
        mlflow.set_tracking_uri(runs_store)
    while mlflow.active_run() is not None:
        # end_run forgets the run first, then marks it ended in the current store. A run from
        # another store cannot be marked there; forgotten is what matters to the next test.
        with contextlib.suppress(Exception):
            mlflow.end_run()
    (tracking_module, tracking_name), *others = MLFLOW_GLOBALS
    # Through the public call: it also resets the tracer that caches the URI.
    mlflow.set_tracking_uri(values.get((tracking_module, tracking_name)))
    for module, name in others:
        setattr(importlib.import_module(module), name, values.get((module, name)))


@contextlib.contextmanager
def mlflow_store(uri: str) -> Iterator[str]:
    """MLflow logs to `uri` inside the block: MLFLOW_TRACKING_URI is set, no URI is set
    in-process, no experiment or run is active. On leaving, runs left open are ended (in `uri`,
    where they were most likely started, whatever the block pointed MLflow at since) and
    MLflow's process-wide settings and environment are put back as they were.

    Imports nothing itself: a block that never touches mlflow does not load it."""
    saved = _mlflow_globals()
    saved_environment = {name: os.environ.get(name) for name in MLFLOW_ENVIRONMENT}
    _reset_mlflow({})
    for name in MLFLOW_ENVIRONMENT:
        os.environ.pop(name, None)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield uri
    finally:
        _reset_mlflow(saved, runs_store=uri)
        # Last: the reset writes MLFLOW_TRACKING_URI. Each variable as it was before the block,
        # whatever MLflow wrote into it meanwhile (set_experiment exports the experiment id).
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
