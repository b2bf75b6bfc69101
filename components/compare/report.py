"""The comparison section of the report: what won and how sure it is, and the curves of every trial.

Self-contained HTML like components/reports/html.py (PNG plots as data URIs, matplotlib with Agg):
    - the verdict (components/comparison.verdict) and the chosen trial, with its blessing;
    - per group, in rank order: mean ± std over seeds, the 95% t-interval, the groups it cannot be
      told from, epochs and training seconds to the target, the final training loss;
    - the intervals as a plot (mean, ± std, t-interval, every seed as a dot);
    - for each swept key (optimizer, loss, ...): the training loss and eval metric per epoch of
      every trial in one plot, coloured by that key's value; and one small panel per group;
    - every trial in a table.
"""
from __future__ import annotations

import html
import math
from typing import Optional, Sequence

from components.compare.comparison import GroupSummary, Spread, TrialRow, lower_is_better
from components.reports.html import _STYLE, _png, _pyplot, _table, data_uri


def _pm(s: Spread, digits: int = 4) -> str:
    if s.mean is None:
        return "-"
    if s.std is None:
        return f"{s.mean:.{digits}f} (1 seed)"
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"


def _reached(s: Spread, total: int, digits: int = 1, count: bool = True) -> str:
    """Mean (± std) over the seeds that reached the target, and how many did."""
    text = "-" if s.mean is None else f"{s.mean:.{digits}f}" + (f" ± {s.std:.{digits}f}" if s.std is not None else "")
    return f"{text} ({s.n}/{total})" if count else text


def _interval(s: Spread) -> str:
    return f"[{s.interval[0]:.4f}, {s.interval[1]:.4f}]" if s.interval else "- (one seed)"


def intervals_png(summaries: Sequence[GroupSummary], rows: Sequence[TrialRow], metric: str) -> Optional[bytes]:
    """Each group on its own line, best at the top: the t-interval (thin), ± std (thick), the mean, the seeds."""
    ranked = [s for s in summaries if s.metric.mean is not None]
    if not ranked:
        return None
    plt = _pyplot()
    longest = max(len(s.group) for s in ranked)
    figure, axis = plt.subplots(figsize=(6 + 0.07 * longest, 0.5 * len(ranked) + 1.4))
    for y, summary in enumerate(reversed(ranked)):
        m = summary.metric
        if m.half_width is not None:
            axis.errorbar(m.mean, y, xerr=m.half_width, fmt="none", ecolor="tab:blue", elinewidth=1, capsize=4)
            axis.errorbar(m.mean, y, xerr=m.std, fmt="none", ecolor="tab:blue", elinewidth=5, alpha=0.4)
        axis.plot([m.mean], [y], "o", color="tab:blue")
        seeds = [r.value for r in rows if r.group == summary.group and r.value is not None]
        axis.plot(seeds, [y] * len(seeds), "x", color="black", markersize=5)
    axis.set_yticks(range(len(ranked)), [s.group for s in reversed(ranked)])
    axis.set_xlabel(f"test {metric}\nmean (dot), ± std (thick), 95% t-interval (thin), each seed (x)")
    axis.grid(axis="x", alpha=0.3)
    return _png(figure)


def curves_png(histories: dict[str, dict], colour_of: dict[str, str], metric: str, title: str) -> Optional[bytes]:
    """Training loss (as is, and relative to its first epoch, which puts losses of different scales side by
    side) and the eval `metric` per epoch of every trial, one colour per value of `colour_of`."""
    if not any(h.get("epoch") for h in histories.values()):
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    palette = plt.get_cmap("tab10").colors
    values = list(dict.fromkeys(colour_of[name] for name in histories))
    colours = {value: palette[i % len(palette)] for i, value in enumerate(values)}
    eval_key = f"val_{metric}" if any(f"val_{metric}" in h for h in histories.values()) else metric
    figure, axes = plt.subplots(1, 3, figsize=(16, 4))
    for name, history in histories.items():
        epochs = history.get("epoch") or []
        colour = colours[colour_of[name]]
        losses = history.get("loss") or []
        relative = [v / losses[0] if v is not None and losses[0] else None for v in losses]
        for axis, series in zip(axes, (losses, relative, history.get(eval_key) or [])):
            if series:
                axis.plot(epochs, series, color=colour, alpha=0.75, linewidth=1.2, marker=".")
    labels = ("training loss", "training loss / its first epoch's",
              f"{'eval ' if eval_key.startswith('val_') else 'train '}{metric}")
    for axis, label in zip(axes, labels):
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(f"{label} {title}", fontsize=10)
        axis.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colours[v], label=v) for v in values]
    axes[2].legend(handles=handles, fontsize=7, loc="best")
    return _png(figure)


def panels_png(histories: dict[str, dict], group_of: dict[str, str], order: Sequence[str]) -> Optional[bytes]:
    """One small panel of training loss per group, its seeds overlaid."""
    groups = [g for g in order if any(group_of[n] == g for n in histories)]
    if len(groups) < 2:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    columns = min(4, len(groups))
    rows = math.ceil(len(groups) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False, sharey=True)
    for axis, group in zip(axes.flat, groups):
        for name, history in histories.items():
            if group_of[name] == group and history.get("loss"):
                axis.plot(history.get("epoch") or [], history["loss"], marker=".", linewidth=1)
        axis.set_title(group, fontsize=8)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(groups):]:
        axis.axis("off")
    figure.suptitle("training loss per epoch, each group's seeds", fontsize=9)
    return _png(figure)


def _img(png: Optional[bytes], alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{data_uri(png)}">' if png else ""


def render_comparison(title: str, metric: str, target: Optional[float], rows: Sequence[TrialRow],
                      summaries: Sequence[GroupSummary], verdict: str, chosen: str, chosen_blessing: dict,
                      histories: dict[str, dict], values: dict[str, dict], chosen_report: Optional[str],
                      sections: Sequence[tuple[str, str]] = ()) -> str:
    """The report as one HTML string. `values`: trial -> {swept key label: value text};
    `chosen_report`: a relative link to the chosen trial's evaluation report; `sections`: the task's
    own (heading, HTML) sections, placed before the table of trials."""
    direction = "lower is better" if lower_is_better(metric) else "higher is better"
    target_text = f"{metric} {'<=' if lower_is_better(metric) else '>='} {target} on the eval split" \
        if target is not None else "no target set (evaluate.target)"
    rank_of = {s.group: s.rank for s in summaries}
    group_rows = [(s.rank, s.group, s.metric.n, _pm(s.metric), _interval(s.metric),
                   ", ".join(f"#{rank_of[g]}" for g in s.tied_with) or "-",
                   _reached(s.epochs_to_target, len(s.trials)) if target is not None else "-",
                   _reached(s.seconds_to_target, len(s.trials), count=False) if target is not None else "-",
                   _pm(s.final_loss))
                  for s in summaries]
    order = [s.group for s in summaries]
    trial_rows = [(r.name, r.group, r.seed, r.value if r.value is not None else "-",
                   r.final_loss if r.final_loss is not None else "-",
                   r.epochs_to_target if r.epochs_to_target is not None else "-",
                   f"{r.seconds_to_target:.1f}" if r.seconds_to_target is not None else "-",
                   {True: "yes", False: "no"}.get(r.blessed, "-"))
                  for r in sorted(rows, key=lambda r: (order.index(r.group), r.seed))]
    blessed = chosen_blessing.get("blessed")
    link = f' (<a href="{html.escape(chosen_report)}">its evaluation report</a>)' if chosen_report else ""
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE} .verdict {{ font-size: 1.1em; max-width: 60em; }}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(rows)} trials in {len(summaries)} group(s); ranked by test {html.escape(metric)} ({direction}); "
        f"time to target: {html.escape(target_text)}.</p>",
        "<h2>Verdict</h2>", f'<p class="verdict">{html.escape(verdict)}</p>',
        f"<p>Exported if blessed: trial <b>{html.escape(chosen)}</b>{link}, the best seed of the best group: "
        + (f'<span class="blessed">blessed</span>' if blessed else '<span class="not-blessed">not blessed</span>')
        + "</p>",
        "<h2>Groups</h2>",
        _table(["rank", "group", "seeds", f"{metric} mean ± std", "95% t-interval", "overlaps (rank)",
                "epochs to target (reached)", "training seconds to target", "final training loss"], group_rows),
        "<p>Overlapping 95% t-intervals: the data do not order those groups. Seconds are training time on "
        "this machine, which is shared: compare them within one run.</p>",
        _img(intervals_png(summaries, rows, metric), "intervals"),
    ]
    labels = list(next(iter(values.values()), {}))
    for label in labels or [None]:
        colour_of = {n: (str(values[n].get(label)) if label else n) for n in histories}
        parts += [f"<h2>Curves by {html.escape(label or 'trial')}</h2>",
                  _img(curves_png(histories, colour_of, metric, f"by {label or 'trial'}"), f"curves by {label}")]
    group_of = {r.name: r.group for r in rows}
    parts.append(_img(panels_png(histories, group_of, order), "curves per group"))
    for heading, fragment in sections:
        parts += [f"<h2>{html.escape(heading)}</h2>", fragment]
    parts += ["<h2>Trials</h2>",
              _table(["trial", "group", "seed", f"test {metric}", "final training loss", "epochs to target",
                      "seconds to target", "blessed"], trial_rows),
              "</body></html>"]
    return "\n".join(p for p in parts if p)
