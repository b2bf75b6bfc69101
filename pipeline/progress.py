"""Progress of long stages: a live bar on a terminal, plain log lines everywhere else.

Under cron, in CI or in a log file a redrawn bar is noise, so when stderr is not a terminal (or
`CONVPIPE_PROGRESS=plain`) progress is a log line every `interval` seconds and one at the end,
through the stage's logger, which also lands in `<root>/logs/run-<id>.log`.

    with progress(ctx, total=len(items), desc="records read") as bar:
        for item in items:
            ...
            bar.advance()

    for batch in track(dataset, ctx, total=steps, desc="train steps"):
        ...
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


def _logger(target) -> logging.Logger:
    return target if isinstance(target, logging.Logger) else getattr(target, "log", logging.getLogger("convpipe"))


def use_live_display() -> bool:
    mode = os.environ.get("CONVPIPE_PROGRESS", "auto")
    if mode in ("plain", "rich"):
        return mode == "rich"
    return sys.stderr.isatty()


class Progress:
    """Counts work done; shows it live (rich) or as periodic log lines."""

    def __init__(self, target, total: Optional[int], desc: str, unit: str = "", interval: float = 10.0,
                 live: Optional[bool] = None):
        self.log = _logger(target)
        self.total = total
        self.desc = desc
        self.unit = unit
        self.interval = interval
        self.live = use_live_display() if live is None else live
        self.completed = 0
        self._start = self._last_report = time.monotonic()
        self._rich = None
        self._task = None

    def __enter__(self) -> "Progress":
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress
            from rich.progress import TextColumn, TimeElapsedColumn, TimeRemainingColumn
            self._rich = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn(),
                                      console=Console(stderr=True), transient=False)
            self._rich.start()
            self._task = self._rich.add_task(self.desc, total=self.total)
        else:
            self.log.info("%s: started%s", self.desc, f" ({self.total} {self.unit})".rstrip() if self.total else "")
        return self

    def advance(self, amount: int = 1) -> None:
        self.update(self.completed + amount)

    def update(self, completed: int) -> None:
        self.completed = completed
        if self._rich is not None:
            self._rich.update(self._task, completed=completed)
            return
        now = time.monotonic()
        if now - self._last_report >= self.interval:
            self._last_report = now
            self.log.info("%s", self._line())

    def _line(self, done: bool = False) -> str:
        elapsed = time.monotonic() - self._start
        rate = self.completed / elapsed if elapsed > 0 else 0.0
        count = f"{self.completed}" + (f"/{self.total}" if self.total else "")
        share = f" ({100.0 * self.completed / self.total:.0f}%)" if self.total else ""
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.desc}: {'done, ' if done else ''}{count}{unit}{share} in {elapsed:.1f} s, {rate:.1f}{unit}/s"

    def __exit__(self, exc_type, *exc) -> None:
        if self._rich is not None:
            self._rich.stop()
        if exc_type is None:
            self.log.info("%s", self._line(done=True))


def progress(target, total: Optional[int] = None, desc: str = "progress", unit: str = "",
             interval: float = 10.0) -> Progress:
    """A `Progress` for an executor: `target` is the ExecutionContext (its `log`) or a logger."""
    return Progress(target, total, desc, unit, interval)


def track(iterable: Iterable[T], target, total: Optional[int] = None, desc: str = "progress",
          unit: str = "", interval: float = 10.0) -> Iterator[T]:
    """Yields from `iterable`, counting each item."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(target, total, desc, unit, interval) as bar:
        for item in iterable:
            yield item
            bar.advance()
