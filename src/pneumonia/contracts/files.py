"""Small file helpers shared by the stages."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from pneumonia.errors import PipelineError


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, data: Any) -> None:
    """Stable, diff-friendly JSON (sorted keys), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_csv(path: Path, stage: str) -> pd.DataFrame:
    """Read an upstream stage's table; a missing file names the stage that makes it."""
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run the {stage} stage first (dvc repro)")
    return pd.read_csv(path)


def read_json_object(
    path: Path, error: type[PipelineError], missing: str, fix: str
) -> dict[str, Any]:
    """A JSON object written by a stage; `missing` says what to do when the file is absent, `fix`
    when it is not a JSON object. Raises `error`, naming the file."""
    if not path.is_file():
        raise error(f"{path}: not found; {missing}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as problem:
        raise error(f"{path}: not valid JSON ({problem}); {fix}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object; {fix}")
    return data
