"""Liveness: which process owns a run (ProcessIdentity), its heartbeat (RunHeartbeat), and which
RUNNING runs are orphaned, on positive evidence only (close_orphaned_runs)."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow

from pneumonia.redaction import redact_text, tracking_urls
from pneumonia.tracking.reachability import REACHABLE_TIMEOUT_SECONDS

# Which process owns a run (ProcessIdentity.tags): host and pid say who, for a reader; the boot
# id, PID namespace and start time are what prove, on the same machine, that it is gone.
PROCESS_HOST_TAG = "process.host"
PROCESS_ID_TAG = "process.pid"
PROCESS_BOOT_TAG = "process.boot_id"
PROCESS_NAMESPACE_TAG = "process.pid_namespace"
PROCESS_START_TAG = "process.start_time"
# UTC time (ISO 8601) of the owner's last sign of life, refreshed while the stage runs.
HEARTBEAT_TAG = "process.heartbeat"
RUN_HEARTBEAT_SECONDS = 60
# Five missed heartbeats: a run whose heartbeat is older is orphaned (its process died on
# another machine or in another container, or lost the tracking store for that long).
RUN_GRACE_SECONDS = 300
ENDED_BECAUSE_TAG = "ended_because"


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _proc_is_this_namespace() -> bool:
    """Whether /proc lists this PID namespace's processes (a container without its own /proc
    mount sees another namespace's there, and could not tell a pid's fate)."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


def _process_start(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks after boot) of a pid, from /proc/<pid>/stat (fields 3
    and 22); None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses itself.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], fields[19]


@dataclass(frozen=True)
class ProcessIdentity:
    """A process, told apart from every other one that ever ran: the boot of the machine
    (/proc/sys/kernel/random/boot_id), the PID namespace, the pid in it, and when that pid's
    process started (its start time in clock ticks after boot). Empty strings where the platform
    has no /proc: such a process is judged by its heartbeat alone."""

    host: str
    pid: str
    boot_id: str
    pid_namespace: str
    start_time: str

    @classmethod
    def current(cls) -> ProcessIdentity:
        pid = os.getpid()
        started = _process_start(pid) if _proc_is_this_namespace() else None
        return cls(
            host=socket.gethostname(),
            pid=str(pid),
            boot_id=_read("/proc/sys/kernel/random/boot_id"),
            pid_namespace=_namespace(),
            start_time=started[1] if started else "",
        )

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ProcessIdentity:
        return cls(**{name: str(values.get(name, "")) for name in cls.__dataclass_fields__})

    def tags(self) -> dict[str, str]:
        return {
            PROCESS_HOST_TAG: self.host,
            PROCESS_ID_TAG: self.pid,
            PROCESS_BOOT_TAG: self.boot_id,
            PROCESS_NAMESPACE_TAG: self.pid_namespace,
            PROCESS_START_TAG: self.start_time,
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> ProcessIdentity:
        return cls(
            host=tags.get(PROCESS_HOST_TAG, ""),
            pid=tags.get(PROCESS_ID_TAG, ""),
            boot_id=tags.get(PROCESS_BOOT_TAG, ""),
            pid_namespace=tags.get(PROCESS_NAMESPACE_TAG, ""),
            start_time=tags.get(PROCESS_START_TAG, ""),
        )

    def is_local(self) -> bool:
        """Whether this process can see it: same boot of the same machine, same PID namespace,
        and this process's /proc is that namespace's."""
        here = ProcessIdentity.current()
        return bool(
            self.boot_id
            and self.pid_namespace
            and self.start_time
            and self.pid.isdigit()
            and self.boot_id == here.boot_id
            and self.pid_namespace == here.pid_namespace
            and _proc_is_this_namespace()
        )

    def is_gone(self) -> bool:
        """True only on proof: the process is local (is_local) and no process runs under its pid
        with its start time (none at all, a zombie, or a later one that reused the pid). A
        process elsewhere is never proven gone here."""
        if not self.is_local():
            return False
        now = _process_start(int(self.pid))
        return now is None or now[0] in ("Z", "X") or now[1] != self.start_time


def utc_now() -> datetime:
    return datetime.now(UTC)


def heartbeat_value(moment: datetime | None = None) -> str:
    """The heartbeat tag's value: UTC time in ISO 8601, to the second."""
    return (moment or utc_now()).astimezone(UTC).isoformat(timespec="seconds")


def _heartbeat_age(tags: Mapping[str, str], now: datetime) -> float | None:
    try:
        beat = datetime.fromisoformat(tags[HEARTBEAT_TAG])
    except (KeyError, ValueError):
        return None
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=UTC)
    return (now - beat).total_seconds()


def orphan_reason(
    tags: Mapping[str, str], grace_seconds: float = RUN_GRACE_SECONDS, now: datetime | None = None
) -> str | None:
    """Why a RUNNING run with these tags is orphaned, or None when nothing proves it: its process
    is local and gone, or (a process elsewhere) its heartbeat is older than the grace period. A
    local process that is alive is never orphaned, whatever its heartbeat."""
    owner = ProcessIdentity.from_tags(tags)
    if owner.is_local():
        if owner.is_gone():
            return (
                f"process {owner.pid} on {owner.host or 'this machine'} ended without closing "
                "the run (killed)"
            )
        return None
    age = _heartbeat_age(tags, now or utc_now())
    if age is not None and age > grace_seconds:
        return (
            f"no heartbeat for {age:.0f} s (grace period {grace_seconds:g} s): process "
            f"{owner.pid or '?'} on {owner.host or '?'} is gone or cut off from the store"
        )
    return None


def close_orphaned_runs(
    experiment_id: str, grace_seconds: float = RUN_GRACE_SECONDS, now: datetime | None = None
) -> list[str]:
    """End as KILLED the RUNNING runs whose process is proven gone (orphan_reason), and the
    RUNNING runs nested under them; returns their ids. Live runs, and runs without the process
    tags or a heartbeat (from before them), are left alone."""
    client = mlflow.MlflowClient()
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'")
    closed = []
    for run in running:
        reason = orphan_reason(run.data.tags, grace_seconds, now)
        if reason is not None:
            closed.append(run.info.run_id)
            client.set_tag(run.info.run_id, ENDED_BECAUSE_TAG, reason)
            client.set_terminated(run.info.run_id, status="KILLED")
    for run in running:
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent in closed and run.info.run_id not in closed:
            closed.append(run.info.run_id)
            client.set_tag(
                run.info.run_id, ENDED_BECAUSE_TAG, f"its parent run {parent} was killed"
            )
            client.set_terminated(run.info.run_id, status="KILLED")
    return closed


class RunHeartbeat:
    """A daemon thread that refreshes a run's heartbeat tag every `interval` seconds while the
    stage runs (start, stop). Should another process have closed the run all the same (its
    heartbeat stalled past the grace period), it restores the run (restore_if_closed). A beat
    that fails (the store busy or away) is retried at the next one, said once."""

    def __init__(self, run_id: str, tracking_uri: str, interval: float = RUN_HEARTBEAT_SECONDS):
        self.run_id = run_id
        self.interval = interval
        # Its own client on the URI of the run: later set_tracking_uri calls do not move it.
        self.client = mlflow.MlflowClient(tracking_uri)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"mlflow-heartbeat-{run_id[:8]}", daemon=True
        )
        self._warned = False

    def start(self) -> RunHeartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=REACHABLE_TIMEOUT_SECONDS)
        with contextlib.suppress(Exception):  # the run's own end reports a store that is away
            self.restore_if_closed(final=True)

    def beat(self) -> None:
        self.client.set_tag(self.run_id, HEARTBEAT_TAG, heartbeat_value())
        self.restore_if_closed()

    def restore_if_closed(self, final: bool = False) -> bool:
        """Undo another process's close of this live run: status RUNNING again (unless this is
        the run's end, whose own status follows) and the false `ended_because` tags removed, from
        it and from its nested runs closed with it. Returns whether it did."""
        run = self.client.get_run(self.run_id)
        if ENDED_BECAUSE_TAG not in run.data.tags:
            return False
        if not final and run.info.status != "RUNNING":
            self.client.update_run(self.run_id, status="RUNNING")
        self.client.delete_tag(self.run_id, ENDED_BECAUSE_TAG)
        marker = f"its parent run {self.run_id} was killed"
        children = self.client.search_runs(
            [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.run_id}'"
        )
        for child in children:
            if child.data.tags.get(ENDED_BECAUSE_TAG) == marker:
                self.client.delete_tag(child.info.run_id, ENDED_BECAUSE_TAG)
        print(
            f"mlflow: run {self.run_id} had been closed by another process while alive "
            f"({run.data.tags[ENDED_BECAUSE_TAG]}); restored",
            file=sys.stderr,
        )
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as error:
                if not self._warned:
                    self._warned = True
                    problem = redact_text(f"{type(error).__name__}: {error}", *tracking_urls())
                    print(
                        f"mlflow: could not refresh the heartbeat of run {self.run_id} "
                        f"({problem.splitlines()[0][:300]}); retrying every {self.interval:g} s",
                        file=sys.stderr,
                    )
