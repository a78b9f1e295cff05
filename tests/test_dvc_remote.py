"""DVC remote: the README's commands, for real. The pipeline runs on a tiny dataset in a copy of
the repository and its outputs go to a local-directory remote with `dvc push`. A clone then
pulls the processed arrays a tuning worker needs, and the first workspace, its outputs and
cache deleted, pulls every cached output back byte-identical."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import (
    build_kaggle_tree,
    commit_baseline,
    copy_repository,
    run_command,
    tool_environment,
)

pytestmark = pytest.mark.slow
# What push/pull carries: the cached outputs of dvc.yaml (the image links, the reports and
# model.json are `cache: false`, so DVC leaves them to the stages and git).
CACHED_OUTPUTS = (
    "data/raw/manifest.csv",
    "data/split",
    "data/processed",
    "reports/samples",
    "models/model.keras",
)


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    return run_command(command, cwd, env).stdout


def file_hashes(root: Path, outputs: tuple[str, ...]) -> dict[str, str]:
    hashes = {}
    for output in outputs:
        path = root / output
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            hashes[file.relative_to(root).as_posix()] = hashlib.sha256(
                file.read_bytes()
            ).hexdigest()
    return hashes


def test_push_to_a_local_remote_and_pull_back(tmp_path):
    repo, remote = tmp_path / "repo", tmp_path / "dvc-remote"
    copy_repository(repo)
    dataset = build_kaggle_tree(tmp_path / "dataset" / "chest_xray")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["download"].update(source=str(dataset), workers=1)
    params["preprocess"].update(image_size=32, workers=1, sample_grid=4)
    train = params["train"]
    train.update(epochs=1, batch_size=8)
    train["model"].update(depth=2, base_filters=4)
    train["tuning"]["n_trials"] = 0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = tool_environment()
    commit_baseline(repo, env)
    run(["dvc", "repro"], repo, env)
    produced = file_hashes(repo, CACHED_OUTPUTS)
    assert "models/model.keras" in produced
    assert any(name.startswith("data/processed/train/") for name in produced)

    # The README's commands.
    run(["dvc", "remote", "add", "-d", "backup", str(remote)], repo, env)
    run(["dvc", "push"], repo, env)
    assert any(path.is_file() for path in (remote / "files" / "md5").rglob("*"))
    assert "in sync" in run(["dvc", "status", "--cloud"], repo, env)
    run(["git", "add", "dvc.lock", ".dvc/config"], repo, env)
    run(["git", "commit", "-qm", "pipeline outputs pushed"], repo, env)

    # A tuning worker's machine: a clone pulls only what tune-worker reads.
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    run(["dvc", "pull", "preprocess"], clone, env)
    assert file_hashes(clone, ("data/processed",)) == file_hashes(repo, ("data/processed",))
    assert not (clone / "models" / "model.keras").exists()

    # The same workspace with its outputs and its cache gone.
    for output in CACHED_OUTPUTS:
        path = repo / output
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    shutil.rmtree(repo / ".dvc" / "cache")
    assert "deleted" in run(["dvc", "status"], repo, env)
    run(["dvc", "pull"], repo, env)
    assert file_hashes(repo, CACHED_OUTPUTS) == produced
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo, env)
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], repo, env)
