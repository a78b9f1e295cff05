"""Small file helpers shared by the stages.

Every file a stage writes goes through `replacing`: it is written under a temporary name beside
its destination and renamed over it once complete, so a full disk, a read-only folder or a kill
never leaves a truncated file where a later stage (or DVC) would take it for an output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from pneumonia.errors import PipelineError

# Marks a file still being written (see partial_path).
PARTIAL_MARKER = ".partial"


def partial_path(path: Path) -> Path:
    """Where `path` is written before it is complete: hidden, beside it (same filesystem, so the
    rename is atomic), per process, and with the same suffix (tools that pick a format from it
    still do): `train/.images.1234.partial.npy`."""
    return path.with_name(f".{path.stem}.{os.getpid()}{PARTIAL_MARKER}{path.suffix}")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s new content to; once the block succeeds it is
    renamed over `path`. If the block fails the temporary file is removed and `path` is left as
    it was. An OSError that names no file (a write to an open handle) or the temporary one is
    raised again naming `path`, so the message points at the file the user knows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        yield partial
        os.replace(partial, path)
    except BaseException as error:
        with contextlib.suppress(OSError):  # a read-only folder may refuse this too
            partial.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None:
            named = os.fsdecode(error.filename) if error.filename else None
            if named is None or Path(named) == partial:
                raise OSError(error.errno, error.strerror, str(path)) from error
        raise


def write_text(path: Path, text: str) -> None:
    """A text file, written whole or not at all (replacing)."""
    with replacing(path) as partial:
        partial.write_text(text)


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """A table without its index, written whole or not at all (replacing)."""
    with replacing(path) as partial:
        frame.to_csv(partial, index=False)


def check_writable(folders: Iterable[Path]) -> None:
    """Create each folder and a file in it, then remove the file: a read-only or unwritable
    output folder fails the stage in its first second (an OSError naming the folder, which
    errors.run_stage reports in one line), not after its work."""
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        probe = partial_path(folder / "write-check")
        try:
            probe.touch()
        except OSError as error:
            raise OSError(error.errno, error.strerror, str(folder)) from error
        probe.unlink()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, data: Any) -> None:
    """Stable, diff-friendly JSON (sorted keys), creating the folder; written whole or not at
    all (replacing)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


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
