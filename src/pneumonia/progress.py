"""Progress on the console, the same way for every long step (tuning trials, epochs, the
acquisition-shift check, preprocess, evaluate): a header line names the step (`trial 2/4`,
`final fit`, `member 1/2`, `shift check`), then

- on a terminal: a tqdm bar with its ETA, cleared when the step ends;
- elsewhere (a log file, `dvc repro` in CI): a plain line every INTERVAL_SECONDS with the count,
  the elapsed time and the ETA, so a log never fills with carriage-return bars;

and one summary line when the step ends. Everything goes to stderr: predict's stdout carries its
rows. Imports nothing heavy (the data stages use it too).
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import IO, Any, TypeVar

from tqdm import tqdm

# How often a stream that is not a terminal gets a progress line.
INTERVAL_SECONDS = 30.0

Item = TypeVar("Item")


def is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _bar_size(stream: IO[str]) -> dict[str, Any]:
    """tqdm's size options: follow the terminal's width, or 80x24 where the terminal reports no
    size (a pseudo-terminal without one, as `script` or some CI runners give), on which tqdm
    would draw nothing."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return {"dynamic_ncols": True}
    if size.columns > 0 and size.lines > 0:
        return {"dynamic_ncols": True}
    return {"ncols": 80, "nrows": 24}


def duration(seconds: float) -> str:
    """`00:42`, `12:03`, `1:02:03`: the same format as the bars' elapsed and ETA."""
    return tqdm.format_interval(max(0.0, seconds))


def say(text: str, stream: IO[str] | None = None) -> None:
    """One line of progress (a header or a summary) on stderr, after whatever stdout holds."""
    stream = sys.stderr if stream is None else stream
    if stream is not sys.stdout:
        sys.stdout.flush()  # in a shared log, lines printed before this one come first
    print(text, file=stream, flush=True)


def _value(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


class Progress:
    """Progress of one step towards `total` (None: unknown) `unit`s.

    Use as a context manager, call `update(amount, **postfix)` as work is done; the step's
    summary line is printed when it ends (`close(message)` replaces it; "" prints none). A step
    that raises prints no summary. `interval`: seconds between a log's lines; `bar_interval`:
    between a bar's redraws; `announce`: a log also gets a line when the step starts.
    """

    def __init__(
        self,
        description: str,
        total: int | None = None,
        unit: str = "items",
        *,
        stream: IO[str] | None = None,
        interval: float = INTERVAL_SECONDS,
        bar_interval: float = 0.1,
        indent: str = "",
        announce: bool = False,
    ):
        self.description, self.total, self.unit = description, total, unit
        self.stream = sys.stderr if stream is None else stream
        self.interval, self.indent = interval, indent
        self.count = 0
        self.postfix: dict[str, Any] = {}
        self.started = self.last_line = time.monotonic()
        self.closed = False
        self.bar: tqdm | None = None
        if is_terminal(self.stream):
            sys.stdout.flush()
            self.bar = tqdm(
                total=total,
                desc=f"{indent}{description}",
                unit=f" {unit}",
                # Count and ETA, no rate: `2.49s/ batches` reads worse than `1/6 batches`.
                bar_format=(
                    None
                    if total is None
                    else f"{{l_bar}}{{bar}}| {{n_fmt}}/{{total_fmt}} {unit} "
                    "[{elapsed}<{remaining}{postfix}]"
                ),
                file=self.stream,
                leave=False,
                **_bar_size(self.stream),
                mininterval=bar_interval,
            )
        elif announce:
            say(
                f"{indent}{description}: started" + (f", {total} {unit}" if total else ""),
                self.stream,
            )

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def update(self, amount: int = 1, **postfix: Any) -> None:
        self.count += amount
        self.postfix.update(postfix)
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix({key: _value(value) for key, value in postfix.items()}, False)
            self.bar.update(amount)
            return
        now = time.monotonic()
        if now - self.last_line >= self.interval:
            self.last_line = now
            say(self.status(), self.stream)

    def status(self) -> str:
        """`epoch 2/8: 120/163 batch (74%), 00:31 elapsed, ETA 00:11, loss 0.4123`."""
        elapsed = self.elapsed
        parts = [f"{self.count} {self.unit}"]
        if self.total:
            parts = [
                f"{self.count}/{self.total} {self.unit} ({100 * self.count / self.total:.0f}%)"
            ]
        parts.append(f"{duration(elapsed)} elapsed")
        if self.total and self.count:
            parts.append(f"ETA {duration(elapsed / self.count * (self.total - self.count))}")
        parts += [f"{key} {_value(value)}" for key, value in self.postfix.items()]
        return f"{self.indent}{self.description}: " + ", ".join(parts)

    def close(self, message: str | None = None) -> None:
        """End the step: clear the bar and print `message` (default: the count and the time)."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        if message is None:
            done = f"{self.count} {self.unit} in {duration(self.elapsed)}"
            message = f"{self.indent}{self.description}: {done}"
        if message:
            say(message, self.stream)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(None if kind is None else "")


def track(
    items: Iterable[Item],
    description: str,
    total: int | None = None,
    unit: str = "items",
    **options: Any,
) -> Iterator[Item]:
    """Yield the items, showing progress through them (total: len(items) when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(description, total, unit, **options) as progress:
        for item in items:
            yield item
            progress.update()
