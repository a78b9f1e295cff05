"""What the tests share that is not a fixture: builders of small real inputs (image files,
Kaggle-layout folders, params files, a tiny tuning project), the tools to run the pipeline in a
copy of the repository, and the throwaway PostgreSQL cluster and `mlflow server` of the
scale-out tests (also used by benchmarks/tune_scaling.py).

Test files import from here (`from helpers import ...`); conftest.py holds only fixtures.

PostgreSQL refuses to run as root, so as root its commands run as the `postgres` user, which
Debian's `postgresql` package creates (`.ci/run` installs it when the binaries are missing).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from pneumonia.config import ModelConfig
from pneumonia.contracts.arrays import write_split

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASET = PROJECT_ROOT.parent / "shared" / "data" / "chest_xray"
# The unit tests' params: a frozen copy of the project's, so editing a default there cannot fail
# them (its header says who reads the real one).
FIXTURE_PARAMS = Path(__file__).resolve().parent / "fixtures" / "params.yaml"


# --- Params files ----------------------------------------------------------------------------


@cache
def _fixture_params_text() -> str:
    return FIXTURE_PARAMS.read_text()


def fixture_params() -> dict[str, Any]:
    """A fresh, mutable copy of the tests' params (tests/fixtures/params.yaml)."""
    return yaml.safe_load(_fixture_params_text())


def apply_changes(params: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Set each dotted key of `changes` in `params` (a None value deletes the key)."""
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        section = params
        for parent in parents:
            section = section.setdefault(parent, {})
        if value is None:
            del section[key]
        else:
            section[key] = copy.deepcopy(value)
    return params


def write_params(folder: Path, changes: dict[str, Any]) -> Path:
    """folder/params.yaml: the tests' params with `changes` applied; returns its path."""
    params = apply_changes(fixture_params(), changes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder / "params.yaml"


# --- MLflow isolation (conftest.py's isolated_mlflow) ----------------------------------------

# What MLflow reads from the environment, and writes back into it (set_tracking_uri and
# set_experiment export theirs so that subprocesses inherit them).
MLFLOW_ENVIRONMENT = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
)
# MLflow's process-wide settings, as (module, attribute). Private: MLflow offers no way to read
# whether a URI was set or to clear the active experiment, and an experiment id left over from
# another store breaks the next fluent start_run. A rename in MLflow fails here, loudly.
MLFLOW_GLOBALS = (
    ("mlflow.tracking._tracking_service.utils", "_tracking_uri"),
    ("mlflow.tracking._model_registry.utils", "_registry_uri"),
    ("mlflow.tracking.fluent", "_active_experiment_id"),
)


def _mlflow_globals() -> dict[tuple[str, str], Any]:
    """The current MLFLOW_GLOBALS; empty before anything imported mlflow (all unset then)."""
    if "mlflow" not in sys.modules:
        return {}
    return {
        (module, name): getattr(importlib.import_module(module), name)
        for module, name in MLFLOW_GLOBALS
    }


def _reset_mlflow(values: dict[tuple[str, str], Any], runs_store: str | None = None) -> None:
    """End every run left active (in `runs_store` when given), then set MLFLOW_GLOBALS to
    `values` (None where absent)."""
    if "mlflow" not in sys.modules:
        return
    import mlflow

    if runs_store is not None:
        mlflow.set_tracking_uri(runs_store)
    while mlflow.active_run() is not None:
        # end_run forgets the run first, then marks it ended in the current store. A run from
        # another store cannot be marked there; forgotten is what matters to the next test.
        with contextlib.suppress(Exception):
            mlflow.end_run()
    (tracking_module, tracking_name), *others = MLFLOW_GLOBALS
    # Through the public call: it also resets the tracer that caches the URI.
    mlflow.set_tracking_uri(values.get((tracking_module, tracking_name)))
    for module, name in others:
        setattr(importlib.import_module(module), name, values.get((module, name)))


@contextlib.contextmanager
def mlflow_store(uri: str) -> Iterator[str]:
    """MLflow logs to `uri` inside the block: MLFLOW_TRACKING_URI is set, no URI is set
    in-process, no experiment or run is active. On leaving, runs left open are ended (in `uri`,
    where they were most likely started, whatever the block pointed MLflow at since) and
    MLflow's process-wide settings and environment are put back as they were.

    Imports nothing itself: a block that never touches mlflow does not load it."""
    saved = _mlflow_globals()
    saved_environment = {name: os.environ.get(name) for name in MLFLOW_ENVIRONMENT}
    _reset_mlflow({})
    for name in MLFLOW_ENVIRONMENT:
        os.environ.pop(name, None)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield uri
    finally:
        _reset_mlflow(saved, runs_store=uri)
        # Last: the reset writes MLFLOW_TRACKING_URI. Each variable as it was before the block,
        # whatever MLflow wrote into it meanwhile (set_experiment exports the experiment id).
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --- Image files and Kaggle-layout folders ---------------------------------------------------

# A few patients per split and class, named like the real dataset (one has two images).
PATIENT_FILES = {
    ("train", "NORMAL"): [
        "IM-0115-0001.jpeg",
        "IM-0117-0001.jpeg",
        "IM-0119-0001.jpeg",
        "IM-0122-0001.jpeg",
        "NORMAL2-IM-0115-0001.jpeg",
        "NORMAL2-IM-0117-0001.jpeg",
        "NORMAL2-IM-0120-0001.jpeg",
        "IM-0125-0001.jpeg",
    ],
    ("train", "PNEUMONIA"): [
        "person1_bacteria_1.jpeg",
        "person1_bacteria_2.jpeg",
        "person2_virus_3.jpeg",
        "person3_bacteria_4.jpeg",
        "person4_virus_5.jpeg",
        "person5_bacteria_6.jpeg",
        "person6_bacteria_7.jpeg",
        "person7_virus_8.jpeg",
        "person8_bacteria_9.jpeg",
    ],
    ("test", "NORMAL"): ["IM-0001-0001.jpeg", "IM-0003-0001.jpeg", "NORMAL2-IM-0007-0001.jpeg"],
    ("test", "PNEUMONIA"): [
        "person1_virus_6.jpeg",
        "person3_bacteria_10.jpeg",
        "person9_virus_1.jpeg",
    ],
    ("val", "NORMAL"): ["NORMAL2-IM-1427-0001.jpeg"],
    ("val", "PNEUMONIA"): ["person1946_bacteria_4874.jpeg"],
}


def chest_like_pixels(seed: int, width: int, height: int) -> np.ndarray:
    """A grey gradient with noise: decodes like an X-ray, differs per seed."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 200, width, dtype=np.float32)[None, :]
    noise = rng.normal(0, 25, size=(height, width)).astype(np.float32)
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


def write_image(path: Path, seed: int, mode: str = "L", size: tuple[int, int] = (96, 80)) -> Path:
    """Write a small real image in the given Pillow mode; format from the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    gray = chest_like_pixels(seed, *size)
    image = Image.fromarray(gray)
    if mode == "I;16":
        image = Image.fromarray(gray.astype(np.uint16) * 257)
    elif mode != "L":
        image = image.convert(mode)
    suffix = path.suffix.lower()
    image.save(
        path,
        format="PNG" if suffix == ".png" else "JPEG",
        **({} if suffix == ".png" else {"quality": 90}),
    )
    return path


def truncated_jpeg_bytes(seed: int = 0) -> bytes:
    """The first half of a real JPEG: what an interrupted download leaves."""
    buffer = io.BytesIO()
    Image.fromarray(chest_like_pixels(seed, 120, 100)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    return data[: len(data) // 2]


def run_cli(arguments: list[str], capsys: Any) -> tuple[int, str, str]:
    """The real `pneumonia` command in-process; returns (exit status, stdout, stderr)."""
    from pneumonia.cli import main

    status = 0
    try:
        main(arguments)
    except SystemExit as exit:
        status = exit.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def image_bytes(pixels: np.ndarray, image_format: str) -> bytes:
    """Grey pixels encoded in any format Pillow writes (MPO: two frames, as cameras write)."""
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    if image_format == "MPO":
        image.save(buffer, format="MPO", save_all=True, append_images=[image])
    else:
        image.save(buffer, format=image_format)
    return buffer.getvalue()


# Formats Pillow decodes that the project refuses (the README promises JPEG or PNG).
REFUSED_FORMATS = ("BMP", "GIF", "TIFF", "WEBP", "EPS", "PPM", "ICO", "PCX", "SGI")


def blank_sixteen_bit_png(width: int, height: int) -> bytes:
    """A valid all-zero 16-bit grey PNG of any size, written row by row: 13000x13000 is a
    0.3 MB file (338 MB once decoded) made in about a second without holding the image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)

    compressor = zlib.compressobj(9)
    row = bytes(1 + 2 * width)  # filter byte 0, then big-endian zeros
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def build_kaggle_tree(root: Path, source_images: dict | None = None) -> Path:
    """A Kaggle-layout tree under root: <split>/<CLASS>/<file>, synthetic or copied images."""
    seed = 0
    for (split, label), names in PATIENT_FILES.items():
        for position, name in enumerate(names):
            seed += 1
            target = root / split / label / name
            if source_images:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source_images[(split, label)][position], target)
            else:
                write_image(target, seed)
    return root


def add_archive_quirks(top: Path, tree: Path) -> None:
    """What the real Kaggle archive adds: a nested duplicate tree, __MACOSX, .DS_Store."""
    shutil.copytree(tree, tree / "chest_xray")
    for path in sorted(tree.rglob("*.jpeg"))[:6]:
        relative = path.relative_to(top)
        apple = top / "__MACOSX" / relative.parent / f"._{path.name}"
        apple.parent.mkdir(parents=True, exist_ok=True)
        apple.write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (tree / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tree / "train" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")


def sample_shared_images() -> dict | None:
    """Distinct real images for each name of PATIENT_FILES from ../shared; None when absent."""
    if not SHARED_DATASET.is_dir():
        return None
    sample = {}
    for (split, label), names in PATIENT_FILES.items():
        files = sorted(
            (SHARED_DATASET / ("test" if split == "test" else "train") / label).glob("*.jpeg")
        )
        # val takes its images from the end of train/ so no file is used twice.
        sample[(split, label)] = files[-len(names) :] if split == "val" else files[: len(names)]
    return sample


# --- The tiny trained model (conftest.py's tiny_model) ---------------------------------------

TINY_SIDE = 32
TINY_PREPROCESS = {
    "image_size": TINY_SIDE,
    "resize": "letterbox",
    "clahe": False,
    "clahe_clip_limit": 2.0,
    "clahe_tile_grid": 8,
}


def blob_pixels(
    seed: int, positive: bool, size: tuple[int, int] = (TINY_SIDE, TINY_SIDE)
) -> np.ndarray:
    """Dark noise; a "pneumonia" image carries a bright square somewhere (width, height)."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.integers(0, 90, size=(height, width)).astype(np.uint8)
    if positive:
        side = max(4, min(width, height) // 4)
        row, column = rng.integers(1, height - side - 1), rng.integers(1, width - side - 1)
        pixels[row : row + side, column : column + side] = 230
    return pixels


# --- Running the real tools on a copy of the repository ------------------------------------


def run_command(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a command to completion; a non-zero exit fails the test with its output."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def tool_environment(**extra: str) -> dict[str, str]:
    """What the pipeline's tools run with in a repo copy: this venv's programs first, a git
    identity, no DVC analytics, and no MLflow settings leaking in from the caller."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.com",
        DVC_NO_ANALYTICS="true",
    )
    env.update(extra)
    return env


def commit_baseline(repo: Path, env: dict[str, str]) -> None:
    """A git repository whose first commit holds everything in the copy."""
    run_command(["git", "init", "-q", "-b", "main"], repo, env)
    run_command(["git", "add", "-A"], repo, env)
    run_command(["git", "commit", "-qm", "baseline"], repo, env)


def copy_repository(target: Path) -> None:
    """What a fresh clone holds: tracked files plus new files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    # A clone of a project that never committed a run: no lock file, no outputs.
    generated = ("dvc.lock", "reports/", "data/", "models/", "studies/")
    for relative in filter(None, listed):
        if relative.startswith(generated):
            continue
        source = PROJECT_ROOT / relative
        if source.is_file():
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / relative)


# The small real CNN the unit tests train and score (two plain blocks, 8 filters).
TINY_CNN = ModelConfig(
    architecture="cnn",
    weights="none",
    depth=2,
    base_filters=8,
    convolution="plain",
    dropout=0.0,
)


def pipeline_project(
    base: Path, configure: Callable[[dict[str, Any]], None]
) -> tuple[Path, dict[str, str]]:
    """The end-to-end tests' project: a repository copy under `base` whose Kaggle download is
    faked at the boundary (tests/boundary) by a tree of the shared sample images with the real
    archive's quirks, with its params.yaml changed by `configure`, committed. Returns the repo
    and the environment to run `dvc` in."""
    repo, dataset = base / "repo", base / "kaggle-cache" / "versions" / "2"
    copy_repository(repo)
    tree = build_kaggle_tree(dataset / "chest_xray", sample_shared_images())
    add_archive_quirks(dataset, tree)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    configure(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = tool_environment(
        PYTHONPATH=os.pathsep.join(
            [str(PROJECT_ROOT / "tests" / "boundary"), os.environ.get("PYTHONPATH", "")]
        ),
        FAKE_KAGGLEHUB_DATASET=str(dataset),
        FAKE_KAGGLEHUB_LOG=str(base / "kaggle-calls.log"),
    )
    commit_baseline(repo, env)
    return repo, env


# --- Scale-out: a throwaway PostgreSQL, an `mlflow server`, a tiny project to tune ----------

# Debian installs the server programs here, off PATH (only psql and friends are on PATH).
DEBIAN_BINARIES = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server programs here, or no user that may run them."""


def find_binaries() -> Path:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's newest version."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    versions = sorted(
        (path.parent for path in DEBIAN_BINARIES.glob("*/bin/initdb")),
        key=lambda folder: int(folder.parent.name) if folder.parent.name.isdigit() else 0,
    )
    if versions and (versions[-1] / "pg_ctl").is_file():
        return versions[-1]
    raise PostgresUnavailable(
        "PostgreSQL server programs (initdb, pg_ctl) not found on PATH or under "
        f"{DEBIAN_BINARIES}/<version>/bin; install Debian's `postgresql` package "
        "(`apt-get install -y postgresql`, which .ci/run does)"
    )


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresCluster:
    """One initdb'd cluster with trust authentication, listening on 127.0.0.1 only."""

    def __init__(self) -> None:
        self.binaries = find_binaries()
        self.user = None
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam(SERVER_USER)
            except KeyError as error:
                raise PostgresUnavailable(
                    f"running as root and there is no '{SERVER_USER}' user to run PostgreSQL as "
                    f"(PostgreSQL refuses root); create it: useradd --system {SERVER_USER}"
                ) from error
        self.root = Path(tempfile.mkdtemp(prefix="pneumonia-postgres-"))
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0

    def _run(self, *command: str) -> None:
        as_user = {}
        if self.user is not None:
            as_user = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        result = subprocess.run(
            [str(self.binaries / command[0]), *command[1:]],
            cwd=self.root,
            capture_output=True,
            text=True,
            check=False,
            **as_user,
        )
        if result.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.is_file() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}\n{log}"
            )

    def start(self) -> PostgresCluster:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust")
        for attempt in range(3):  # another process may take the free port before the server
            self.port = free_port()
            options = (
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                # A throwaway cluster: durability buys nothing, speed does.
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                self._run(
                    "pg_ctl",
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                )
                return self
            except RuntimeError:
                if attempt == 2:
                    raise
        return self

    def stop(self) -> None:
        if self.data.is_dir():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            except RuntimeError as error:
                print(f"could not stop the throwaway PostgreSQL: {error}", file=sys.stderr)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        # CREATE DATABASE cannot run inside a transaction.
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)


class MlflowServer:
    """`mlflow server` backed by a database, with proxied artifacts in a local folder."""

    def __init__(self, backend_store_uri: str, artifacts: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        artifacts.mkdir(parents=True, exist_ok=True)
        self.command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            backend_store_uri,
            "--artifacts-destination",
            artifacts.as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "2",
        ]
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> MlflowServer:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        with self.log.open("w") as log:
            # Its own process group: `mlflow server` runs the web server as a child process,
            # and stop() must end both.
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server not up in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is None:
            return
        group = self.process.pid  # the group that start_new_session made
        try:
            os.killpg(group, signal.SIGTERM)
            self.process.wait(timeout=2)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            pass
        # Whatever of it is left: a throwaway server needs no clean shutdown.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process.wait()


# Tiny enough that a trial takes seconds on a CPU, with a signal the CNN can learn.
TINY_PROJECT_CHANGES: dict[str, Any] = {
    "preprocess.image_size": 16,
    "train.epochs": 1,
    "train.batch_size": 8,
    "train.mixed_precision": "off",
    "train.model.depth": 2,
    "train.model.base_filters": 4,
    "train.tuning.epochs": 1,
    "train.tuning.pruner": "none",
    "train.tuning.timeout": 0,
    "train.tuning.search_space.base_filters": [4, 8],
    "train.tuning.search_space.batch_size": [8, 16],
}


def tiny_project_arrays(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Toy X-rays: pneumonia images are brighter in the middle."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(count) % 2).astype(np.uint8)
    images = rng.integers(0, 120, size=(count, size, size, 1)).astype(np.uint8)
    quarter = size // 4
    images[labels == 1, quarter:-quarter, quarter:-quarter] += 100
    return images, labels


def write_tiny_project(
    root: Path, changes: dict[str, Any], images: int = 48, base_params: Path = FIXTURE_PARAMS
) -> Path:
    """A project folder with base_params (the tests' params unless told), TINY_PROJECT_CHANGES
    and `changes` applied, and processed train and val arrays (what the preprocess stage writes);
    returns the params file."""
    params = yaml.safe_load(base_params.read_text())
    apply_changes(params, {**TINY_PROJECT_CHANGES, **changes})
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    size = params["preprocess"]["image_size"]
    for seed, (split, count) in enumerate((("train", images), ("val", images // 2))):
        folder = root / params["paths"]["processed"] / split
        folder.mkdir(parents=True, exist_ok=True)
        pixels, labels = tiny_project_arrays(count, size, seed)
        np.save(folder / "images.npy", pixels, allow_pickle=False)
        names = [f"{split}-{index}.png" for index in range(count)]
        frame = pd.DataFrame(
            {
                "path": names,
                "label": np.where(labels == 1, "PNEUMONIA", "NORMAL"),
                "patient_id": names,
                "sha256": names,
            }
        )
        write_split(folder, frame, labels)
        # The split table and the raw images too: the train stage's acquisition-shift check
        # re-renders the raw val images.
        images_dir = root / params["paths"]["images"]
        images_dir.mkdir(parents=True, exist_ok=True)
        for name, image in zip(names, pixels, strict=True):
            Image.fromarray(image[..., 0]).save(images_dir / name)
        split_dir = root / params["paths"]["split"]
        split_dir.mkdir(parents=True, exist_ok=True)
        frame.to_csv(split_dir / f"{split}.csv", index=False)
    return root / "params.yaml"


@contextlib.contextmanager
def served_model(uri: str, env: dict[str, str], log_path: Path) -> Iterator[str]:
    """`mlflow models serve` of `uri` on a free loopback port, with this environment's
    programs; yields its URL once /ping answers, and always stops it."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("w") as log:
        # Its own session: the CLI starts uvicorn as a child, and both must be stopped.
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the server exited:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not answer /ping:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
