"""Side-by-side timing for a shared, noisy machine: warm up, then alternate the sides A B A B ...

Other people's work slows whichever side happens to run at that moment; alternating spreads that
noise over both sides, and medians ignore the worst rounds. So every benchmark reports medians
of alternated runs and the ratio of the two, never a single run, and never asserts a speed.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping, Sequence

Side = Callable[[], object]
"""One unit of work. It may return the seconds it measured itself as a float (to leave its
set-up out); any other return value is ignored and the whole call is timed."""


def timed(side: Side) -> float:
    started = time.perf_counter()
    measured = side()
    elapsed = time.perf_counter() - started
    return float(measured) if isinstance(measured, float) else elapsed


def alternate(sides: Mapping[str, Side], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per run for each side: `warmup` untimed runs of each, then `rounds` runs in turn."""
    if rounds < 1:
        raise ValueError(f"rounds: expected at least 1, got {rounds}")
    for _ in range(warmup):
        for side in sides.values():
            side()
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, side in sides.items():
            seconds[name].append(timed(side))
    return seconds


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between the closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def rate(work: float, seconds: Sequence[float]) -> float:
    """Units of work per second at the median time (work per run / median seconds per run)."""
    return work / median(seconds)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")
