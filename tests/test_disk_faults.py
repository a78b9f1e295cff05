"""Full disks and read-only folders (issue 23, item 5), on real filesystems: small tmpfs mounts,
filled or remounted read-only. Every stage fails within seconds with one `error:` line naming
the file and the cause, exit 2, its MLflow run FAILED, and nothing half-written left behind.

Mounting needs root (or CAP_SYS_ADMIN); where it is refused the tests that need a mount skip,
saying so. chmod is no substitute: root ignores permission bits.
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumonia.config import project_paths
from pneumonia.contracts.arrays import load_split
from pneumonia.contracts.files import check_writable, write_csv, write_json
from pneumonia.data.parallel import WorkerDiedError, parallel_map
from pneumonia.data.preprocess import reserve_npy, run_preprocess
from pneumonia.errors import StorageError, run_stage

from helpers import PROJECT_ROOT, preprocess_config, write_image, write_params

CONFIG = preprocess_config(64)
# A stage's start-up (imports, the MLflow store) takes a few seconds on a loaded 2-core machine;
# before the fix a worker's SIGBUS hung preprocess until killed.
STAGE_TIMEOUT_SECONDS = 120


# --- Real filesystems ------------------------------------------------------------------------


def _mount(*arguments: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["mount", *arguments], capture_output=True, text=True, check=False)
    except FileNotFoundError as error:
        return subprocess.CompletedProcess(["mount"], 127, "", str(error))


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of `size` (mount's units: 64k, 1m) on `folder`, read-only if asked; unmounted on
    leaving, whatever happened."""
    folder.mkdir(parents=True, exist_ok=True)
    result = _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder))
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr}")
    try:
        if read_only:
            remount = _mount("-o", "remount,ro", str(folder))
            if remount.returncode != 0:
                pytest.skip(f"cannot remount a tmpfs read-only here: {remount.stderr}")
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def tmpfs() -> Iterator[Callable[..., Path]]:
    """mount(folder, size, read_only=False): mounts that are all undone after the test."""
    with contextlib.ExitStack() as mounts:
        yield lambda *arguments, **options: mounts.enter_context(
            mounted_tmpfs(*arguments, **options)
        )


def fill(folder: Path, leave: int) -> None:
    """Take all but about `leave` bytes of the filesystem holding `folder`."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with (folder / "filler").open("wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, max(0, free - leave))


def files_under(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail, instead of hanging the suite, when the block outlives `seconds`."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still waiting after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- Writes: reserved, whole or not at all ---------------------------------------------------


def test_reserved_npy_is_byte_identical_to_np_save(tmp_path):
    """The reserved file is the format np.save writes: outputs (and DVC's hashes) don't move."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 8, 8, 1), dtype=np.uint8)
    reserve_npy(tmp_path / "reserved.npy", pixels.shape, tmp_path / "images.npy")
    mapped = np.load(tmp_path / "reserved.npy", mmap_mode="r+")
    mapped[:] = pixels
    mapped.flush()
    del mapped
    np.save(tmp_path / "saved.npy", pixels, allow_pickle=False)
    assert (tmp_path / "reserved.npy").read_bytes() == (tmp_path / "saved.npy").read_bytes()


def test_a_full_disk_fails_the_reservation_not_a_worker(tmpfs, tmp_path):
    """Reserving an array that cannot fit is an error naming the file and both sizes, before a
    single page is written (on a sparse file it was a SIGBUS in the writer)."""
    disk = tmpfs(tmp_path / "disk", "64k")
    named = disk / "train" / "images.npy"
    named.parent.mkdir()
    with pytest.raises(StorageError) as caught:
        reserve_npy(disk / "train" / ".images.partial.npy", (40, 64, 64, 1), named)
    message = str(caught.value)
    assert message.startswith(f"{named}: no space left on device (needs 164 KB, ")
    assert " free); free space there" in message


def test_run_preprocess_refuses_outputs_that_cannot_fit_before_any_work(tmpfs, tmp_path):
    images_dir = tmp_path / "images"
    rows = []
    for position in range(30):
        label = "PNEUMONIA" if position % 2 else "NORMAL"
        write_image(images_dir / f"{label}/{position}.png", seed=position)
        rows.append(
            {"path": f"{label}/{position}.png", "label": label, "patient_id": f"p{position}"}
        )
    frame = pd.DataFrame(rows).assign(sha256=lambda table: table["path"])
    output = tmpfs(tmp_path / "processed", "100k")
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"processed: no space left on device \(needs 1\d\d KB"):
        run_preprocess({"train": frame[:20], "val": frame[20:]}, images_dir, output, CONFIG)
    assert time.monotonic() - started < 5
    assert files_under(output) == []


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmpfs, tmp_path):
    disk = tmpfs(tmp_path / "disk", "64k")
    target = disk / "val" / "index.csv"
    write_csv(target, pd.DataFrame({"path": ["old.png"]}))
    old = target.read_bytes()
    fill(disk, leave=8192)
    big = pd.DataFrame({"path": [f"{'x' * 90}-{row}.png" for row in range(600)]})  # ~57 KB
    with pytest.raises(OSError) as caught:
        write_csv(target, big)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert target.read_bytes() == old
    assert files_under(disk) == ["filler", "val", "val/index.csv"]


def test_a_read_only_folder_fails_the_write_check(tmpfs, tmp_path):
    reports = tmpfs(tmp_path / "reports", "64k", read_only=True)
    with pytest.raises(OSError) as caught:
        check_writable([reports / "samples"])
    assert caught.value.errno == errno.EROFS and caught.value.filename == str(reports / "samples")
    with pytest.raises(OSError) as caught:
        check_writable([reports])
    assert caught.value.errno == errno.EROFS and caught.value.filename == str(reports)
    check_writable([tmp_path / "writable" / "nested"])  # a writable folder passes, made
    assert files_under(tmp_path / "writable") == ["nested"]


# --- Workers: a dead one fails the map at once ----------------------------------------------


def _write_row(task: tuple[Path, int]) -> int:
    """Worker: write one row of a memory-mapped .npy."""
    path, row = task
    # pytest's faulthandler would print the expected SIGBUS's stack dump into the test log.
    faulthandler.disable()
    images = np.load(path, mmap_mode="r+")
    images[row] = 255
    images.flush()
    return row


def test_a_worker_killed_by_a_full_disk_fails_the_map_within_seconds(tmpfs, tmp_path):
    """A sparse map on a full tmpfs: the writing worker dies of SIGBUS (what preprocess did
    before it reserved its files). The map raises, naming the signal, instead of waiting
    forever for the dead worker's result."""
    disk = tmpfs(tmp_path / "disk", "64k")
    path = disk / "sparse.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(64, 4096))
    tasks = [(path, row) for row in range(64)]
    with deadline(60), pytest.raises(WorkerDiedError) as caught:
        list(parallel_map(_write_row, tasks, workers=2, chunksize=1, label="preprocess train"))
    assert str(caught.value).startswith("preprocess train: a worker process died (killed by ")
    assert "SIGBUS: a memory-mapped file could not be written" in str(caught.value)


def _fail_with_enospc(item: int) -> int:
    if item == 3:
        raise OSError(errno.ENOSPC, "No space left on device", f"/data/{item}.npy")
    return item


def test_a_worker_error_is_raised_as_itself():
    """What a worker raises reaches run_stage with its errno and file name."""
    with pytest.raises(OSError) as caught:
        list(parallel_map(_fail_with_enospc, range(8), workers=2, chunksize=1))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == "/data/3.npy"
    assert list(parallel_map(abs, [-1, -2, -3], workers=2, chunksize=1)) == [1, 2, 3]


# --- Entry points: one line, exit 2 ----------------------------------------------------------


def _raising(error: BaseException) -> Callable[[], None]:
    def main() -> None:
        raise error

    return main


def test_run_stage_reports_a_filesystem_fault_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    project_paths(write_params(tmp_path, {}))  # what names the key in the message
    target = tmp_path / "data" / "processed" / "val" / "index.csv"
    where = "point paths.processed in params.yaml elsewhere"
    for code, expected in (
        (errno.ENOSPC, r"no space left on device \(\d[\d.]* [KMGT]?B free\); free space there or"),
        (errno.EROFS, "read-only file system; remount it read-write or"),
        (errno.EACCES, "permission denied; make it writable by this user or"),
    ):
        with pytest.raises(SystemExit) as exit:
            run_stage(_raising(OSError(code, os.strerror(code), str(target))))
        assert exit.value.code == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert re.fullmatch(rf"error: data/processed/val/index\.csv: {expected} {where}", line)
    # A write to an open handle names no file: still one line, pointing at the run's traceback.
    with pytest.raises(SystemExit):
        run_stage(_raising(OSError(errno.ENOSPC, "No space left on device")))
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: no space left on device while writing a file the error does ")
    # Anything else keeps its traceback: it is not the user's disk.
    with pytest.raises(FileNotFoundError):
        run_stage(_raising(FileNotFoundError(errno.ENOENT, "No such file", "x.csv")))
    with pytest.raises(PermissionError):
        run_stage(_raising(PermissionError(errno.EPERM, "Operation not permitted")))


# --- The real stages, on real mounts (subprocesses: slow) ------------------------------------


def tiny_project(root: Path, workers: int) -> Path:
    """A project ready for the preprocess and split stages: params, the raw images, the split
    tables and the manifest."""
    write_params(
        root,
        {
            "preprocess.image.size": 64,
            "preprocess.workers": workers,
            "preprocess.sample_grid": 4,
        },
    )
    manifest = []
    for split, count in (("train", 40), ("val", 10), ("test", 10)):
        rows = []
        for position in range(count):
            label = "PNEUMONIA" if position % 2 else "NORMAL"
            relative = f"{split}/{label}/{position}.png"
            write_image(root / "data/raw/images" / relative, seed=position, size=(40, 36))
            rows.append(
                {
                    "path": relative,
                    "label": label,
                    "patient_id": f"{split}{position}",
                    "sha256": f"{split}{position}",
                }
            )
        table = pd.DataFrame(rows)
        write_csv(root / "data/split" / f"{split}.csv", table)
        source = "test" if split == "test" else "train"
        manifest.append(table.assign(source_split=source))
    write_csv(root / "data/raw/manifest.csv", pd.concat(manifest, ignore_index=True))
    return root


def run_stage_script(project: Path, stage: str) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "stages" / f"{stage}.py")],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=STAGE_TIMEOUT_SECONDS,
        check=False,
    )
    result.seconds = time.monotonic() - started  # type: ignore[attr-defined]
    return result


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without MLflow's own INFO lines (first-use database set-up)."""
    return [line for line in result.stderr.splitlines() if " INFO mlflow" not in line]


def assert_failed_in_one_line(result: subprocess.CompletedProcess[str], start: str) -> None:
    lines = error_lines(result)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {start}"), result.stderr


def stage_runs(stage: str) -> list[tuple[str, str]]:
    """(status, error tag) of the stage's runs in the test's own store (isolated_mlflow)."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("pneumonia")
    runs = client.search_runs([experiment.experiment_id], f"tags.stage = '{stage}'")
    return [(run.info.status, run.data.tags.get("error", "")) for run in runs]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_preprocess_stage_on_a_full_disk_fails_at_once(tmpfs, tmp_path, workers):
    """Before: 'Bus error' (rc 135, run left RUNNING) with one worker, a hang with several."""
    project = tiny_project(tmp_path / "project", workers)
    processed = tmpfs(project / "data" / "processed", "100k")
    result = run_stage_script(project, "preprocess")
    assert_failed_in_one_line(
        result, "data/processed: no space left on device (needs 2"
    )  # 60 images of 64x64
    assert "free); free space there or point paths.processed in params.yaml elsewhere" in (
        result.stderr
    )
    assert result.seconds < 60  # type: ignore[attr-defined]
    assert files_under(processed) == []  # no 0-byte index.csv, no partial array
    ((status, error),) = stage_runs("preprocess")
    assert status == "FAILED" and error.startswith("StorageError: data/processed: no space")


@pytest.mark.slow
def test_preprocess_stage_with_a_read_only_reports_folder_fails_first(tmpfs, tmp_path):
    """Before: the images were all processed, then a 17-line traceback."""
    project = tiny_project(tmp_path / "project", workers=1)
    tmpfs(project / "reports", "1m", read_only=True)
    result = run_stage_script(project, "preprocess")
    assert_failed_in_one_line(
        result,
        "reports/samples: read-only file system; remount it read-write or point paths.reports "
        "in params.yaml elsewhere",
    )
    assert files_under(project / "data" / "processed") == []  # failed before any work
    ((status, error),) = stage_runs("preprocess")
    assert status == "FAILED" and "Read-only file system" in error


@pytest.mark.slow
def test_split_stage_with_a_read_only_or_full_split_folder(tmpfs, tmp_path):
    project = tiny_project(tmp_path / "project", workers=1)
    split = project / "data" / "split"
    old_tables = {path.name: path.read_bytes() for path in split.iterdir()}
    write_json(project / "reports" / "split.json", {"old": True})
    with mounted_tmpfs(split, "64k", read_only=True):
        result = run_stage_script(project, "split")
    assert_failed_in_one_line(result, "data/split: read-only file system; remount it")
    # A full disk holding the previous tables: the new ones fail whole, the old ones stay.
    tmpfs(split, "32k")
    for name, content in old_tables.items():
        (split / name).write_bytes(content)
    fill(split, leave=0)
    result = run_stage_script(project, "split")
    assert_failed_in_one_line(result, "data/split/")
    assert "no space left on device" in result.stderr
    assert {name: (split / name).read_bytes() for name in old_tables} == old_tables
    assert files_under(split) == sorted(["filler", *old_tables])  # no half-written table
    assert (project / "reports" / "split.json").read_text() == '{\n  "old": true\n}\n'
    assert [status for status, _ in stage_runs("split")] == ["FAILED", "FAILED"]


@pytest.mark.slow
def test_preprocess_stage_still_writes_loadable_outputs(tmp_path):
    """The reserved, renamed files are what train reads, and no partial file is left."""
    project = tiny_project(tmp_path / "project", workers=2)
    result = run_stage_script(project, "preprocess")
    assert result.returncode == 0, result.stderr
    images, labels, index = load_split(project / "data" / "processed" / "val")
    assert images.shape == (10, 64, 64, 1) and len(labels) == len(index) == 10
    assert not [path for path in project.rglob("*.partial*")]
    ((status, _),) = stage_runs("preprocess")
    assert status == "FINISHED"
