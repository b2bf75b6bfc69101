"""The multitask report: every head's metric, the learned task weights per epoch, the heads'
eval metrics per epoch with the schedule's phases, forgetting, sample predictions, and the
comparison of a sweep's trials (schemes) head by head.

HTML fragments and PNGs for components/reports/html.py's page (matplotlib, Agg), from metrics.json and
history.json as the multitask adapter writes them: `task_weight_<head>` (the multiplier on L_i:
w_i, exp(-s_i) or ½·exp(-s_i)) and `log_variance_<head>` (s_i) per epoch, `val_<head>_<metric>`
per epoch on the eval split.
"""
from __future__ import annotations

import html
import math
from typing import Mapping, Optional, Sequence

from components.reports.html import _png, _pyplot, image_html, table_html
from components.tasks.multitask_scores import HEADLINE, headline

COLOURS = {"classification": "tab:blue", "segmentation": "tab:orange", "detection": "tab:green",
           "regression": "tab:red"}


def _number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def heads_in(history: Mapping) -> list[str]:
    return [h for h in HEADLINE if f"task_weight_{h}" in history or f"val_{headline(h)}" in history]


# ------------------------------------------------------------------------------------------------
# one trial
# ------------------------------------------------------------------------------------------------
def heads_table(metrics: Mapping, heads: Sequence[str]) -> str:
    """Every scalar metric of each head on the test split, one row per metric."""
    rows = []
    for head in heads:
        for name, value in metrics.items():
            if name.startswith(head + "_") and isinstance(value, float) and not math.isnan(value):
                rows.append((head, name[len(head) + 1:], value))
    if not math.isnan(metrics.get("mean_head_score", math.nan)):
        rows.append(("all", "mean_head_score", metrics["mean_head_score"]))
    return table_html(["head", "metric", "value"], rows)


def weights_png(history: Mapping, title: str = "") -> Optional[bytes]:
    """The multiplier on each head's loss per epoch, and (uncertainty weighting) s_i = log σ_i²."""
    epochs = history.get("epoch") or []
    heads = [h for h in HEADLINE if history.get(f"task_weight_{h}")]
    if not epochs or not heads:
        return None
    learned = [h for h in heads if history.get(f"log_variance_{h}")]
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2 if learned else 1, figsize=(11 if learned else 5.5, 3.5), squeeze=False)
    for head in heads:
        axes[0][0].plot(epochs, history[f"task_weight_{head}"], marker=".", color=COLOURS[head], label=head)
        if learned:
            axes[0][1].plot(epochs, history.get(f"log_variance_{head}") or [], marker=".", color=COLOURS[head],
                            label=head)
    axes[0][0].set_title("task weight (multiplier on L_i)")
    if learned:
        axes[0][1].set_title("learned s_i = log σ_i²")
    if title:
        figure.suptitle(title, fontsize=10)
    for axis in axes[0]:
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return _png(figure)


def head_curves_png(history: Mapping, phase_ends: Optional[Mapping[str, int]] = None) -> Optional[bytes]:
    """Each head's headline metric on the eval split at the epochs it was measured; consecutive
    phases shaded."""
    epochs = history.get("epoch") or []
    heads = [h for h in HEADLINE if history.get(f"val_{headline(h)}")]
    if not epochs or not heads:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 3.8))
    for head in heads:
        points = [(e, v) for e, v in zip(epochs, history[f"val_{headline(head)}"]) if v is not None]
        axis.plot([e for e, _ in points], [v for _, v in points], marker=".", color=COLOURS[head],
                  label=headline(head))
    start = 0.5
    for head, end in (phase_ends or {}).items():
        axis.axvspan(start, end + 0.5, color=COLOURS[head], alpha=0.08)
        axis.text((start + end + 0.5) / 2, 0.02, f"{head} phase", ha="center", fontsize=7, transform=axis.get_xaxis_transform())
        start = end + 0.5
    axis.set_xlabel("epoch")
    axis.set_title("eval-split metric per head")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _png(figure)


def forgetting_html(rows: Sequence[Mapping], schedule: str) -> str:
    note = ("each task's metric at the end of its own phase minus at the end of training"
            if schedule == "consecutive" else
            "the same epochs as the consecutive schedule's phase ends (train.multitask.epochs_per_task), "
            "for comparison: each metric there minus at the end of training")
    table = table_html(["task", "metric", "phase end (epoch)", "value then", "final epoch", "value at the end",
                        "forgetting"], [(r["task"], r["metric"], r["phase_end_epoch"], r["at_phase_end"], r["final_epoch"],
                                         r["final"], r["forgetting"]) for r in rows])
    return (f"<p>Forgetting on the eval split ({html.escape(schedule)} schedule): {html.escape(note)}; "
            f"positive means the task got worse after that point.</p>" + table)


def per_class_tables(details: Mapping) -> list[tuple[str, str]]:
    from components.reports.html import confusion_matrix_png

    sections = []
    if "classification" in details:
        d = details["classification"]
        sections.append(("Classification head: per class and confusion matrix", table_html(
            ["class", "precision", "recall", "f1", "support"],
            [(n, v["precision"], v["recall"], v["f1"], v["support"]) for n, v in d["per_class"].items()])
            + image_html(confusion_matrix_png(d["confusion_matrix"], d["class_names"]), "confusion matrix")))
    if "segmentation" in details:
        d = details["segmentation"]
        sections.append(("Segmentation head: IoU per class", table_html(
            ["class", "IoU"], [(n, _number(v)) for n, v in d["per_class_iou"].items()])))
    if "detection" in details:
        d = details["detection"]
        sections.append(("Detection head: AP per class", table_html(
            ["class", "AP", "AP50", "AP75"], [(n, v.get("AP"), v.get("AP50"), v.get("AP75"))
                                             for n, v in d["per_class"].items()])))
    return sections


# ------------------------------------------------------------------------------------------------
# the trials of a sweep
# ------------------------------------------------------------------------------------------------
def trial_heads(trial: Mapping) -> list[str]:
    """The heads a trial trained, from trial.json's train.multitask (else model.params)."""
    params = trial.get("params") or {}
    section = (params.get("train") or {}).get("multitask") or {}
    heads = section.get("heads") or ((params.get("model") or {}).get("params") or {}).get("heads") or []
    return [heads] if isinstance(heads, str) else list(heads)


def scheme_of(trial: Mapping) -> str:
    """train.multitask.name, else e.g. "joint, uncertainty weighting" or "segmentation alone"."""
    section = ((trial.get("params") or {}).get("train") or {}).get("multitask") or {}
    if section.get("name"):
        return section["name"]
    heads = trial_heads(trial)
    if len(heads) == 1:
        return f"{heads[0]} alone"
    return f"{section.get('schedule', 'joint')}, {section.get('weighting', 'static')} weighting"


def comparison_sections(trials: Mapping[str, Mapping]) -> list[tuple[str, str]]:
    """Every head's test metric per trial, single-task baselines beside them, forgetting per
    trial, and the learned task weights over the epochs of every trial that learns them."""
    names = list(trials)
    heads = [h for h in HEADLINE if any(not math.isnan(float(trials[n]["metrics"].get(headline(h), math.nan)))
                                        for n in names)]
    alone = {n: trial_heads(trials[n]["trial"]) for n in names}
    alone = {n: h[0] for n, h in alone.items() if len(h) == 1}
    baseline = {}
    for name, head in alone.items():
        baseline.setdefault(head, float(trials[name]["metrics"].get(headline(head), math.nan)))
    rows = []
    for name in names:
        metrics = trials[name]["metrics"]
        row = [name, scheme_of(trials[name]["trial"])]
        for head in heads:
            value = float(metrics.get(headline(head), math.nan))
            text = _number(value)
            if head in baseline and not math.isnan(value) and name not in alone:
                sign = 1.0 if head != "regression" else -1.0
                text += f" ({sign * (value - baseline[head]):+.3f})"
            row.append(text)
        row.append(_number(metrics.get("mean_head_score")))
        rows.append(row)
    sections = [("Every head per scheme", "<p>Test split; in brackets the difference from the head's single-task "
                 "baseline (positive: better).</p>" + table_html(
                     ["trial", "scheme", *[headline(h) for h in heads], "mean_head_score"], rows))]

    forgetting = []
    for name in names:
        for row in trials[name]["metrics"].get("forgetting", {}).get("rows", []):
            forgetting.append((name, scheme_of(trials[name]["trial"]), row["task"], row["phase_end_epoch"],
                               row["at_phase_end"], row["final"], row["forgetting"]))
    if forgetting:
        sections.append(("Forgetting per scheme", "<p>Eval split: a task's metric at the end of its phase (consecutive; "
                         "the same epochs for the other schedules) minus at the end of training.</p>" + table_html(
                             ["trial", "scheme", "task", "epoch", "then", "at the end", "forgetting"], forgetting)))
    plots = [image_html(weights_png(trials[n]["history"], scheme_of(trials[n]["trial"])), f"task weights of {n}")
             for n in names
             if any(trials[n]["history"].get(f"log_variance_{h}") for h in HEADLINE)]
    if plots:
        sections.append(("Learned task weights per epoch", "".join(plots)))
    return sections
