"""compare: every trial's Model and ModelEvaluation -> TrialComparison, and the trial to export.

The train stage runs once per trial of `train.sweep` x `train.seeds` and evaluate once per trial
(pipeline/runner.py); this stage gathers them all. Per group of trials that differ only by seed
it computes the mean and standard deviation over seeds of `evaluate.metric` on the test split,
the epochs and training seconds until the eval metric first reached `evaluate.target`, and the
final training loss; it ranks the groups and says where their 95% t-intervals overlap, instead of
naming a winner on noise (components/compare/comparison.py). It chooses the best seed of the best group
(`ctx.chosen_trial`), so export receives that trial's model and evaluation (with its blessing).

Outputs:
    comparison.json   the trials, the groups in rank order, the verdict, the chosen trial
    report.html       the comparison section (components/compare/report.py), self-contained
Each trial's TensorBoard run gets its test metrics (`test/epoch_<metric>`) and its time to target
(`comparison/`) once, so the HParams dashboard shows them as that trial's metrics.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

from pipeline import filesystem
from pipeline.config import PipelineConfig
from pipeline.stage import ExecutionContext, Stage, StageError

COMPARISON_FILE = "comparison.json"
REPORT_FILE = "report.html"


def parameters(config: PipelineConfig) -> dict:
    """The ranking metric and target, and the sweep (it names the groups and the swept keys)."""
    return {"metric": config.evaluate.metric, "target": config.evaluate.target, "sweep": config.train.sweep,
            "seeds": config.train.seeds}


def _read(directory: Path, name: str) -> Optional[dict]:
    try:
        return json.loads((Path(directory) / name).read_text())
    except FileNotFoundError:
        return None


def trial_rows(ctx: ExecutionContext) -> tuple[list, dict, dict, dict]:
    """(rows, histories, swept values, extras) per trial, from the gathered artifacts."""
    from components.compare.comparison import TrialRow, reach
    from components.training.model_artifact import HISTORY_FILE, TRIAL_FILE
    from pipeline.sweep import expand, value_text

    metric, target = ctx.config.evaluate.metric, ctx.config.evaluate.target
    models, evaluations = ctx.trials["model"], ctx.trials["evaluation"]
    missing = sorted(set(models) ^ set(evaluations))
    if missing:
        raise StageError(f"compare: trials {missing} have a model but no evaluation, or the other way round")
    sweep = {t.name: t for t in expand(ctx.config)}
    rows, histories, values, extras = [], {}, {}, {}
    for name in models:
        metrics = _read(evaluations[name].uri, "metrics.json") or {}
        blessing = _read(evaluations[name].uri, "blessing.json") or {}
        history = (_read(models[name].uri, HISTORY_FILE) or {}).get("history", {})
        trial = _read(models[name].uri, TRIAL_FILE) or {}
        value = _number(metrics.get(metric))
        if value is None:
            ctx.log.warning("compare: %s (trial %s) has no number %r (evaluate.metric); it has %s; the trial is "
                            "ranked last", Path(evaluations[name].uri) / "metrics.json", name, metric, sorted(metrics))
        losses = [v for v in history.get("loss") or [] if v is not None]
        epochs, seconds = reach(history, metric, target)
        info = sweep.get(name)
        seed = info.seed if info else trial.get("params", {}).get("train", {}).get("seed", ctx.config.train.seed)
        rows.append(TrialRow(name, info.group if info else name, seed, value, losses[-1] if losses else None,
                             epochs, seconds, blessing.get("blessed")))
        histories[name] = history
        values[name] = {label: value_text(v) for label, v in info.values.items()} if info else {}
        extras[name] = {"metrics": metrics, "blessing": blessing, "trial": trial}
    return rows, histories, values, extras


def _number(value) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def task_sections(task: str, rows, histories: dict, values: dict, extras: dict) -> list:
    """The task's own comparison sections (e.g. every head of a multitask model), as (heading, HTML)."""
    from components.tasks import get_task

    trials = {r.name: {"metrics": extras[r.name]["metrics"], "history": histories[r.name],
                       "trial": extras[r.name]["trial"], "values": values[r.name]} for r in rows}
    return list(get_task(task).comparison_sections(trials))


def local_logdir(config: PipelineConfig, recorded: Optional[str]) -> Optional[Path]:
    """A trial's TensorBoard run directory on this machine: the one trial.json records, or, on a remote
    root (whose runs copy `tensorboard/` to the bucket), that run's directory fetched from the bucket
    into this machine's working copy, when train ran on another machine. None when there is none."""
    if not recorded:
        return None
    if Path(recorded).is_dir():
        return Path(recorded)
    if config.pipeline.tensorboard_root or not filesystem.is_url(config.pipeline.root):
        return None
    target = filesystem.RemoteRoot(config.pipeline.root).get_tree(f"tensorboard/{Path(recorded).name}")
    if not any(target.iterdir()):
        target.rmdir()
        return None
    return target


def log_to_tensorboard(rows, extras: dict, log, config: PipelineConfig) -> int:
    """Test metrics and time to target into each trial's TensorBoard run (once); returns how many runs."""
    from components.training.tensorboard import final_metrics

    written = 0
    for row in rows:
        extra = extras[row.name]
        logdir = local_logdir(config, extra["trial"].get("tensorboard_dir"))
        if logdir is None:
            continue
        step = int(extra["trial"].get("epochs_run") or 0)
        test = {f"epoch_{k}": float(v) for k, v in extra["metrics"].items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "num_examples"}
        comparison = {k: float(v) for k, v in (("epochs_to_target", row.epochs_to_target),
                                               ("seconds_to_target", row.seconds_to_target),
                                               ("final_train_loss", row.final_loss)) if v is not None}
        wrote_test = final_metrics(logdir, "test", step, test)
        wrote_comparison = final_metrics(logdir, "comparison", step, comparison) if comparison else False
        written += wrote_test or wrote_comparison
    if written:
        log.info("compare: test metrics written to %d trial(s)' TensorBoard runs", written)
    return written


def executor(ctx: ExecutionContext) -> None:
    from components.compare.report import render_comparison
    from components.compare.comparison import best_trial, summarize, verdict

    config = ctx.config
    metric, target = config.evaluate.metric, config.evaluate.target
    rows, histories, values, extras = trial_rows(ctx)
    summaries = summarize(rows, metric)
    chosen = best_trial(rows, summaries, metric)
    if chosen is None and len(rows) == 1:
        chosen = rows[0].name
    if chosen is None:
        raise StageError(f"compare: no trial's metrics.json has a number {metric!r} (evaluate.metric) to rank by; "
                         f"trials: {', '.join(r.name for r in rows)}")
    sentence = verdict(summaries, metric)
    ctx.log.info("compare: %s", sentence)
    chosen_value = next(r.value for r in rows if r.name == chosen)
    ctx.log.info("compare: chose trial %s (%s %s)", chosen, metric,
                 "-" if chosen_value is None else f"{chosen_value:.4f}")

    out = Path(ctx.outputs["comparison"])
    document = {
        "metric": metric, "target": target, "verdict": sentence, "chosen_trial": chosen,
        "groups": [{"rank": s.rank, "group": s.group, "trials": s.trials, "tied_with": s.tied_with,
                    "reached_target": s.reached, **{
                        name: {"n": sp.n, "mean": sp.mean, "std": sp.std, "half_width_95": sp.half_width}
                        for name, sp in (("metric", s.metric), ("final_loss", s.final_loss),
                                         ("epochs_to_target", s.epochs_to_target),
                                         ("seconds_to_target", s.seconds_to_target))}} for s in summaries],
        "trials": [{"trial": r.name, "group": r.group, "seed": r.seed, "values": values[r.name], metric: r.value,
                    "final_loss": r.final_loss, "epochs_to_target": r.epochs_to_target,
                    "seconds_to_target": r.seconds_to_target, "blessed": r.blessed,
                    "model": str(ctx.trials["model"][r.name].uri),
                    "evaluation": str(ctx.trials["evaluation"][r.name].uri)} for r in rows],
    }
    (out / COMPARISON_FILE).write_text(json.dumps(document, indent=2))
    chosen_report = Path(ctx.trials["evaluation"][chosen].uri) / REPORT_FILE
    link = os.path.relpath(chosen_report, out) if chosen_report.exists() else None
    title = f"{config.pipeline.name}: comparison of {len(rows)} trials by {metric}"
    (out / REPORT_FILE).write_text(render_comparison(
        title, metric, target, rows, summaries, sentence, chosen, extras[chosen]["blessing"], histories, values, link,
        task_sections(config.ingest.task, rows, histories, values, extras)))
    log_to_tensorboard(rows, extras, ctx.log, config)

    ctx.chosen_trial = chosen
    ctx.properties["comparison"] = {"metric": metric, "value": chosen_value,
                                    "best_group": summaries[0].group, "groups": len(summaries), "trials": len(rows),
                                    "tied_with_best": summaries[0].tied_with}


STAGE = Stage(
    name="compare",
    inputs={"model": "train.model", "evaluation": "evaluate.evaluation"},
    outputs={"comparison": "TrialComparison"},
    executor=executor,
    parameters=parameters,
    gathers=("model", "evaluation"),
    module=__name__,
)
