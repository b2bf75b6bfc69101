"""evaluate: Examples + Model -> ModelEvaluation (metrics, predictions, report, blessing).

Runs the trained model on the test split through the task's adapter (components/tasks/, by
schema["task"]) and writes:
    metrics.json        the task's metrics (classification: accuracy, top-k accuracy, loss, macro
                        and per-class precision/recall/F1, confusion matrix)
    predictions.jsonl   one line per test example: id, source, and the task's prediction
    report.html         self-contained: the task's sections, training curves, the trial
    blessing.json       whether export may push this model, and why
    probe/              a few encoded test inputs export uses to check the SavedModel
The blessing needs every `evaluate.thresholds` entry met and, when a version is served under
`export.serving_root/export.model_name` and `evaluate.compare_with_served` is on, the metric
`evaluate.metric` not worse than the served model's on the same test split (within
`evaluate.served_tolerance`); the served model runs through its own `serving_default` signature.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Optional

from components.tasks.classification import read_split  # noqa: F401  (tests and tools read splits from here)
from pipeline import filesystem
from pipeline.config import ConfigError, PipelineConfig
from pipeline.stage import ExecutionContext, Stage, StageError

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"  # written by the task adapter (components/tasks/base.py)
REPORT_FILE = "report.html"
BLESSING_FILE = "blessing.json"
PROBE_DIR = "probe"
PROBE_COUNT = 8
SPLIT = "test"


def parameters(config: PipelineConfig) -> dict:
    evaluate = config.evaluate.model_dump(mode="json")
    return {"evaluate": evaluate, "served": _served_name(config) if config.evaluate.compare_with_served else None}


def check(config: PipelineConfig) -> None:
    from components.tasks import get_task

    try:
        known = get_task(config.ingest.task).known_metrics(config.evaluate)
    except NotImplementedError:
        known = None
    unknown = [name for name in list(config.evaluate.thresholds) + [config.evaluate.metric] if name not in (known or [])]
    if known is not None and unknown:
        raise ConfigError(f"evaluate: unknown metric(s) {unknown} in evaluate.metric/evaluate.thresholds; "
                          f"expected one of {known}")


def _served_name(config: PipelineConfig) -> str:
    """The model directory as configured (a path or a URL): what enters the cache key."""
    if filesystem.is_url(config.export.serving_root):
        return f"{config.export.serving_root.rstrip('/')}/{config.export.model_name}"
    return (Path(config.export.serving_root) / config.export.model_name).as_posix()


def _served_dir(config: PipelineConfig) -> Path:
    """The model directory on this machine: the configured one, or the local mirror of a remote one."""
    if filesystem.is_url(config.export.serving_root):
        return filesystem.sync_served(_served_name(config))
    return Path(config.export.serving_root) / config.export.model_name


def served_fingerprint(config: PipelineConfig) -> str:
    """Changes when a model from outside this pipeline root is served: then the cached blessing is stale.

    Versions this root exported are left out; each was exported from an evaluation that was
    already compared, and counting them would re-evaluate after every export.
    """
    if not config.evaluate.compare_with_served:
        return ""
    from components import serving

    model_dir = _served_dir(config)
    root = filesystem.root_label(config.pipeline.root)
    foreign = []
    for version in serving.versions(model_dir):
        info = serving.read_info(model_dir / str(version))
        if info.get("pipeline_root") != root:
            foreign.append([version, info.get("model_fingerprint") or (model_dir / str(version)).stat().st_mtime_ns])
    return hashlib.sha256(json.dumps(foreign).encode()).hexdigest()[:16] if foreign else ""


# ------------------------------------------------------------------------------------------------
# blessing
# ------------------------------------------------------------------------------------------------
def bless(config: PipelineConfig, metrics: dict, task, test: dict, schema: dict, log) -> dict:
    from components import serving
    from components.tasks.classification_metrics import not_worse

    evaluate = config.evaluate
    checks = []
    for name, threshold in evaluate.thresholds.items():
        value = metrics[name]
        checks.append({"kind": "threshold", "metric": name, "value": value, "reference": threshold,
                       "passed": not_worse(name, value, threshold, 0.0),
                       "detail": f"{name} {'<=' if name.endswith('loss') else '>='} {threshold}"})
    served = None
    model_dir = _served_dir(config)
    if evaluate.compare_with_served and serving.versions(model_dir):
        path = serving.version_dir(model_dir)
        metric = evaluate.metric
        try:
            served_metrics = task.evaluate_served(path, test, schema, evaluate)
            served = {"version": int(path.name), "path": str(path), "metrics": served_metrics}
            checks.append({"kind": "served", "metric": metric, "value": metrics[metric],
                           "reference": served_metrics[metric], "passed": not_worse(
                               metric, metrics[metric], served_metrics[metric], evaluate.served_tolerance),
                           "detail": f"served version {path.name}, tolerance {evaluate.served_tolerance}"})
            log.info("served version %s: %s = %.4f; this model: %.4f", path.name, metric,
                     served_metrics[metric], metrics[metric])
        except Exception as exc:  # an unreadable or incompatible served model: do not replace it blindly
            checks.append({"kind": "served", "metric": metric, "value": metrics[metric], "reference": None,
                           "passed": False, "detail": f"could not run served version {path.name}: {exc}. Set "
                           f"evaluate.compare_with_served=false to export without the comparison"})
    return {"blessed": all(c["passed"] for c in checks), "metric": evaluate.metric,
            "value": metrics[evaluate.metric], "checks": checks,
            "served": {"version": served["version"], "path": served["path"],
                       evaluate.metric: served["metrics"][evaluate.metric]} if served else None}


# ------------------------------------------------------------------------------------------------
# the executor
# ------------------------------------------------------------------------------------------------
def executor(ctx: ExecutionContext) -> None:
    from components import examples as ex
    from components.training.model_artifact import HISTORY_FILE, TRIAL_FILE, load_keras_model, read_json
    from components.reports.html import render_page
    from components.tasks import get_task

    config = ctx.config
    examples_dir, model_dir = ctx.inputs["examples"].uri, ctx.inputs["model"].uri
    out = Path(ctx.outputs["evaluation"])
    schema = ex.read_schema(examples_dir)
    task = get_task(schema.get("task", "classification"))
    try:
        test = task.read_test(examples_dir, schema)
    except ValueError as exc:
        raise StageError(f"evaluate: {exc}") from exc
    if not test["id"]:
        raise StageError(f"evaluate: the {SPLIT} split of {examples_dir} is empty; nothing to evaluate on")

    model = load_keras_model(model_dir)
    history = _optional_json(model_dir, HISTORY_FILE, read_json)
    trial = _optional_json(model_dir, TRIAL_FILE, read_json)
    ctx.log.info("evaluate: scoring %d test examples", len(test["id"]))
    started = time.monotonic()
    evaluation = task.evaluate(model, test, schema, config.evaluate, out)
    seconds = time.monotonic() - started
    ctx.log.info("evaluate: %d test examples scored in %.1f s (%.0f examples/s, report included)",
                 len(test["id"]), seconds, len(test["id"]) / seconds if seconds > 0 else 0.0)
    training = task.evaluate_training(history or {}, trial or {})
    evaluation.metrics.update(training.metrics)
    evaluation.sections.extend(training.sections)
    metrics = evaluation.metrics
    ctx.log.info("%s", evaluation.summary)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))

    blessing = bless(config, metrics, task, test, schema, ctx.log)
    blessing["model_fingerprint"] = ctx.inputs["model"].fingerprint
    (out / BLESSING_FILE).write_text(json.dumps(blessing, indent=2))
    ctx.log.info("blessing: %s (%s)", "blessed" if blessing["blessed"] else "NOT blessed",
                 "; ".join(f"{c['kind']} {c['metric']}={c['value']:.4f} vs {c['reference']}: "
                           f"{'pass' if c['passed'] else 'fail'}" for c in blessing["checks"]))
    task.write_probe(test, out / PROBE_DIR, PROBE_COUNT)

    title = f"{config.pipeline.name}: evaluation of {trial.get('name', 'the trained model') if trial else 'the trained model'}"
    (out / REPORT_FILE).write_text(render_page(title, blessing, evaluation.sections, history or {}, trial))
    ctx.properties["evaluation"] = {"blessed": blessing["blessed"], "metric": config.evaluate.metric,
                                    "value": metrics[config.evaluate.metric],
                                    **({"accuracy": metrics["accuracy"]} if "accuracy" in metrics else {})}


def _optional_json(directory, name, reader) -> Optional[dict]:
    try:
        return reader(directory, name)
    except FileNotFoundError:
        return None


STAGE = Stage(
    name="evaluate",
    inputs={"examples": "augment.examples", "model": "train.model"},
    outputs={"evaluation": "ModelEvaluation"},
    executor=executor,
    parameters=parameters,
    check=check,
    external_fingerprint=served_fingerprint,
    module=__name__,
    per_trial=True,              # once per trial of a sweep; compare then gathers them
)
