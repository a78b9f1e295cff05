"""How many worker processes a `workers` param gives on this machine."""

from __future__ import annotations

import os
import sys


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_CLAMPED: set[tuple[int, int]] = set()


def resolve_workers(workers: int) -> int:
    """0 means every core this process may use; more than that is clamped to it, with a note
    (once per process): params.yaml is shared by machines of every size, and more processes than
    cores only add memory and start-up to CPU-bound work (150 forked 150 processes on 2 cores)."""
    cores = usable_cores()
    if workers <= 0:
        return cores
    if workers > cores:
        if (workers, cores) not in _CLAMPED:
            _CLAMPED.add((workers, cores))
            print(
                f"note: {workers} workers asked for, {cores} core(s) usable here: using {cores}",
                file=sys.stderr,
            )
        return cores
    return workers
