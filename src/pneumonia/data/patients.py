"""Patient identifiers parsed from the dataset's file names.

Patient numbering restarts in the official test split (person1 in train/ and person1 in test/
are different children), while the upstream val/ continues the train numbering. A patient key is
therefore scoped to its numbering group: ``trainval`` or ``test``.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

# NORMAL and NORMAL2 are different series, so the series prefix is part of the id.
_PATTERNS = (
    re.compile(r"^(?P<series>person)(?P<id>\d+)_(?:bacteria|virus)_\d+(?:_\d+)*$", re.IGNORECASE),
    re.compile(r"^(?P<series>NORMAL2-IM-)(?P<id>\d+)-\d+(?:-\d+)*$", re.IGNORECASE),
    re.compile(r"^(?P<series>IM-)(?P<id>\d+)-\d+(?:-\d+)*$", re.IGNORECASE),
)
_CANONICAL_SERIES = {"person": "person", "normal2-im-": "NORMAL2-IM-", "im-": "IM-"}
UNPARSED_PREFIX = "file:"


def parse_patient_id(filename: str) -> str | None:
    """`person1000_bacteria_2931.jpeg` -> `person1000`; None when the name follows no known scheme.

    Leading zeros are dropped so `IM-0115` and `IM-115` name the same patient.
    """
    stem = PurePosixPath(filename).stem
    for pattern in _PATTERNS:
        match = pattern.match(stem)
        if match:
            return f"{_CANONICAL_SERIES[match['series'].lower()]}{int(match['id'])}"
    return None


def numbering_group(source_split: str) -> str:
    return "test" if source_split == "test" else "trainval"


def patient_key(source_split: str, filename: str) -> tuple[str, bool]:
    """The patient key used for grouping, and whether it was parsed from the name.

    A name that follows no known scheme becomes a patient of its own (reported, never dropped).
    """
    parsed = parse_patient_id(filename)
    group = numbering_group(source_split)
    if parsed is None:
        return f"{group}:{UNPARSED_PREFIX}{PurePosixPath(filename).stem}", False
    return f"{group}:{parsed}", True
