"""Provenance of a stage run: content hashes of its inputs and outputs, the git state, and the run's
name (`<stage>@<DVC experiment or commit>`)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from pneumonia.contracts.files import file_sha256

# DVC sets these for stage commands run by `dvc exp run`; logged so runs map to experiments.
DVC_ENVIRONMENT_TAGS = ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE")
# Run names are `<stage>@<label>`: the DVC experiment, else the commit, else this.
NO_GIT_LABEL = "workspace"


def content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's sorted (relative path, file sha256) list."""
    if path.is_file():
        return file_sha256(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{child.relative_to(path).as_posix()}\0{content_hash(child)}\n".encode())
        return digest.hexdigest()
    raise FileNotFoundError(f"{path}: not found; run the upstream stage first (dvc repro)")


def git_state(workspace: Path) -> dict[str, str]:
    """Commit and dirty flag of the workspace; empty values outside a git repository."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=workspace, capture_output=True, text=True, check=False
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit or "unknown", "git_dirty": str(bool(dirty)).lower()}


def run_label(workspace: Path, environ: Mapping[str, str] | None = None) -> str:
    """What tells this pipeline execution from others: the DVC experiment's name under
    `dvc exp run` (DVC sets DVC_EXP_NAME for the stage commands), else the short git commit
    (`dvc repro`, a stage run directly), else `workspace` outside git."""
    environ = os.environ if environ is None else environ
    if environ.get("DVC_EXP_NAME"):
        return environ["DVC_EXP_NAME"]
    commit = git_state(workspace)["git_commit"]
    return commit[:7] if commit != "unknown" else NO_GIT_LABEL


def run_name(stage: str, workspace: Path, environ: Mapping[str, str] | None = None) -> str:
    """`train@q7-depth5` in a DVC experiment, `train@c1093cb` at a commit: the MLflow run's
    name, and the prefix of a fresh Optuna study's name."""
    return f"{stage}@{run_label(workspace, environ)}"
