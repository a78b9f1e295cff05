"""The base class of the errors a user can fix, and how entry points report them.

A filesystem fault (a full disk, a read-only folder, no permission) is one of those too: the
user fixes it by freeing space or pointing a `paths` entry elsewhere, so an entry point reports
it as one line naming the file and the cause, not as a traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path


class PipelineError(Exception):
    """Bad input or params: the message names the file, the param or the fix."""


class StorageError(PipelineError):
    """A file cannot be written: its disk is full, its folder read-only or not writable."""


# What the user reads for each fault, and what fixes it.
STORAGE_FAULTS = {
    errno.ENOSPC: ("no space left on device", "free space there"),
    errno.EDQUOT: ("disk quota exceeded", "free space there or raise the quota"),
    errno.EFBIG: ("file too large for its filesystem", "use a filesystem that holds it"),
    errno.EROFS: ("read-only file system", "remount it read-write"),
    errno.EACCES: ("permission denied", "make it writable by this user"),
    errno.EPERM: ("operation not permitted", "make it writable by this user"),
}
# Faults where the free space says how far off the user is.
SPACE_FAULTS = (errno.ENOSPC, errno.EDQUOT)
# Faults that are the filesystem's whatever raised them, so worth one line even when the error
# names no file (a write to an open handle). EACCES and EPERM are not: they also come from
# signals, sockets and the like.
FILESYSTEM_ONLY_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def format_bytes(count: int) -> str:
    """1234567 -> '1.2 MB' (decimal units, as `df -H` and file managers show them)."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            text = f"{value:.0f}" if unit == "B" or value >= 100 else f"{value:.1f}"
            return f"{text.removesuffix('.0')} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def free_bytes(path: Path | str) -> int | None:
    """Bytes this user may still write on the filesystem holding `path` (or its nearest existing
    folder); None when that cannot be read."""
    candidate = Path(path).absolute()
    for folder in (candidate, *candidate.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def _display(path: Path | str) -> str:
    """The path relative to the working folder (the project, for a stage) when it is inside."""
    absolute = Path(path).absolute()
    try:
        return absolute.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(absolute)


# Each `paths.<key>` of the params file loaded last, as config resolved it, so a fault under one
# names the key to change. config fills it (remember_paths): it imports this module, so this
# module cannot ask it.
_PATHS_BY_KEY: dict[str, Path] = {}


def remember_paths(paths: Mapping[str, Path]) -> None:
    """Record the `paths` section (key -> resolved path) that fault messages name keys from."""
    _PATHS_BY_KEY.clear()
    _PATHS_BY_KEY.update({f"paths.{key}": Path(value) for key, value in paths.items()})


def _paths_key(path: Path | str) -> str | None:
    """Which `paths.<key>` holds `path` (the deepest one), if any."""
    target = Path(path).absolute().resolve()
    best: tuple[int, str] | None = None
    for key, value in _PATHS_BY_KEY.items():
        folder = value.absolute().resolve()
        if (target == folder or folder in target.parents) and (
            best is None or len(folder.parts) > best[0]
        ):
            best = (len(folder.parts), key)
    return None if best is None else best[1]


def storage_message(
    path: Path | str, code: int, needed: int | None = None, key: str | None = None
) -> str:
    """`data/processed/train/images.npy: no space left on device (needs 12.3 MB, 70 KB free);
    free space there or point paths.processed elsewhere`. `key` names the params entry (found
    from ./params.yaml when not given)."""
    cause, fix = STORAGE_FAULTS.get(code, (os.strerror(code).lower(), "check that filesystem"))
    detail = []
    if code in SPACE_FAULTS:
        if needed is not None:
            detail.append(f"needs {format_bytes(needed)}")
        free = free_bytes(path)
        if free is not None:
            detail.append(f"{format_bytes(free)} free")
    details = f" ({', '.join(detail)})" if detail else ""
    key = key or _paths_key(path)
    where = f"point {key} in params.yaml elsewhere" if key else "write the outputs elsewhere"
    return f"{_display(path)}: {cause}{details}; {fix} or {where}"


def storage_error(error: OSError) -> StorageError | None:
    """The StorageError an OSError stands for, or None when it is no filesystem fault of the
    user's (then its traceback is what helps)."""
    if error.errno not in STORAGE_FAULTS:
        return None
    if error.filename:
        return StorageError(storage_message(os.fsdecode(error.filename), error.errno))
    if error.errno in FILESYSTEM_ONLY_FAULTS:
        cause, _ = STORAGE_FAULTS[error.errno]
        return StorageError(
            f"{cause} while writing a file the error does not name (its traceback is on the "
            "stage's MLflow run); check the disks that hold the `paths` of params.yaml"
        )
    return None


def run_stage(main: Callable[[], None]) -> None:
    """Run an entry point; a user-fixable error (a filesystem fault included) prints one clear
    line and exits 2, not a traceback. The stage's MLflow run (tracking.stage_run, inside
    `main`) has already been marked FAILED as the error left it."""
    try:
        main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        problem = storage_error(error)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
