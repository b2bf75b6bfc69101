"""The statistics of a comparison of trials: per group (the trials that differ only by seed) the
mean and spread over seeds, the time to a target, the ranking, and where the data cannot rank.

A group's interval is the 95% Student t-interval of its mean, mean ± t(0.975, n-1) · s / √n, with
s the sample standard deviation over its seeds. Two groups whose intervals overlap are not ranked
against each other: the report says so instead of naming a winner on noise. A group with one seed
has no interval, and nothing is claimed about it either. The best trial is the best seed of the
best group by mean (a group is a setting one would deploy; the seed is luck).

Everything here is plain Python on numbers already read from the artifacts (components/compare/stage.py
reads them), so it is tested on hand-computed cases.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

# Two-sided 95% critical values of Student's t for 1..30 degrees of freedom.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t_critical(df: int) -> float:
    """t(0.975, df); beyond the table, the normal quantile with its first Cornish-Fisher correction."""
    if df < 1:
        raise ValueError(f"Invalid value for argument `df`. Expected an integer >= 1. Received df={df!r}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df)


def lower_is_better(metric: str) -> bool:
    return metric.endswith("loss") or metric.endswith("error")


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and 95% t-interval half-width of some values."""
    n: int
    mean: Optional[float]
    std: Optional[float]
    half_width: Optional[float]

    @property
    def interval(self) -> Optional[tuple[float, float]]:
        if self.half_width is None:
            return None
        return self.mean - self.half_width, self.mean + self.half_width


def spread(values: Sequence[Optional[float]]) -> Spread:
    """Over the values that are not None; std and interval need at least two."""
    present = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(present)
    if n == 0:
        return Spread(0, None, None, None)
    mean = sum(present) / n
    if n == 1:
        return Spread(1, mean, None, None)
    std = math.sqrt(sum((v - mean) ** 2 for v in present) / (n - 1))
    return Spread(n, mean, std, t_critical(n - 1) * std / math.sqrt(n))


def overlaps(a: Spread, b: Spread) -> bool:
    """Whether the two intervals overlap; without an interval on either side, they are taken to."""
    if a.interval is None or b.interval is None:
        return True
    return a.interval[0] <= b.interval[1] and b.interval[0] <= a.interval[1]


def reach(history: dict, metric: str, target: Optional[float]) -> tuple[Optional[int], Optional[float]]:
    """(epoch, training seconds) when the eval metric (the train metric without an eval split) first
    reached `target`, from history.json's Keras layout; (None, None) if it never did."""
    if target is None:
        return None, None
    values = history.get(f"val_{metric}") or history.get(metric) or []
    epochs = history.get("epoch") or list(range(1, len(values) + 1))
    seconds = history.get("seconds") or [None] * len(values)
    for epoch, value, elapsed in zip(epochs, values, seconds):
        if value is not None and (value <= target if lower_is_better(metric) else value >= target):
            return int(epoch), elapsed
    return None, None


@dataclass
class TrialRow:
    name: str
    group: str
    seed: int
    value: Optional[float]
    """The ranking metric on the test split."""
    final_loss: Optional[float] = None
    """The training loss of the last epoch."""
    epochs_to_target: Optional[int] = None
    seconds_to_target: Optional[float] = None
    blessed: Optional[bool] = None
    extra: dict = field(default_factory=dict)


@dataclass
class GroupSummary:
    group: str
    trials: list[str]
    metric: Spread
    final_loss: Spread
    epochs_to_target: Spread
    seconds_to_target: Spread
    reached: int
    rank: int = 0
    tied_with: list[str] = field(default_factory=list)
    """Groups whose intervals overlap this one's: the data do not order them."""


def summarize(rows: Sequence[TrialRow], metric: str) -> list[GroupSummary]:
    """One summary per group, best mean first (groups without a value last), with ties noted."""
    groups: dict[str, list[TrialRow]] = {}
    for row in rows:
        groups.setdefault(row.group, []).append(row)
    summaries = [GroupSummary(
        group=name, trials=[r.name for r in members], metric=spread([r.value for r in members]),
        final_loss=spread([r.final_loss for r in members]),
        epochs_to_target=spread([r.epochs_to_target for r in members]),
        seconds_to_target=spread([r.seconds_to_target for r in members]),
        reached=sum(r.epochs_to_target is not None for r in members)) for name, members in groups.items()]
    sign = 1.0 if lower_is_better(metric) else -1.0
    summaries.sort(key=lambda s: (s.metric.mean is None, sign * (s.metric.mean or 0.0)))
    for rank, summary in enumerate(summaries, 1):
        summary.rank = rank
        summary.tied_with = [o.group for o in summaries if o is not summary and o.metric.mean is not None
                             and summary.metric.mean is not None and overlaps(summary.metric, o.metric)]
    return summaries


def best_trial(rows: Sequence[TrialRow], summaries: Sequence[GroupSummary], metric: str) -> Optional[str]:
    """The best seed of the best group; ties broken by the lower final training loss, then the name."""
    if not summaries or summaries[0].metric.mean is None:
        return None
    members = [r for r in rows if r.group == summaries[0].group and r.value is not None]
    sign = 1.0 if lower_is_better(metric) else -1.0
    members.sort(key=lambda r: (sign * r.value, r.final_loss if r.final_loss is not None else math.inf, r.name))
    return members[0].name


def verdict(summaries: Sequence[GroupSummary], metric: str) -> str:
    """One sentence on what won and how sure it is."""
    ranked = [s for s in summaries if s.metric.mean is not None]
    if not ranked:
        return f"No trial has a {metric} value: nothing to rank."
    leader = ranked[0]
    if len(ranked) == 1:
        return f"{leader.group} is the only group ({metric} {_mean_text(leader.metric)})."
    if leader.metric.interval is None:
        return (f"{leader.group} has the best mean {metric} ({_mean_text(leader.metric)}), but with one seed per "
                f"group there is no interval: no winner is claimed. Add seeds (train.seeds) to rank on more than noise.")
    if leader.tied_with:
        return (f"{leader.group} has the best mean {metric} ({_mean_text(leader.metric)}), but its 95% interval "
                f"overlaps that of {', '.join(leader.tied_with)}: the data do not separate them, so no winner "
                f"among them is claimed.")
    runner_up = ranked[1]
    return (f"{leader.group} is best ({metric} {_mean_text(leader.metric)}); its 95% interval does not overlap any "
            f"other group's (next: {runner_up.group}, {_mean_text(runner_up.metric)}).")


def _mean_text(s: Spread) -> str:
    if s.mean is None:
        return "-"
    return f"{s.mean:.4f}" + (f" ± {s.std:.4f} over {s.n} seeds" if s.std is not None else f" from {s.n} seed")
