"""Progress of long stages: a live bar on a terminal, plain log lines everywhere else.

Under cron, in CI, in Airflow's task log or in a file a redrawn bar is noise, so unless both
stdout and stderr are terminals (or with `CONVPIPE_PROGRESS=plain`, which `convpipe run --quiet`
sets) progress is a log line every `interval` seconds and one at the end, through the stage's
logger, which also lands in `<root>/logs/run-<id>.log`. `CONVPIPE_PROGRESS=live` forces the bars.

Training's per-step bar (`StepBar`, tqdm on stderr) shows the epoch's steps, the loss, images/s
and the ETA of the epoch and of the whole training; it is drawn only live and vanishes at the end
of each epoch, leaving the loop's one line per epoch, so a terminal and a log file read the same
lines and only the terminal saw the bar.

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
    """Bars on a terminal only: CONVPIPE_PROGRESS plain / live ("rich" is the old name of live) /
    auto (both stdout and stderr are terminals, so `convpipe run > log.txt` writes clean lines)."""
    mode = os.environ.get("CONVPIPE_PROGRESS", "auto")
    if mode in ("plain", "rich", "live"):
        return mode != "plain"
    return _isatty(sys.stderr) and _isatty(sys.stdout)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


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


def _duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class StepBar:
    """Training's live per-step line: `epoch 3/8  45%|####   | 9/20 [00:02<00:02, loss 0.41, 812 images/s,
    ETA 00:31]`. `step` after every step, `close` at the end of every epoch; without a terminal
    (see `use_live_display`) both do nothing, and the loop's epoch lines are the whole output."""

    def __init__(self, steps_per_epoch: int, epochs: int, live: Optional[bool] = None, stream=None,
                 mininterval: float = 0.2):
        self.steps_per_epoch, self.epochs = int(steps_per_epoch), int(epochs)
        self.mininterval = mininterval
        """Seconds between redraws (tqdm's): a fast step costs no terminal write."""
        self.live = use_live_display() if live is None else live
        self.stream = stream
        self._bar = None
        self._redirect = None
        self._epoch = None
        self._images = 0.0
        self._opened = 0.0
        self._seconds_per_step: Optional[float] = None
        self._steps_done_before = 0

    def step(self, epoch: int, step: int, images: float, loss: float) -> None:
        """Step `step` (1-based, within `epoch`) trained `images` examples to `loss`."""
        if not self.live:
            return
        if self._bar is None or self._epoch != epoch:
            self._open(epoch, step - 1)
        self._images += images
        self._bar.update(1)
        elapsed = time.monotonic() - self._opened
        done = step - self._steps_done_before
        if done > 0 and elapsed > 0:
            self._seconds_per_step = elapsed / done
        remaining = (self.steps_per_epoch - step) + (self.epochs - epoch) * self.steps_per_epoch
        rate = self._images / elapsed if elapsed > 0 else 0.0
        eta = _duration(remaining * self._seconds_per_step) if self._seconds_per_step else "?"
        self._bar.set_postfix_str(f"loss {loss:.4g}, {rate:.0f} images/s, training ETA {eta}", refresh=False)

    def _open(self, epoch: int, already: int) -> None:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.close()
        self._epoch, self._images, self._opened, self._steps_done_before = epoch, 0.0, time.monotonic(), already
        # Log lines written while the bar is up (a step backup) go above it instead of through it.
        self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger()])
        self._redirect.__enter__()
        self._bar = tqdm(total=self.steps_per_epoch, initial=already, desc=f"epoch {epoch}/{self.epochs}",
                         unit="step", leave=False, dynamic_ncols=True, file=self.stream or sys.stderr,
                         mininterval=self.mininterval)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
