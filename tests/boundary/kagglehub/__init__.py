"""Stand-in for kagglehub at the one place the pipeline reaches Kaggle's servers.

Tests that run `dvc repro` in a subprocess put this folder first on PYTHONPATH. It answers
`dataset_download` with the local folder named by FAKE_KAGGLEHUB_DATASET and records the handle
it was asked for in FAKE_KAGGLEHUB_LOG, so the test can check the pinned version was requested.
"""

import os
from pathlib import Path


def dataset_download(handle: str, path: str | None = None, force_download: bool = False) -> str:
    log = os.environ.get("FAKE_KAGGLEHUB_LOG")
    if log:
        with open(log, "a") as handle_log:
            handle_log.write(handle + "\n")
    folder = os.environ.get("FAKE_KAGGLEHUB_DATASET")
    if not folder:
        raise ConnectionError("fake kagglehub: no network (FAKE_KAGGLEHUB_DATASET is not set)")
    return str(Path(folder))
