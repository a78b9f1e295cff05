"""What a dataset source offers: its files, walked without leaving the source (a folder, links
followed only inside it) or listed from a zip by safe names, and a zip member extracted within
the size limit; every file left out is counted with its reason."""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

# Reasons a file of the source is never taken, counted in data_quality.json's `skipped`.
LINK_OUTSIDE_SOURCE = "link_outside_source"  # a link whose target resolves outside the source
LINK_LOOP = "link_loop"  # a link to a folder that holds it, or a chain of links that never ends
LINK_DUPLICATE = "link_duplicate"  # a second link to a folder already walked through a link
LINK_BROKEN = "link_broken"  # a link whose target does not exist
NOT_REGULAR_FILE = "not_regular_file"  # a pipe, socket or device: reading one could block
UNREADABLE_FOLDER = "unreadable_folder"
UNREADABLE_FILE = "unreadable_file"
TOO_LARGE = "too_large"  # over preprocess.limits.max_file_bytes, declared or while extracting
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


def list_folder(location: Path, max_file_bytes: int) -> Listing:
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


def list_zip(location: Path, max_file_bytes: int) -> Listing:
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
