"""Fixtures only: MLflow isolation for every test, small real inputs (Kaggle-layout folders and
archives, a tiny trained model) and a throwaway PostgreSQL. Plain helpers live in helpers.py."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

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
    """A throwaway PostgreSQL server on 127.0.0.1 for the whole session (helpers.py).

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
    card = {"preprocess": TINY_PREPROCESS, "mlflow": registry}
    (folder / "model.json").write_text(json.dumps(card))
    # The operating point names its model file by content, as evaluate writes it.
    model_file = {**registered, "sha256": file_sha256(folder / "model.keras")}
    operating_point = {"threshold": threshold, "model": model_file}
    (folder / "threshold.json").write_text(json.dumps(operating_point))
    return {
        "folder": folder,
        "model_path": folder / "model.keras",
        "images": paths,
        "threshold": threshold,
        "settings": settings,
    }
