"""The scale-out tests' services: a throwaway PostgreSQL cluster and an `mlflow server` on it
(also used by benchmarks/tune_scaling.py), and `mlflow models serve` of a model.

PostgreSQL refuses to run as root, so as root its commands run as the `postgres` user, which
Debian's `postgresql` package creates (`.ci/run` installs it when the binaries are missing).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

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
