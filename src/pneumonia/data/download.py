"""Download stage logic: fetch or open the dataset, normalise its layout, check every image.

The result is ``<images>/<split>/<CLASS>/<name>`` (hard links, else symbolic links, to the source
files; extracted files for a zip) and a manifest with one row per usable image.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
import time
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, BinaryIO

import pandas as pd

from pneumonia.config import Config, DownloadConfig
from pneumonia.data.layout import Discovery, LayoutError, check_layout, discover
from pneumonia.data.parallel import parallel_map
from pneumonia.data.patients import patient_key
from pneumonia.errors import PipelineError
from pneumonia.imaging.decode import ImageCheck, inspect_image

MANIFEST_COLUMNS = (
    "path",
    "label",
    "source_split",
    "patient_id",
    "sha256",
    "width",
    "height",
    "mode",
)


class DownloadError(PipelineError, RuntimeError):
    """The dataset could not be fetched or opened; the message says what to do."""


@dataclass(frozen=True)
class Source:
    kind: str  # folder | zip | kaggle
    location: Path  # a folder, or a zip file
    description: str  # for messages: where it really is on this machine
    # For reports: the source as params.yaml gives it, so a committed report names no path of
    # the machine that ran it.
    name: str


@dataclass
class DownloadResult:
    manifest: pd.DataFrame
    quality: dict[str, Any]
    summary: dict[str, float]


def fetch_from_kaggle(handle: str) -> Path:
    """The Kaggle boundary: kagglehub downloads (or reuses its cache) and extracts the dataset."""
    import kagglehub

    try:
        return Path(kagglehub.dataset_download(handle))
    except Exception as error:  # network, HTTP and auth errors all end the same way for users
        raise DownloadError(
            f"could not download '{handle}' from Kaggle ({type(error).__name__}: {error}). "
            "Without network access, use a local copy of the dataset (a folder or the .zip from "
            "https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia): "
            "dvc exp run -S download.source=/path/to/chest_xray, or set download.source in "
            "params.yaml."
        ) from error


def resolve_source(config: Config) -> Source:
    settings: DownloadConfig = config.download
    if settings.is_kaggle:
        location = fetch_from_kaggle(settings.kaggle_handle)
        return Source(
            "kaggle",
            location,
            f"Kaggle dataset {settings.kaggle_handle} at {location}",
            f"kaggle:{settings.kaggle_handle}",
        )
    location = config.source_path()
    if location.is_dir():
        return Source("folder", location, str(location), settings.source)
    if location.is_file():
        if not zipfile.is_zipfile(location):
            raise DownloadError(
                f"download.source={settings.source!r}: {location} is a file but not a zip archive; "
                "give a folder or a .zip in the Kaggle layout"
            )
        return Source("zip", location, str(location), settings.source)
    raise DownloadError(
        f"download.source={settings.source!r}: {location} does not exist. Give 'kaggle' or the "
        "path of a local folder or .zip in the Kaggle layout (relative paths are relative to the "
        f"project root {config.project_root})."
    )


# Reasons a file of the source is never taken, counted in data_quality.json's `skipped`.
LINK_OUTSIDE_SOURCE = "link_outside_source"  # a link whose target resolves outside the source
LINK_LOOP = "link_loop"  # a link to a folder that holds it, or a chain of links that never ends
LINK_DUPLICATE = "link_duplicate"  # a second link to a folder already walked through a link
LINK_BROKEN = "link_broken"  # a link whose target does not exist
NOT_REGULAR_FILE = "not_regular_file"  # a pipe, socket or device: reading one could block
UNREADABLE_FOLDER = "unreadable_folder"
UNREADABLE_FILE = "unreadable_file"
TOO_LARGE = "too_large"  # over preprocess.max_file_bytes, declared or while extracting
ZIP_ABSOLUTE_NAME = "zip_absolute_name"
ZIP_PARENT_NAME = "zip_parent_name"  # a `..` component: extracting it could write elsewhere
ZIP_BACKSLASH_NAME = "zip_backslash_name"  # Windows separators: read differently by other tools
ZIP_OUTSIDE_SOURCE = "zip_outside_source"  # a name that normalises to nothing or outside
ZIP_DUPLICATE_NAME = "zip_duplicate_name"  # a second member with the same normalised name
ZIP_LINK = "zip_link"  # a member stored as a symbolic link
ZIP_CORRUPT_MEMBER = "zip_corrupt_member"  # a member that fails to decompress or its CRC check
_COPY_CHUNK = 1 << 20


@dataclass
class Listing:
    """The files a source offers, as relative '/'-separated paths, and what was left out."""

    files: list[str] = field(default_factory=list)
    skips: list[tuple[str, str]] = field(default_factory=list)  # (reason, relative path)
    members: dict[str, zipfile.ZipInfo] = field(default_factory=dict)  # zip: path -> member
    # folder: path -> the file it resolves to, checked to be inside the source. Links are made to
    # it, not to the path: a hard link to a relative symbolic link would dangle elsewhere.
    targets: dict[str, Path] = field(default_factory=dict)

    def skip(self, reason: str, path: str) -> None:
        self.skips.append((reason, path))


def _resolve_link(path: Path) -> Path | str:
    """The link's final target, or the reason it has none (a loop, a missing target)."""
    try:
        return path.resolve(strict=True)
    except RuntimeError:  # Python before 3.13 reports a chain of links that never ends so
        return LINK_LOOP
    except OSError as error:
        return LINK_LOOP if error.errno == errno.ELOOP else LINK_BROKEN


def _list_folder(location: Path, max_file_bytes: int) -> Listing:
    """Walk the folder without leaving it: a link is used only when its target resolves inside
    the source (a dataset copy may be made of links), and a folder is entered through links at
    most once, so loops and chains of links end and the work stays bounded by the folders the
    source really holds."""
    listing = Listing()
    root = location.resolve()
    entered: set[Path] = {root}  # resolved folders walked as the root or through a link
    # (relative path of a folder, resolved folders from the root down to it); a folder is read at
    # its resolved path, so a link swapped during the walk cannot lead it elsewhere.
    pending: list[tuple[PurePosixPath, tuple[Path, ...]]] = [(PurePosixPath(), (root,))]
    while pending:
        relative, chain = pending.pop()
        try:
            with os.scandir(chain[-1]) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError:
            listing.skip(UNREADABLE_FOLDER, relative.as_posix())
            continue
        folders = []
        for entry in entries:
            name = (relative / entry.name).as_posix()
            target = chain[-1] / entry.name  # already resolved, as every folder of the chain is
            if entry.is_symlink():
                resolved = _resolve_link(target)
                if isinstance(resolved, str):
                    listing.skip(resolved, name)
                    continue
                if resolved != root and root not in resolved.parents:
                    listing.skip(LINK_OUTSIDE_SOURCE, name)
                    continue
                target = resolved
                if target.is_dir():
                    if target in chain:
                        listing.skip(LINK_LOOP, name)
                    elif target in entered:
                        listing.skip(LINK_DUPLICATE, name)
                    else:
                        entered.add(target)
                        folders.append((relative / entry.name, (*chain, target)))
                    continue
            elif entry.is_dir(follow_symlinks=False):
                folders.append((relative / entry.name, (*chain, target)))
                continue
            try:
                status = target.stat()
            except OSError:  # gone since the folder was read
                listing.skip(UNREADABLE_FILE, name)
                continue
            if not stat.S_ISREG(status.st_mode):
                listing.skip(NOT_REGULAR_FILE, name)
            elif status.st_size > max_file_bytes:
                listing.skip(TOO_LARGE, name)
            else:
                listing.files.append(name)
                listing.targets[name] = target
        pending.extend(reversed(folders))  # depth first, in name order
    return listing


def unsafe_member_reason(name: str) -> str | None:
    """Why a zip member's name must not be extracted, or None when it is a plain relative path."""
    if "\\" in name:
        return ZIP_BACKSLASH_NAME
    if name.startswith("/") or PureWindowsPath(name).drive:
        return ZIP_ABSOLUTE_NAME
    if ".." in name.split("/"):
        return ZIP_PARENT_NAME
    normal = posixpath.normpath(name)
    if normal in (".", "") or normal.startswith(("/", "../")):
        return ZIP_OUTSIDE_SOURCE
    return None


def _list_zip(location: Path, max_file_bytes: int) -> Listing:
    """The archive's members by their normalised names; unsafe or oversized ones are skipped."""
    listing = Listing()
    with zipfile.ZipFile(location) as archive:
        for member in archive.infolist():
            if member.is_dir():
                continue
            reason = unsafe_member_reason(member.filename)
            name = member.filename if reason else posixpath.normpath(member.filename)
            if reason is None and name in listing.members:
                reason = ZIP_DUPLICATE_NAME
            if reason is None and stat.S_ISLNK(member.external_attr >> 16):
                reason = ZIP_LINK
            if reason is None and member.file_size > max_file_bytes:
                reason = TOO_LARGE  # as declared; extraction counts the bytes again
            if reason:
                listing.skip(reason, name)
                continue
            listing.members[name] = member
            listing.files.append(name)
    return listing


def list_files(source: Source, max_file_bytes: int) -> Listing:
    """Every regular file of the source that may be taken, and what was skipped and why."""
    if source.kind == "zip":
        return _list_zip(source.location, max_file_bytes)
    return _list_folder(source.location, max_file_bytes)


def copy_limited(reader: BinaryIO, writer: BinaryIO, max_bytes: int) -> bool:
    """Copy until the end, or stop once more than `max_bytes` came; never writes more than
    `max_bytes` nor holds more than one chunk. True when everything was copied."""
    written = 0
    while chunk := reader.read(min(_COPY_CHUNK, max_bytes + 1 - written)):
        written += len(chunk)
        if written > max_bytes:
            return False
        writer.write(chunk)
    return True


def extract_member(
    archive: zipfile.ZipFile, member: zipfile.ZipInfo, destination: Path, max_file_bytes: int
) -> str | None:
    """Extract one member to `destination`; returns None, or the skip reason with nothing left
    behind. The declared size is checked first but not trusted: the bytes are counted as they
    come, so a zip bomb stops at the limit, not when the disk or memory runs out."""
    if member.file_size > max_file_bytes:
        return TOO_LARGE
    try:
        with archive.open(member) as reader, open(destination, "wb") as writer:
            complete = copy_limited(reader, writer, max_file_bytes)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError):
        # a CRC mismatch, a corrupt stream, an unsupported compression, an encrypted member
        destination.unlink(missing_ok=True)
        return ZIP_CORRUPT_MEMBER
    if not complete:
        destination.unlink()
        return TOO_LARGE
    return None


def _link(source: Path, destination: Path) -> str:
    try:
        os.link(source, destination)
        return "hardlink"
    except OSError:  # another filesystem, or links not permitted there
        pass
    try:
        destination.symlink_to(source.resolve())
        return "symlink"
    except OSError:
        shutil.copyfile(source, destination)
        return "copy"


def materialize(
    discovery: Discovery, source: Source, listing: Listing, images_dir: Path, max_file_bytes: int
) -> Counter:
    """Lay the chosen images out as <images_dir>/<split>/<CLASS>/<name>; returns how, per method.

    A zip member that extraction skips is counted in `discovery.skipped` and dropped from it."""
    # load_config keeps images_dir inside the project; a link there is removed, never followed.
    if images_dir.is_symlink() or images_dir.is_file():
        images_dir.unlink()
    elif images_dir.exists():
        shutil.rmtree(images_dir)
    methods: Counter = Counter()
    for directory in {Path(image.relative_path).parent for image in discovery.images}:
        (images_dir / directory).mkdir(parents=True, exist_ok=True)
    if source.kind == "zip":
        kept = []
        with zipfile.ZipFile(source.location) as archive:
            for image in discovery.images:
                member = listing.members[image.source]
                destination = images_dir / image.relative_path
                reason = extract_member(archive, member, destination, max_file_bytes)
                if reason:
                    discovery.skip(reason, image.source)
                    continue
                kept.append(image)
                methods["extract"] += 1
        discovery.images = kept
        return methods
    for image in discovery.images:
        target = listing.targets[image.source]
        methods[_link(target, images_dir / image.relative_path)] += 1
    return methods


def build_manifest(discovery: Discovery, checks: list[ImageCheck]) -> tuple[pd.DataFrame, list]:
    """Manifest rows for the images that decoded, and (path, reason) for those that did not."""
    rows, bad = [], []
    for image, check in zip(discovery.images, checks, strict=True):
        if not check.ok:
            bad.append(
                {"path": image.relative_path, "source": image.source, "reason": check.reason}
            )
            continue
        key, _ = patient_key(image.source_split, image.name)
        rows.append(
            {
                "path": image.relative_path,
                "label": image.label,
                "source_split": image.source_split,
                "patient_id": key,
                "sha256": check.sha256,
                "width": check.width,
                "height": check.height,
                "mode": check.mode,
            }
        )
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    return manifest.sort_values("path", ignore_index=True), bad


def usable_discovery(discovery: Discovery, manifest: pd.DataFrame) -> Discovery:
    usable = set(manifest["path"])
    return Discovery(
        images=[image for image in discovery.images if image.relative_path in usable],
        roots=discovery.roots,
    )


def quality_report(
    source: Source,
    files_seen: int,
    discovery: Discovery,
    manifest: pd.DataFrame,
    bad: list[dict[str, str]],
    methods: Counter,
    trailing: dict[str, Any],
) -> dict[str, Any]:
    duplicated = manifest[manifest.duplicated("sha256", keep=False)]
    unparsed = manifest[manifest["patient_id"].str.contains(":file:", regex=False)]
    return {
        "source": source.name,
        "source_kind": source.kind,
        "files_seen": files_seen,
        "dataset_trees": discovery.roots,
        "images_found": len(discovery.images),
        "images_usable": len(manifest),
        "bad_files": bad,
        "skipped": dict(sorted(discovery.skipped.items())),
        "skipped_examples": discovery.skipped_examples,
        "byte_identical": {
            "groups": int(duplicated["sha256"].nunique()),
            "images": len(duplicated),
            "note": "kept; the split stage keeps each group in one split",
        },
        "unparsed_patient_ids": sorted(unparsed["path"]),
        "trailing_data": trailing,
        "counts": usable_discovery(discovery, manifest).counts(),
        "materialized": dict(sorted(methods.items())),
    }


def summarize(quality: dict[str, Any], seconds: float) -> dict[str, float]:
    """Flat numbers for DVC metrics and MLflow."""
    summary: dict[str, float] = {
        "files_seen": quality["files_seen"],
        "images_found": quality["images_found"],
        "images_usable": quality["images_usable"],
        "bad_files": len(quality["bad_files"]),
        "byte_identical_images": quality["byte_identical"]["images"],
        "unparsed_patient_ids": len(quality["unparsed_patient_ids"]),
        "trailing_data_images": quality["trailing_data"]["images"],
        "seconds": round(seconds, 3),
        "images_per_second": round(quality["images_found"] / seconds, 1) if seconds > 0 else 0.0,
    }
    for reason, count in quality["skipped"].items():
        summary[f"skipped_{reason}"] = count
    for split, labels in quality["counts"].items():
        for label, count in labels.items():
            summary[f"images_{split}_{label}"] = count
    return summary


def trailing_data_report(
    discovery: Discovery, checks: list[ImageCheck], keep: int = 20
) -> dict[str, Any]:
    """Usable images with bytes after their end (JPEG EOI, PNG IEND): kept, since the pixels
    decode, but reported, since the extra bytes are not part of the picture."""
    found = [
        {"path": image.relative_path, "bytes": check.trailing_bytes}
        for image, check in zip(discovery.images, checks, strict=True)
        if check.ok and check.trailing_bytes
    ]
    return {
        "images": len(found),
        "bytes": sum(entry["bytes"] for entry in found),
        "examples": sorted(found, key=lambda entry: (-entry["bytes"], entry["path"]))[:keep],
        "note": "kept; bytes after the JPEG end marker or the PNG IEND chunk",
    }


def run_download(config: Config) -> DownloadResult:
    """Resolve the source, lay out and check every image, and build the manifest."""
    started = time.perf_counter()
    source = resolve_source(config)
    max_file_bytes = config.preprocess.max_file_bytes
    listing = list_files(source, max_file_bytes)
    discovery = discover(listing.files)
    for reason, path in listing.skips:
        discovery.skip(reason, path)
    check_layout(discovery, source.description)
    images_dir = config.paths.images
    methods = materialize(discovery, source, listing, images_dir, max_file_bytes)
    paths = [images_dir / image.relative_path for image in discovery.images]
    inspect = partial(
        inspect_image,
        max_pixels=config.preprocess.max_pixels,
        max_file_bytes=max_file_bytes,
    )
    checks = list(parallel_map(inspect, paths, config.download.workers))
    manifest, bad = build_manifest(discovery, checks)
    for entry in bad:  # excluded from the layout too, so no later stage can pick them up
        (images_dir / entry["path"]).unlink()
    if manifest.empty:
        raise LayoutError(
            f"{source.description}: none of the {len(discovery.images)} images could be decoded; "
            f"first failures: {bad[:3]}"
        )
    check_layout(usable_discovery(discovery, manifest), f"{source.description} (usable images)")
    files_seen = len(listing.files) + len(listing.skips)
    trailing = trailing_data_report(discovery, checks)
    quality = quality_report(source, files_seen, discovery, manifest, bad, methods, trailing)
    return DownloadResult(manifest, quality, summarize(quality, time.perf_counter() - started))
