"""Order-preserving parallel map over processes, for the CPU-bound image work of the data stages.

A worker that dies (a signal, the out-of-memory killer) fails the map at once with a clear
error: concurrent.futures notices a dead worker, where multiprocessing.Pool would wait forever
for its result.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from pneumonia.config import resolve_workers
from pneumonia.errors import PipelineError

Item = TypeVar("Item")
Result = TypeVar("Result")

# Why a worker may have died, by the signal that ended it.
SIGNAL_HINTS = {
    signal.SIGBUS: "a memory-mapped file could not be written, most often because its disk is "
    "full; free space there",
    signal.SIGKILL: "killed from outside, most often by the kernel's out-of-memory killer; "
    "lower the workers setting or free memory",
    signal.SIGSEGV: "a crash in native code",
}


class WorkerDiedError(PipelineError, RuntimeError):
    """A worker process of parallel_map ended without returning its results."""


def _stop_and_read_exit_codes(executor: ProcessPoolExecutor) -> list[int]:
    """Shut a broken executor down and return its workers' non-zero exit codes, the first
    non-SIGTERM one first (the executor SIGTERMs the survivors once one dies). Reads a private
    attribute, before shutdown drops it: it only adds the cause to the message, and where it is
    missing the message just names no signal."""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=True, cancel_futures=True)  # joins the workers: exit codes are set
    codes = [process.exitcode for process in processes if process.exitcode not in (None, 0)]
    return sorted(codes, key=lambda code: code == -signal.SIGTERM)


def describe_exit(codes: list[int]) -> str:
    """`killed by SIGBUS: <hint>` for the first exit code, or a general hint."""
    if codes and codes[0] < 0:
        number = -codes[0]
        name = signal.Signals(number).name if number in signal.valid_signals() else str(number)
        hint = SIGNAL_HINTS.get(number, "set workers: 1 to run it in this process and see why")
        return f"killed by {name}: {hint}"
    if codes:
        return f"exit status {codes[0]}; set workers: 1 to run it in this process and see why"
    return "set workers: 1 to run it in this process and see why"


def parallel_map(
    function: Callable[[Item], Result],
    items: Iterable[Item],
    workers: int = 0,
    chunksize: int = 32,
    label: str | None = None,
) -> Iterator[Result]:
    """Yield function(item) for each item, in order, on `workers` processes (0 = all cores).

    One worker runs in this process: no pool start-up, and tracebacks stay simple. An exception
    in a worker is raised here as it was raised there; a worker that dies raises WorkerDiedError
    (its message starts with `label`, the step's name, by default the function's).
    """
    items = list(items)
    processes = min(resolve_workers(workers), max(1, len(items)))
    if processes == 1:
        yield from map(function, items)
        return
    # fork keeps start-up cheap and needs no re-import; the data stages never import TensorFlow.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    executor = ProcessPoolExecutor(processes, mp_context=context)
    try:
        yield from executor.map(function, items, chunksize=chunksize)
    except BrokenProcessPool:
        # A functools.partial names its function.
        name = label or getattr(getattr(function, "func", function), "__name__", "parallel_map")
        cause = describe_exit(_stop_and_read_exit_codes(executor))
        raise WorkerDiedError(f"{name}: a worker process died ({cause})") from None
    finally:
        # Also when the caller stops early or fails: queued work is dropped, not waited for.
        executor.shutdown(wait=True, cancel_futures=True)
