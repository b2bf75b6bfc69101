"""evaluate: Examples + Model -> ModelEvaluation (metrics, predictions, report, blessing).

Runs the trained model on the test split and writes:
    metrics.json        accuracy, top-k accuracy, loss, macro and per-class precision/recall/F1,
                        confusion matrix
    predictions.jsonl   one line per test example: id, source, true, predicted, probability
    report.html         self-contained: training curves, confusion matrix, metric table, samples
    blessing.json       whether export may push this model, and why
    probe/              a few encoded test images export uses to check the SavedModel
The blessing needs every `evaluate.thresholds` entry met and, when a version is served under
`export.serving_root/export.model_name` and `evaluate.compare_with_served` is on, the metric
`evaluate.metric` not worse than the served model's on the same test split (within
`evaluate.served_tolerance`); the served model runs through its own `serving_default` signature.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.config import ConfigError, PipelineConfig
from pipeline.stage import ExecutionContext, Stage, StageError

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
REPORT_FILE = "report.html"
BLESSING_FILE = "blessing.json"
PROBE_DIR = "probe"
PROBE_COUNT = 8
SPLIT = "test"


def parameters(config: PipelineConfig) -> dict:
    evaluate = config.evaluate.model_dump(mode="json")
    return {"evaluate": evaluate, "served": _served_dir(config).as_posix() if config.evaluate.compare_with_served else None}


def check(config: PipelineConfig) -> None:
    from components.classification_metrics import metric_names

    known = metric_names(config.evaluate.top_k)
    unknown = [name for name in list(config.evaluate.thresholds) + [config.evaluate.metric] if name not in known]
    if config.ingest.task == "classification" and unknown:
        raise ConfigError(f"evaluate: unknown metric(s) {unknown} in evaluate.metric/evaluate.thresholds; "
                          f"expected one of {known}")


def _served_dir(config: PipelineConfig) -> Path:
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
    root = str(Path(config.pipeline.root).resolve())
    foreign = []
    for version in serving.versions(model_dir):
        info = serving.read_info(model_dir / str(version))
        if info.get("pipeline_root") != root:
            foreign.append([version, info.get("model_fingerprint") or (model_dir / str(version)).stat().st_mtime_ns])
    return hashlib.sha256(json.dumps(foreign).encode()).hexdigest()[:16] if foreign else ""


# ------------------------------------------------------------------------------------------------
# reading the test split with its raw bytes (the served model takes the bytes as clients send them)
# ------------------------------------------------------------------------------------------------
def read_split(examples_dir: str | Path, split: str) -> dict:
    import tensorflow as tf

    from components import examples as ex

    rows = {"id": [], "source": [], "encoded": [], "label": []}
    for path in ex.shard_files(examples_dir, split):
        for serialized in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            feature = tf.train.Example.FromString(serialized).features.feature
            rows["id"].append(feature[ex.ID].bytes_list.value[0].decode())
            rows["source"].append(feature[ex.SOURCE].bytes_list.value[0].decode() if ex.SOURCE in feature else "")
            rows["encoded"].append(feature[ex.IMAGE].bytes_list.value[0])
            labels = feature[ex.LABEL].int64_list.value if ex.LABEL in feature else []
            rows["label"].append(int(labels[0]) if labels else -1)
    return rows


def predict_probabilities(model, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    import tensorflow as tf

    outputs = [tf.nn.softmax(tf.cast(model(images[i:i + batch_size], training=False), tf.float32)).numpy()
               for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


# ------------------------------------------------------------------------------------------------
# blessing
# ------------------------------------------------------------------------------------------------
def bless(config: PipelineConfig, metrics: dict, test: dict, log) -> dict:
    from components import serving
    from components.classification_metrics import classification_metrics, not_worse

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
            outputs = serving.ServedModel(path).classify_bytes(test["encoded"])
            served_metrics = classification_metrics(test["label"], outputs["probabilities"], metrics["class_names"],
                                                    evaluate.top_k)
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
    from components import serving
    from components.classification_metrics import classification_metrics
    from components.model_artifact import HISTORY_FILE, TRIAL_FILE, load_keras_model, read_json
    from components.report import render_report

    config = ctx.config
    examples_dir, model_dir = ctx.inputs["examples"].uri, ctx.inputs["model"].uri
    out = Path(ctx.outputs["evaluation"])
    schema = ex.read_schema(examples_dir)
    if schema.get("task") != "classification":
        raise StageError(f"evaluate: expected a classification Examples artifact, got task {schema.get('task')!r} "
                         f"in {Path(examples_dir) / ex.SCHEMA_FILE}")
    class_names = schema["class_names"]
    test = read_split(examples_dir, SPLIT)
    if not test["id"]:
        raise StageError(f"evaluate: the {SPLIT} split of {examples_dir} is empty; nothing to evaluate on")
    bad = sorted({label for label in test["label"] if not 0 <= label < len(class_names)})
    if bad:
        raise StageError(f"evaluate: {SPLIT} labels {bad} are outside 0..{len(class_names) - 1} ({examples_dir})")

    model = load_keras_model(model_dir)
    images = serving.decode_images(test["encoded"], schema["image_size"])
    probabilities = predict_probabilities(model, images)
    metrics = classification_metrics(test["label"], probabilities, class_names, config.evaluate.top_k)
    ctx.log.info("test split (%d examples): accuracy %.4f, top-%d accuracy %.4f, loss %.4f", metrics["num_examples"],
                 metrics["accuracy"], metrics["top_k"], metrics[f"top_{metrics['top_k']}_accuracy"], metrics["loss"])

    predicted = probabilities.argmax(axis=1)
    with open(out / PREDICTIONS_FILE, "w") as handle:
        for i, example_id in enumerate(test["id"]):
            handle.write(json.dumps({
                "id": example_id, "source": test["source"][i],
                "true": class_names[test["label"][i]], "true_id": test["label"][i],
                "predicted": class_names[predicted[i]], "predicted_id": int(predicted[i]),
                "probability": float(probabilities[i, predicted[i]]),
            }) + "\n")
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))

    blessing = bless(config, metrics, test, ctx.log)
    blessing["model_fingerprint"] = ctx.inputs["model"].fingerprint
    (out / BLESSING_FILE).write_text(json.dumps(blessing, indent=2))
    ctx.log.info("blessing: %s (%s)", "blessed" if blessing["blessed"] else "NOT blessed",
                 "; ".join(f"{c['kind']} {c['metric']}={c['value']:.4f} vs {c['reference']}: "
                           f"{'pass' if c['passed'] else 'fail'}" for c in blessing["checks"]))

    probe = out / PROBE_DIR
    probe.mkdir(exist_ok=True)
    for i, data in enumerate(test["encoded"][:PROBE_COUNT]):
        (probe / f"{i:03d}.{_extension(data)}").write_bytes(data)

    history = _optional_json(model_dir, HISTORY_FILE, read_json)
    trial = _optional_json(model_dir, TRIAL_FILE, read_json)
    count = min(config.evaluate.num_sample_images, len(test["id"]))
    samples = {"images": images[:count], "true": test["label"][:count], "predicted": predicted[:count],
               "probability": probabilities[np.arange(count), predicted[:count]]}
    title = f"{config.pipeline.name}: evaluation of {trial.get('name', 'the trained model') if trial else 'the trained model'}"
    (out / REPORT_FILE).write_text(render_report(title, metrics, history or {}, blessing, samples, trial))
    ctx.properties["evaluation"] = {"blessed": blessing["blessed"], "metric": config.evaluate.metric,
                                    "value": metrics[config.evaluate.metric], "accuracy": metrics["accuracy"]}


def _extension(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"\xff\xd8":
        return "jpg"
    return "img"


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
)
