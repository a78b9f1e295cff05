"""The schema version every JSON record of contracts/ carries, and the one way an older file is
read: each record module defines SCHEMA_VERSION and one `upgrade(raw) -> dict` that turns a file
of the previous version into the current one (version 0 is a file written before the key
existed, with no `schema_version`). A file newer than this code is refused, naming the file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from pneumonia.errors import PipelineError

RecordT = TypeVar("RecordT", bound=BaseModel)

SCHEMA_VERSION_KEY = "schema_version"
# What a file written before records were versioned is read as.
UNVERSIONED = 0


def current_form(
    raw: dict[str, Any],
    path: Path | str,
    *,
    current: int,
    upgrade: Callable[[dict[str, Any]], dict[str, Any]],
    error: type[PipelineError],
) -> dict[str, Any]:
    """`raw` (a record as read from `path`) in the current schema: upgraded one version at a
    time by `upgrade` when older, refused with `error` when newer or not a version number."""
    version = raw.get(SCHEMA_VERSION_KEY, UNVERSIONED)
    if isinstance(version, bool) or not isinstance(version, int) or version < UNVERSIONED:
        raise error(
            f"{path}: {SCHEMA_VERSION_KEY} is {version!r}, not a version number; re-create the "
            "file with the stage that writes it"
        )
    if version > current:
        raise error(
            f"{path}: {SCHEMA_VERSION_KEY} {version} is newer than this code reads (up to "
            f"{current}); update the pneumonia package, or re-create the file with this one"
        )
    while version < current:
        raw = upgrade(raw)
        version = raw[SCHEMA_VERSION_KEY]
    return raw


def validated(
    record: type[RecordT],
    raw: dict[str, Any],
    path: Path | str,
    error: type[PipelineError],
    fix: str,
) -> RecordT:
    """`raw` as the typed `record`; a value of the wrong type is `error` in one line naming the
    file, the key and `fix`."""
    try:
        return record.model_validate(raw)
    except ValidationError as problem:
        first = problem.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the record"
        raise error(f"{path}: {where}: {first['msg']}; {fix}") from None
