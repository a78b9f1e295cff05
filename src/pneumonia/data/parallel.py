"""Order-preserving parallel map over processes, for the CPU-bound image work of the data stages."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from pneumonia.config import resolve_workers

Item = TypeVar("Item")
Result = TypeVar("Result")


def parallel_map(
    function: Callable[[Item], Result],
    items: Iterable[Item],
    workers: int = 0,
    chunksize: int = 32,
) -> Iterator[Result]:
    """Yield function(item) for each item, in order, on `workers` processes (0 = all cores).

    One worker runs in this process: no pool start-up, and tracebacks stay simple.
    """
    items = list(items)
    processes = min(resolve_workers(workers), max(1, len(items)))
    if processes == 1:
        yield from map(function, items)
        return
    # fork keeps start-up cheap and needs no re-import; the data stages never import TensorFlow.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with context.Pool(processes) as pool:
        yield from pool.imap(function, items, chunksize=chunksize)
