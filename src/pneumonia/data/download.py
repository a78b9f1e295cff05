"""Download stage logic: fetch or open the dataset, normalise its layout, check every image.

The result is ``<images>/<split>/<CLASS>/<name>`` (hard links, else symbolic links, to the source
files; extracted files for a zip) and a manifest with one row per usable image.
"""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from pneumonia.config import Config, DownloadConfig
from pneumonia.data.layout import (
    Discovery,
    LayoutError,
    check_layout,
    discover,
    unexpected_entry,
)
from pneumonia.data.listing import Listing, extract_member, list_folder, list_zip
from pneumonia.data.listing import copy_limited as copy_limited  # re-exported: imported from here
from pneumonia.data.parallel import parallel_map
from pneumonia.data.patients import patient_key
from pneumonia.errors import PipelineError
from pneumonia.imaging.decode import ImageCheck, inspect_image
from pneumonia.protected import ensure_deletable

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


def list_files(source: Source, max_file_bytes: int) -> Listing:
    """Every regular file of the source that may be taken, and what was skipped and why."""
    if source.kind == "zip":
        return list_zip(source.location, max_file_bytes)
    return list_folder(source.location, max_file_bytes)


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


def clear_images(images_dir: Path, project_root: Path) -> None:
    """Remove the previous layout at `images_dir`, only once it is shown to be one.

    load_config already refuses a `paths.images` that is or holds a protected folder; this checks
    again, on the folder as it is now, right before deleting: whatever it holds must be what
    `materialize` lays out (protected.ensure_deletable). A link there is removed, never followed.
    """
    if images_dir.is_symlink():
        images_dir.unlink()
    elif images_dir.exists():
        ensure_deletable(images_dir, project_root, "paths.images", unexpected_entry)
        shutil.rmtree(images_dir)


def materialize(
    discovery: Discovery,
    source: Source,
    listing: Listing,
    images_dir: Path,
    max_file_bytes: int,
    project_root: Path,
) -> Counter:
    """Lay the chosen images out as <images_dir>/<split>/<CLASS>/<name>; returns how, per method.

    A zip member that extraction skips is counted in `discovery.skipped` and dropped from it."""
    clear_images(images_dir, project_root)
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
    max_file_bytes = config.preprocess.limits.max_file_bytes
    listing = list_files(source, max_file_bytes)
    discovery = discover(listing.files)
    for reason, path in listing.skips:
        discovery.skip(reason, path)
    check_layout(discovery, source.description)
    images_dir = config.paths.images
    methods = materialize(discovery, source, listing, images_dir, max_file_bytes, config.workspace)
    paths = [images_dir / image.relative_path for image in discovery.images]
    inspect = partial(
        inspect_image,
        max_pixels=config.preprocess.limits.max_pixels,
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
