"""export: Model + ModelEvaluation -> PushedModel (a new TF Serving version, when blessed).

Only a blessed model is pushed; otherwise the stage records why not and succeeds. The SavedModel
(signatures from the task's adapter, components/tasks/, by trial.json's "task") is written into
`<serving_root>/<model_name>/.tmp-*`, on the same filesystem as its final place, then loaded in a
fresh Python process and run on the evaluation's probe inputs through every signature; only when
every output is within `export.tolerance` of the Keras model's is the directory renamed to the
next numeric version. On a remote serving root (s3://) the next number is claimed on the bucket
with a conditional put (pipeline/version_claims.py), the version uploaded with saved_model.pb
last, and the local mirror's copy renamed to that number.
TF Serving loads any numeric directory it sees, half-copied or not (tensorflow/serving#1086), so
a version appears complete or not at all. A failed check removes the temporary directory.

`export.formats` may add `model.tflite` and `model.onnx` to the version (components/export/):
each is converted from the float signature, run in a fresh process by its own runtime on the same
probe inputs and compared with the Keras model; its largest difference is written into the
version's `assets.extra/convpipe.json` ("formats") and pushed.json, and a format past its
`export.format_tolerance` stops the push.

Output `pushed.json`: {"pushed", "version", "path", "max_abs_difference", "formats", "reason"}.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path


from pipeline import filesystem
from pipeline.config import ConfigError, PipelineConfig
from pipeline.stage import ExecutionContext, Stage, StageError

PUSHED_FILE = "pushed.json"


def parameters(config: PipelineConfig) -> dict:
    return {"export": config.export.model_dump(mode="json"), "root": filesystem.root_label(config.pipeline.root)}


def _record(ctx: ExecutionContext, result: dict) -> None:
    (Path(ctx.outputs["pushed"]) / PUSHED_FILE).write_text(json.dumps(result, indent=2))
    ctx.properties["pushed"] = {k: v for k, v in result.items() if k in ("pushed", "version", "path", "reason")}


def next_version_dir(model_dir: Path, temporary: Path) -> Path:
    """Rename `temporary` to the next free numeric version; retries if another exporter took it."""
    from components import serving

    for _ in range(100):
        version = (serving.versions(model_dir) or [0])[-1] + 1
        target = model_dir / str(version)
        try:
            os.rename(temporary, target)  # atomic on one filesystem; fails if target exists and is non-empty
            return target
        except OSError:
            if not target.exists():
                raise
    raise StageError(f"export: could not claim a free version number under {model_dir}")


def executor(ctx: ExecutionContext) -> None:
    from components import serving
    from components.training.model_artifact import TRIAL_FILE, load_keras_model, read_json
    from components.tasks import get_task
    from components.tasks.base import ExportMismatch

    config = ctx.config
    evaluation_dir, model_dir = Path(ctx.inputs["evaluation"].uri), Path(ctx.inputs["model"].uri)
    blessing = json.loads((evaluation_dir / "blessing.json").read_text())
    if not blessing.get("blessed"):
        failed = [f"{c['kind']} {c['metric']}" for c in blessing.get("checks", []) if not c.get("passed")]
        reason = "not blessed: failed " + ", ".join(failed) if failed else "not blessed"
        ctx.log.info("export: nothing pushed (%s)", reason)
        _record(ctx, {"pushed": False, "reason": reason})
        return

    remote = filesystem.is_url(config.export.serving_root)
    model_url = f"{config.export.serving_root.rstrip('/')}/{config.export.model_name}"
    # A remote serving root: versions are checked in a local mirror, then pushed (saved_model.pb last).
    serving_dir = filesystem.sync_served(model_url) if remote else Path(config.export.serving_root) / config.export.model_name
    shown = model_url if remote else str(serving_dir)
    model_fingerprint = ctx.inputs["model"].fingerprint
    existing = serving.versions(serving_dir)
    if existing and serving.read_info(serving_dir / str(existing[-1])).get("model_fingerprint") == model_fingerprint:
        version = existing[-1]
        ctx.log.info("export: this model is already served as version %d", version)
        _record(ctx, {"pushed": False, "version": version, "path": f"{shown}/{version}",
                      "reason": f"already served as version {version}"})
        return

    trial = read_json(model_dir, TRIAL_FILE)
    task = get_task(trial.get("task", "classification"))
    model = load_keras_model(model_dir)
    probe_dir = evaluation_dir / "probe"
    if not probe_dir.is_dir() or not any(probe_dir.iterdir()):
        raise StageError(f"export: {probe_dir} holds no test inputs to check the export with")
    model_info = {"task": task.name, "class_names": trial["class_names"], "input_shape": trial["input_shape"]}

    serving_dir.mkdir(parents=True, exist_ok=True)
    temporary = serving_dir / f".tmp-{ctx.execution_id}-{uuid.uuid4().hex[:8]}"
    info = {"model_fingerprint": model_fingerprint, "pipeline_root": filesystem.root_label(config.pipeline.root),
            "run_id": ctx.run_id, "execution_id": ctx.execution_id, **model_info,
            "image_size": trial["input_shape"][-3:], "evaluation": {blessing["metric"]: blessing["value"]},
            "max_detections": config.export.max_detections,  # detectors pad their outputs to it
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    info.update(task.serving_info(info))
    try:
        serving.write_archive(task.export_archive(model, info), temporary, info)
        try:
            differences = task.check_export(temporary, model, probe_dir, info, Path(ctx.work_dir) / "probe")
        except ExportMismatch as exc:
            raise StageError(f"export: {exc}; nothing was pushed") from exc
        tolerance = config.export.tolerance
        if max(differences.values()) >= tolerance:
            raise StageError(f"export: the SavedModel loaded in a fresh process disagrees with the Keras model on "
                             f"the probe inputs: max |difference| of outputs {differences} "
                             f"(expected < export.tolerance = {tolerance}); nothing was pushed")
        formats = _write_formats(ctx, temporary, model, task, probe_dir, info)
        if remote:  # the number is claimed on the bucket (atomic there), then the mirror takes it
            version, target = filesystem.push_version(temporary, model_url)
            mirrored = serving_dir / str(version)
            shutil.rmtree(mirrored, ignore_errors=True)
            os.rename(temporary, mirrored)
        else:
            target = next_version_dir(serving_dir, temporary)
            version = int(target.name)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    ctx.log.info("export: pushed version %d to %s (max |difference| %.2g)", version, target, max(differences.values()))
    _record(ctx, {"pushed": True, "version": version, "path": str(target), "max_abs_difference": differences,
                  "signatures": list(task.signatures),
                  "formats": {"saved_model": {"max_abs_difference": differences}, **formats}})


def _write_formats(ctx: ExecutionContext, temporary: Path, model, task, probe_dir: Path, info: dict) -> dict:
    """export.formats besides the SavedModel (components/export/formats.py), written into the
    temporary version directory, so they are renamed into place with it or not at all."""
    from components import serving
    from components.export.formats import FormatRefused, record_in_info, write_formats

    section = ctx.config.export
    if section.formats == ["saved_model"]:
        return {}
    encoded = [p.read_bytes() for p in sorted(probe_dir.iterdir()) if p.is_file()]
    images = task.decode_inputs(encoded, {"image_size": info["input_shape"]})
    try:
        described = write_formats(section.formats, temporary, model, task, info, images, section,
                                  Path(ctx.work_dir) / "formats", ctx.log)
    except FormatRefused as exc:
        raise StageError(f"export: {exc}; nothing was pushed") from exc
    record_in_info(temporary, serving.INFO_FILE, described)
    return described


def check(config: PipelineConfig) -> None:
    """TFLite and ONNX take float images: refused at once for a task whose inputs are not images."""
    from components.export.formats import IMAGE_TASKS

    extra = [f for f in config.export.formats if f != "saved_model"]
    if extra and config.ingest.task not in IMAGE_TASKS:
        raise ConfigError(f"export.formats: {extra} convert image models ({', '.join(IMAGE_TASKS)}); "
                          f"ingest.task is {config.ingest.task!r}, exported as saved_model only")


STAGE = Stage(
    name="export",
    inputs={"model": "train.model", "evaluation": "evaluate.evaluation"},
    outputs={"pushed": "PushedModel"},
    executor=executor,
    parameters=parameters,
    check=check,
    module=__name__,
)
