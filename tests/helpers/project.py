"""Running the real tools: the `pneumonia` command in-process, `dvc` and the stages in a copy of
the repository (the end-to-end tests' project), and a tiny project folder to tune.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from pneumonia.config import ModelConfig
from pneumonia.contracts.arrays import write_split

from helpers.images import (
    add_archive_quirks,
    build_kaggle_tree,
    sample_shared_images,
)
from helpers.params import (
    apply_changes,
    fixture_params,
)
from helpers.paths import PROJECT_ROOT


def run_cli(arguments: list[str], capsys: Any) -> tuple[int, str, str]:
    """The real `pneumonia` command in-process; returns (exit status, stdout, stderr)."""
    from pneumonia.cli import main

    status = 0
    try:
        main(arguments)
    except SystemExit as exit:
        status = exit.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def run_command(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a command to completion; a non-zero exit fails the test with its output."""
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


# The small real CNN the unit tests train and score (two plain blocks, 8 filters).
TINY_CNN = ModelConfig(
    architecture="cnn",
    weights="none",
    depth=2,
    base_filters=8,
    convolution="plain",
    dropout=0.0,
)


def pipeline_project(
    base: Path, configure: Callable[[dict[str, Any]], None]
) -> tuple[Path, dict[str, str]]:
    """The end-to-end tests' project: a repository copy under `base` whose Kaggle download is
    faked at the boundary (tests/boundary) by a tree of the shared sample images with the real
    archive's quirks, with its params.yaml changed by `configure`, committed. Returns the repo
    and the environment to run `dvc` in."""
    repo, dataset = base / "repo", base / "kaggle-cache" / "versions" / "2"
    copy_repository(repo)
    tree = build_kaggle_tree(dataset / "chest_xray", sample_shared_images())
    add_archive_quirks(dataset, tree)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    configure(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = tool_environment(
        PYTHONPATH=os.pathsep.join(
            [str(PROJECT_ROOT / "tests" / "boundary"), os.environ.get("PYTHONPATH", "")]
        ),
        FAKE_KAGGLEHUB_DATASET=str(dataset),
        FAKE_KAGGLEHUB_LOG=str(base / "kaggle-calls.log"),
    )
    commit_baseline(repo, env)
    return repo, env


# Tiny enough that a trial takes seconds on a CPU, with a signal the CNN can learn.
TINY_PROJECT_CHANGES: dict[str, Any] = {
    "preprocess.image.size": 16,
    "train.epochs": 1,
    "train.weight_averaging.swa_epochs": 1,  # the default's swa, over the one epoch
    "train.batch_size": 8,
    "train.mixed_precision": "off",
    "train.model.depth": 2,
    "train.model.base_filters": 4,
    "train.tuning.epochs": 1,
    "train.tuning.pruner": "none",
    "train.tuning.timeout": 0,
    "train.tuning.search_space.base_filters": [4, 8],
    "train.tuning.search_space.batch_size": [8, 16],
}


def tiny_project_arrays(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Toy X-rays: pneumonia images are brighter in the middle."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(count) % 2).astype(np.uint8)
    images = rng.integers(0, 120, size=(count, size, size, 1)).astype(np.uint8)
    quarter = size // 4
    images[labels == 1, quarter:-quarter, quarter:-quarter] += 100
    return images, labels


def split_index(names: list[str], labels: np.ndarray) -> pd.DataFrame:
    """A split's index table as the split stage writes it, one patient and hash per file name."""
    return pd.DataFrame(
        {
            "path": names,
            "label": np.where(labels == 1, "PNEUMONIA", "NORMAL"),
            "patient_id": names,
            "sha256": names,
        }
    )


def write_tiny_project(
    root: Path, changes: dict[str, Any], images: int = 48, base_params: Path | None = None
) -> Path:
    """A project folder with base_params (the tests' params unless told), TINY_PROJECT_CHANGES
    and `changes` applied, and processed train and val arrays (what the preprocess stage writes);
    returns the params file."""
    params = fixture_params() if base_params is None else yaml.safe_load(base_params.read_text())
    apply_changes(params, {**TINY_PROJECT_CHANGES, **changes})
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    size = params["preprocess"]["image"]["size"]
    for seed, (split, count) in enumerate((("train", images), ("val", images // 2))):
        folder = root / params["paths"]["processed"] / split
        folder.mkdir(parents=True, exist_ok=True)
        pixels, labels = tiny_project_arrays(count, size, seed)
        np.save(folder / "images.npy", pixels, allow_pickle=False)
        names = [f"{split}-{index}.png" for index in range(count)]
        frame = split_index(names, labels)
        write_split(folder, frame, labels)
        # The split table and the raw images too: the train stage's acquisition-shift check
        # re-renders the raw val images.
        images_dir = root / params["paths"]["images"]
        images_dir.mkdir(parents=True, exist_ok=True)
        for name, image in zip(names, pixels, strict=True):
            Image.fromarray(image[..., 0]).save(images_dir / name)
        split_dir = root / params["paths"]["split"]
        split_dir.mkdir(parents=True, exist_ok=True)
        frame.to_csv(split_dir / f"{split}.csv", index=False)
    return root / "params.yaml"
