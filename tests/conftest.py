"""Fixtures, and how the suite is spread over pytest-xdist workers: MLflow isolation for every
test, small real inputs (Kaggle-layout folders and archives, a tiny trained model) and a
throwaway PostgreSQL. Plain helpers live in the helpers package."""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from helpers import (
    TINY_CNN,
    TINY_PREPROCESS,
    TINY_SIDE,
    PostgresCluster,
    PostgresUnavailable,
    add_archive_quirks,
    blob_pixels,
    build_kaggle_tree,
    mlflow_store,
)

# A worker imports TensorFlow and its slow tests start more processes that do: past 4 workers
# memory grows faster than the suite speeds up.
MAX_WORKERS = 4


def visible_gpus() -> int:
    import tensorflow as tf  # only when a collected test needs a GPU

    return len(tf.config.list_physical_devices("GPU"))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (pyproject's addopts): one worker per core, at most MAX_WORKERS."""
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


# A test module defining a fixture of one of these scopes builds it once per worker that runs
# its tests: one `dvc repro`, one PostgreSQL study, one trained model.
SHARED_FIXTURE = re.compile(r"@pytest\.fixture\(scope=\"(?:class|module|package)\"")


def modules_sharing_a_fixture(folder: Path) -> frozenset[str]:
    """The test modules (as their node ids start, `tests/test_x.py`) that define a fixture built
    once for several tests. Read from the source: the controller process does not collect."""
    root = folder.parent
    return frozenset(
        path.relative_to(root).as_posix()
        for path in folder.glob("test_*.py")
        if SHARED_FIXTURE.search(path.read_text(encoding="utf-8"))
    )


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup` (pyproject's addopts), done here: the tests of a module that shares a
    fixture go to one worker together, every other test on its own, so a module of slow unit
    tests does not leave one worker alone on it. pytest-xdist 3.8's own grouping (the
    xdist_group mark) does nothing under pytest 9.2, which no longer reads the node id it sets."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    grouped = modules_sharing_a_fixture(Path(__file__).parent)

    class SharedFixtureScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in grouped else super()._split_scope(nodeid)

    return SharedFixtureScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks what each test needs (needs_postgres from its fixtures; needs_gpu skipped without a
    GPU), then orders the modules with the most slow tests first, each module's own order kept,
    so the longest start first."""
    for item in items:
        if "postgres" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_postgres)
    gpu_tests = [item for item in items if item.get_closest_marker("needs_gpu")]
    if gpu_tests and not visible_gpus():
        for item in gpu_tests:
            item.add_marker(pytest.mark.skip(reason="needs a GPU; TensorFlow sees none here"))
    slow_counts: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        slow_counts[module] = slow_counts.get(module, 0) + (
            item.get_closest_marker("slow") is not None
        )
    first_seen = {module: index for index, module in enumerate(dict.fromkeys(slow_counts))}
    items.sort(
        key=lambda item: (
            -slow_counts[item.nodeid.split("::")[0]],
            first_seen[item.nodeid.split("::")[0]],
        )
    )


@pytest.fixture(autouse=True)
def isolated_mlflow(tmp_path: Path) -> Iterator[str]:
    """Each test logs to its own store: MLFLOW_TRACKING_URI is a SQLite database in its
    tmp_path, no URI is set in-process and no run is active. Afterwards any run it left open is
    ended and MLflow's process-wide settings and environment are put back as they were, so
    nothing a test logs or sets reaches another (helpers.mlflow_store). Yields the URI.

    MLflow creates the database on first use only, so a test that never logs pays nothing, and
    mlflow is not imported here, so a test that never touches it does not load it. A test that
    wants another store (a server, a repository's own) sets it itself.
    """
    with mlflow_store(f"sqlite:///{tmp_path / 'mlflow.db'}") as uri:
        yield uri


@pytest.fixture
def kaggle_folder(tmp_path: Path) -> Path:
    """A small dataset as the Kaggle archive unpacks: chest_xray/ with all its quirks."""
    top = tmp_path / "download"
    tree = build_kaggle_tree(top / "chest_xray")
    add_archive_quirks(top, tree)
    return top


@pytest.fixture
def kaggle_zip(kaggle_folder: Path, tmp_path: Path) -> Path:
    """kaggle_folder zipped, as Kaggle serves it."""
    archive = tmp_path / "chest-xray-pneumonia.zip"
    with zipfile.ZipFile(archive, "w") as writer:
        for path in sorted(kaggle_folder.rglob("*")):
            writer.write(path, path.relative_to(kaggle_folder).as_posix())
    return archive


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL server on 127.0.0.1 for the whole session (helpers.services).

    Skips, saying why, only where PostgreSQL cannot run here: its server programs are missing,
    or this is root and there is no `postgres` user to run them. A server that is there but
    fails to start fails the test.
    """
    try:
        cluster = PostgresCluster()
    except PostgresUnavailable as error:
        pytest.skip(f"PostgreSQL is not available: {error}")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small CNN of the project's architecture, trained for seconds to find bright squares,
    saved with its model card and an operating threshold (the median score of the sample images,
    so both labels occur), plus sample image files (PNG and JPEG, various sizes)."""
    import keras

    from pneumonia.contracts.files import file_sha256
    from pneumonia.contracts.model_card import ModelCard, write_model_card
    from pneumonia.contracts.model_reference import ModelReference
    from pneumonia.contracts.operating_point import OperatingPoint, write_operating_point
    from pneumonia.imaging.transforms import config_from_settings, preprocess_file
    from pneumonia.model.network import build_model

    folder = tmp_path_factory.mktemp("tiny-model")
    keras.utils.set_random_seed(0)
    model = build_model(
        TINY_SIDE,
        TINY_CNN,
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    labels = np.arange(128) % 2
    images = np.stack([blob_pixels(seed, bool(label)) for seed, label in enumerate(labels)])
    model.fit(images[..., None], labels, epochs=4, batch_size=32, verbose=0)
    model.save(folder / "model.keras")

    images_dir = folder / "images"
    images_dir.mkdir()
    paths = []
    for index in range(8):
        size = (TINY_SIDE, TINY_SIDE) if index % 3 == 0 else (48 + index, 40)
        suffix = ".png" if index % 2 else ".jpeg"
        path = images_dir / f"xray{index}{suffix}"
        pixels = blob_pixels(1000 + index, index % 2 == 1, size)
        Image.fromarray(pixels).save(path, **({"quality": 95} if suffix == ".jpeg" else {}))
        paths.append(path)

    settings = config_from_settings(TINY_PREPROCESS, "tiny model")
    pixels = np.stack([preprocess_file(path, settings) for path in paths])[..., None]
    scores = np.sort(model.predict(pixels, verbose=0).reshape(-1))
    threshold = float(scores[len(scores) // 2])
    # The sections readers rely on (pneumonia.contracts.model_card), as train writes them.
    registered = {"registered_model": "pneumonia-cnn", "version": "1", "model_id": "m-tiny"}
    registry = {**registered, "run_id": "r-tiny", "model_uri": "models:/m-tiny"}
    card = ModelCard(preprocess=TINY_PREPROCESS, mlflow=registry)
    write_model_card(folder / "model.json", card)
    # The operating point names its model file by content, as evaluate writes it.
    model_file = ModelReference(**registered, sha256=file_sha256(folder / "model.keras"))
    point = OperatingPoint(threshold=threshold, model=model_file)
    write_operating_point(folder / "threshold.json", point)
    return {
        "folder": folder,
        "model_path": folder / "model.keras",
        "images": paths,
        "threshold": threshold,
        "settings": settings,
    }
