"""Find the images of a Kaggle-layout dataset among the files of a folder or a zip archive.

The real Kaggle archive nests a duplicate tree (``chest_xray/chest_xray/``), carries ``__MACOSX/``
AppleDouble files and ``.DS_Store`` files, and mixes extension case. Discovery works on plain
relative POSIX paths, so the same pure function serves folders and zip archives.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pneumonia.contracts.image_files import IMAGE_SUFFIXES
from pneumonia.contracts.labels import CLASSES
from pneumonia.errors import PipelineError

# The dataset's images are found by suffix (the layout works on paths, also inside a zip).
IMAGE_EXTENSIONS = IMAGE_SUFFIXES
SOURCE_SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "test")
_SYSTEM_FILES = {".ds_store", "thumbs.db", "desktop.ini"}


class LayoutError(PipelineError, ValueError):
    """The source does not hold the Kaggle layout; the message says what was found."""


@dataclass(frozen=True)
class SourceImage:
    """One image of the source: where it is, and where it goes in the normalised layout."""

    source: str  # relative path inside the folder or archive
    source_split: str  # train | val | test
    label: str  # NORMAL | PNEUMONIA
    name: str  # file name

    @property
    def relative_path(self) -> str:
        """Path in the normalised layout: <split>/<CLASS>/<name>."""
        return f"{self.source_split}/{self.label}/{self.name}"


@dataclass
class Discovery:
    images: list[SourceImage]
    roots: list[str]  # dataset trees found, primary first ("" is the top level)
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, path: str, keep: int = 20) -> None:
        self.skipped[reason] += 1
        examples = self.skipped_examples.setdefault(reason, [])
        if len(examples) < keep:
            examples.append(path)

    def counts(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for image in self.images:
            table.setdefault(image.source_split, Counter())[image.label] += 1
        return {split: dict(sorted(c.items())) for split, c in sorted(table.items())}


def _system_reason(parts: tuple[str, ...]) -> str | None:
    if any(part == "__MACOSX" for part in parts):
        return "macos_metadata"
    name = parts[-1]
    if name.startswith("._"):
        return "macos_metadata"
    if name.lower() in _SYSTEM_FILES:
        return "system_file"
    if name.startswith("."):
        return "hidden_file"
    return None


def _locate(parts: tuple[str, ...]) -> tuple[str, str, str] | None:
    """(root, split, class) when the path ends in <split>/<CLASS>/<file>, else None."""
    if len(parts) < 3:
        return None
    split, label = parts[-3].lower(), parts[-2].upper()
    if split not in SOURCE_SPLITS or label not in CLASSES:
        return None
    return "/".join(parts[:-3]), split, label


def discover(paths: list[str]) -> Discovery:
    """Pick each image of the dataset exactly once out of `paths` (relative, '/'-separated).

    When several trees hold the layout (the archive's nested duplicate), the shallowest is the
    primary; an image another tree repeats under the same <split>/<CLASS>/<name> is counted once.
    """
    discovery = Discovery(images=[], roots=[])
    located: list[tuple[str, SourceImage]] = []
    for path in sorted(paths):
        parts = PurePosixPath(path).parts
        if not parts:
            continue
        reason = _system_reason(parts)
        if reason:
            discovery.skip(reason, path)
            continue
        place = _locate(parts)
        if place is None:
            discovery.skip("outside_layout", path)
            continue
        root, split, label = place
        if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
            discovery.skip("unsupported_extension", path)
            continue
        located.append((root, SourceImage(path, split, label, parts[-1])))

    roots = sorted({root for root, _ in located}, key=lambda r: (r.count("/") + bool(r), r))
    rank = {root: index for index, root in enumerate(roots)}
    chosen: dict[str, SourceImage] = {}
    for _, image in sorted(located, key=lambda item: (rank[item[0]], item[1].source)):
        key = image.relative_path.lower()
        if key in chosen:
            discovery.skip("duplicate_tree", image.source)
        else:
            chosen[key] = image
    discovery.images = sorted(chosen.values(), key=lambda image: image.relative_path)
    discovery.roots = roots
    return discovery


def check_layout(discovery: Discovery, source_description: str) -> None:
    """Fail with what was found when a required split or class is missing."""
    counts = discovery.counts()
    if not discovery.images:
        examples = discovery.skipped_examples.get("outside_layout", [])[:5]
        found = f" Files found include: {', '.join(examples)}." if examples else ""
        raise LayoutError(
            f"{source_description}: no images in the Kaggle layout "
            f"<train|val|test>/<NORMAL|PNEUMONIA>/<image.jpeg|jpg|png|dcm|dicom>.{found} "
            "Point download.source at the folder or .zip that holds train/ and test/ "
            "(for example: dvc exp run -S download.source=/path/to/chest_xray)."
        )
    missing = [
        f"{split}/{label}"
        for split in REQUIRED_SPLITS
        for label in CLASSES
        if counts.get(split, {}).get(label, 0) == 0
    ]
    if missing:
        found = ", ".join(
            f"{split}/{label}: {n}"
            for split, labels in counts.items()
            for label, n in labels.items()
        )
        raise LayoutError(
            f"{source_description}: missing {', '.join(missing)} (found {found}). The dataset "
            "needs train/ and test/, each with NORMAL/ and PNEUMONIA/ images; val/ is optional."
        )


def unexpected_entry(images_dir: Path) -> str | None:
    """The first entry of `images_dir` that the download stage would not have laid out there, as
    a path relative to it, else None. The stage lays out only <split>/<CLASS>/<image> (files or
    links, with an image extension); the operating system's own files (.DS_Store) are allowed."""
    expected = (set(SOURCE_SPLITS), set(CLASSES))
    pending: list[tuple[Path, int]] = [(images_dir, 0)]
    while pending:
        folder, level = pending.pop()
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as error:  # what cannot be read cannot be shown to be the layout
            relative = folder.relative_to(images_dir).as_posix()
            return f"{relative}/ (unreadable: {error.strerror or error})"
        for entry in entries:
            relative = Path(entry.path).relative_to(images_dir).as_posix()
            if entry.name.lower() in _SYSTEM_FILES and not entry.is_dir(follow_symlinks=False):
                continue
            if level < 2:
                if entry.is_symlink() or not entry.is_dir() or entry.name not in expected[level]:
                    return f"{relative}{'/' if entry.is_dir() else ''}"
                pending.append((Path(entry.path), level + 1))
            elif entry.is_dir(follow_symlinks=False) or (
                PurePosixPath(entry.name).suffix.lower() not in IMAGE_EXTENSIONS
            ):
                return f"{relative}{'/' if entry.is_dir(follow_symlinks=False) else ''}"
    return None
