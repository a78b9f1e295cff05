"""Fixtures that build small real inputs: image files, Kaggle-layout folders and archives."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASET = PROJECT_ROOT.parent / "shared" / "data" / "chest_xray"

# A few patients per split and class, named like the real dataset (one has two images).
PATIENT_FILES = {
    ("train", "NORMAL"): [
        "IM-0115-0001.jpeg",
        "IM-0117-0001.jpeg",
        "IM-0119-0001.jpeg",
        "IM-0122-0001.jpeg",
        "NORMAL2-IM-0115-0001.jpeg",
        "NORMAL2-IM-0117-0001.jpeg",
        "NORMAL2-IM-0120-0001.jpeg",
        "IM-0125-0001.jpeg",
    ],
    ("train", "PNEUMONIA"): [
        "person1_bacteria_1.jpeg",
        "person1_bacteria_2.jpeg",
        "person2_virus_3.jpeg",
        "person3_bacteria_4.jpeg",
        "person4_virus_5.jpeg",
        "person5_bacteria_6.jpeg",
        "person6_bacteria_7.jpeg",
        "person7_virus_8.jpeg",
        "person8_bacteria_9.jpeg",
    ],
    ("test", "NORMAL"): ["IM-0001-0001.jpeg", "IM-0003-0001.jpeg", "NORMAL2-IM-0007-0001.jpeg"],
    ("test", "PNEUMONIA"): [
        "person1_virus_6.jpeg",
        "person3_bacteria_10.jpeg",
        "person9_virus_1.jpeg",
    ],
    ("val", "NORMAL"): ["NORMAL2-IM-1427-0001.jpeg"],
    ("val", "PNEUMONIA"): ["person1946_bacteria_4874.jpeg"],
}


def chest_like_pixels(seed: int, width: int, height: int) -> np.ndarray:
    """A grey gradient with noise: decodes like an X-ray, differs per seed."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 200, width, dtype=np.float32)[None, :]
    noise = rng.normal(0, 25, size=(height, width)).astype(np.float32)
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


def write_image(path: Path, seed: int, mode: str = "L", size: tuple[int, int] = (96, 80)) -> Path:
    """Write a small real image in the given Pillow mode; format from the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    gray = chest_like_pixels(seed, *size)
    image = Image.fromarray(gray)
    if mode == "I;16":
        image = Image.fromarray(gray.astype(np.uint16) * 257)
    elif mode != "L":
        image = image.convert(mode)
    suffix = path.suffix.lower()
    image.save(
        path,
        format="PNG" if suffix == ".png" else "JPEG",
        **({} if suffix == ".png" else {"quality": 90}),
    )
    return path


def truncated_jpeg_bytes(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(chest_like_pixels(seed, 120, 100)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    return data[: len(data) // 2]


def build_kaggle_tree(root: Path, source_images: dict | None = None) -> Path:
    """A Kaggle-layout tree under root: <split>/<CLASS>/<file>, synthetic or copied images."""
    seed = 0
    for (split, label), names in PATIENT_FILES.items():
        for position, name in enumerate(names):
            seed += 1
            target = root / split / label / name
            if source_images:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source_images[(split, label)][position], target)
            else:
                write_image(target, seed)
    return root


def add_archive_quirks(top: Path, tree: Path) -> None:
    """What the real Kaggle archive adds: a nested duplicate tree, __MACOSX, .DS_Store."""
    shutil.copytree(tree, tree / "chest_xray")
    for path in sorted(tree.rglob("*.jpeg"))[:6]:
        relative = path.relative_to(top)
        apple = top / "__MACOSX" / relative.parent / f"._{path.name}"
        apple.parent.mkdir(parents=True, exist_ok=True)
        apple.write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (tree / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tree / "train" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")


@pytest.fixture
def kaggle_folder(tmp_path: Path) -> Path:
    """A small dataset as the Kaggle archive unpacks: chest_xray/ with all its quirks."""
    top = tmp_path / "download"
    tree = build_kaggle_tree(top / "chest_xray")
    add_archive_quirks(top, tree)
    return top


@pytest.fixture
def kaggle_zip(kaggle_folder: Path, tmp_path: Path) -> Path:
    archive = tmp_path / "chest-xray-pneumonia.zip"
    with zipfile.ZipFile(archive, "w") as writer:
        for path in sorted(kaggle_folder.rglob("*")):
            writer.write(path, path.relative_to(kaggle_folder).as_posix())
    return archive


def sample_shared_images() -> dict | None:
    """Distinct real images for each name of PATIENT_FILES from ../shared; None when absent."""
    if not SHARED_DATASET.is_dir():
        return None
    sample = {}
    for (split, label), names in PATIENT_FILES.items():
        files = sorted(
            (SHARED_DATASET / ("test" if split == "test" else "train") / label).glob("*.jpeg")
        )
        # val takes its images from the end of train/ so no file is used twice.
        sample[(split, label)] = files[-len(names) :] if split == "val" else files[: len(names)]
    return sample


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 for the whole session (tests/scaleout.py).

    Skips, saying why, only where PostgreSQL cannot run here: its server programs are missing,
    or this is root and there is no `postgres` user to run them. A server that is there but
    fails to start fails the test.
    """
    from scaleout import PostgresCluster, PostgresUnavailable

    try:
        cluster = PostgresCluster()
    except PostgresUnavailable as error:
        pytest.skip(f"PostgreSQL is not available: {error}")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


# --- A tiny trained model, saved as the train and evaluate stages leave it in models/ ----------

TINY_SIDE = 32
TINY_PREPROCESS = {
    "image_size": TINY_SIDE,
    "resize": "letterbox",
    "clahe": False,
    "clahe_clip_limit": 2.0,
    "clahe_tile_grid": 8,
}


def blob_pixels(seed: int, positive: bool, size: tuple[int, int] = (TINY_SIDE, TINY_SIDE)):
    """Dark noise; a "pneumonia" image carries a bright square somewhere (width, height)."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.integers(0, 90, size=(height, width)).astype(np.uint8)
    if positive:
        side = max(4, min(width, height) // 4)
        row, column = rng.integers(1, height - side - 1), rng.integers(1, width - side - 1)
        pixels[row : row + side, column : column + side] = 230
    return pixels


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> dict:
    """A small CNN of the project's architecture, trained for seconds to find bright squares,
    saved with its model card and an operating threshold (the median score of the sample images,
    so both labels occur), plus sample image files (PNG and JPEG, various sizes)."""
    import json

    import keras

    from pneumonia.config import ModelConfig
    from pneumonia.imaging.transforms import config_from_settings, preprocess_file
    from pneumonia.model.network import build_model

    folder = tmp_path_factory.mktemp("tiny-model")
    keras.utils.set_random_seed(0)
    model = build_model(
        TINY_SIDE, ModelConfig(depth=2, base_filters=8, convolution="plain", dropout=0.0)
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
    card = {"preprocess": TINY_PREPROCESS, "mlflow": {"version": "1", "model_id": "m-tiny"}}
    (folder / "model.json").write_text(json.dumps(card))
    operating_point = {"threshold": threshold, "model": {"version": "1", "model_id": "m-tiny"}}
    (folder / "threshold.json").write_text(json.dumps(operating_point))
    return {
        "folder": folder,
        "model_path": folder / "model.keras",
        "images": paths,
        "threshold": threshold,
        "settings": settings,
    }


# --- Running the real tools on a copy of the repository ------------------------------------


def run_command(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def tool_environment(**extra: str) -> dict[str, str]:
    """What the pipeline's tools run with in a repo copy: this venv's programs first, a git
    identity, no DVC analytics, and no MLflow settings leaking in from the caller."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.com",
        DVC_NO_ANALYTICS="true",
    )
    env.update(extra)
    return env


def commit_baseline(repo: Path, env: dict[str, str]) -> None:
    """A git repository whose first commit holds everything in the copy."""
    run_command(["git", "init", "-q", "-b", "main"], repo, env)
    run_command(["git", "add", "-A"], repo, env)
    run_command(["git", "commit", "-qm", "baseline"], repo, env)


def copy_repository(target: Path) -> None:
    """What a fresh clone holds: tracked files plus new files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    # A clone of a project that never committed a run: no lock file, no outputs.
    generated = ("dvc.lock", "reports/", "data/", "models/", "studies/")
    for relative in filter(None, listed):
        if relative.startswith(generated):
            continue
        source = PROJECT_ROOT / relative
        if source.is_file():
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / relative)
