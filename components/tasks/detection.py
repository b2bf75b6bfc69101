"""Object detection: boxes, classes and scores per image, from any registered "detector".

Training: the one-stage detector trains through the registered "detection" loss on its raw
outputs, the two-stage and sliding-window detectors through their own `compute_loss` (train.loss
"detector"); the loop logs the loss only. Crowd regions (COCO `iscrowd`, `image/object/is_crowd`)
reach the loop with label -1 (components/examples/), so no loss ever trains on them, and this
adapter hands the model only "boxes" and "labels".

Evaluation: every test image through `model.detect` (score >= SCORE_THRESHOLD, per-class NMS at
IOU_THRESHOLD, at most EVAL_MAX_DETECTIONS = COCO's 100 per image), then COCO's numbers
(models/detection/metrics.py: mAP@[.50:.95], AP50, AP75, size buckets, AR, per-class AP) with the
crowd regions matched as ignore. predictions.jsonl holds one line per image: id, source, boxes
(rel_xyxy), scores, classes (ids and names), and the true boxes.

SavedModel signatures (NMS runs inside, through the model's own `detect`):
  serving_default(image_bytes: string [batch])   PNG/JPEG/GIF/BMP, decoded and resized inside
  serving_images(images: float32 [batch, H, W, C] in [0, 1])
both -> boxes_xyxy [batch, D, 4] (normalised xmin, ymin, xmax, ymax), scores [batch, D],
        classes [batch, D] int32, num_detections [batch] int32; rows past num_detections are zeros,
        D = export.max_detections (recorded in convpipe.json with the thresholds).
A served model is evaluated through serving_default, so it is held to its own D detections.

Comparing methods: each detector takes its own parameters, so `model.params.by_stage` may hold
one parameter set per stage ({"one": {...}, "two": {...}, "sliding_window": {...}}); the entry of
`model.params.stage` is merged over the other params when the model is built (`stage_params`).
A sweep over `model.params.stage` then trains each method with its own settings
(configs/detection_compare.json), and the compare stage ranks them by mAP on the same test split,
with `comparison_sections` adding the COCO numbers and per-class AP side by side. `side_by_side`
builds that table from the evaluations of separate runs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from components.tasks.base import PREDICTIONS_FILE, Evaluation, ExportMismatch, TaskAdapter, keras_replica_loss

BYTES_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "serving_images"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
OUTPUTS = ("boxes_xyxy", "scores", "classes", "num_detections")
SCORE_THRESHOLD = 0.05
"""Lowest score kept by `detect`, in evaluation and in the SavedModel (COCO practice)."""
IOU_THRESHOLD = 0.5
"""Per-class NMS overlap."""
EVAL_MAX_DETECTIONS = 100
"""COCO's largest maxDets: detections per image the evaluation scores."""
DEFAULT_MAX_DETECTIONS = 20
"""export.max_detections's default, for an `info` without "max_detections"."""
DISPLAY_SCORE = 0.3
"""Detections drawn on report and TensorBoard images."""


# ------------------------------------------------------------------------------------------------
# the test split
# ------------------------------------------------------------------------------------------------
def read_boxes_split(examples_dir: str | Path, split: str) -> dict:
    """{"id", "source", "encoded" (image bytes as stored), "boxes" [G, 4] rel_xyxy, "labels" [G],
    "crowd" [G] bool} lists of one split; crowd regions are among the boxes, flagged."""
    import tensorflow as tf

    from components import examples as ex

    rows = {"id": [], "source": [], "encoded": [], "boxes": [], "labels": [], "crowd": []}
    for path in ex.shard_files(examples_dir, split):
        for serialized in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            feature = tf.train.Example.FromString(serialized).features.feature
            example_id = feature[ex.ID].bytes_list.value[0].decode()
            columns = [np.asarray(feature[k].float_list.value, np.float32) for k in ex.BOX_KEYS]
            labels = np.asarray(feature[ex.BOX_LABEL].int64_list.value, np.int64)
            crowd = np.asarray(feature[ex.BOX_CROWD].int64_list.value, bool) if ex.BOX_CROWD in feature \
                else np.zeros(len(labels), bool)
            if not len(columns[0]) == len(labels) == len(crowd):
                raise ValueError(f"{path}: example {example_id!r} has {len(columns[0])} boxes, {len(labels)} labels "
                                 f"and {len(crowd)} crowd flags; expected one of each per box")
            rows["id"].append(example_id)
            rows["source"].append(feature[ex.SOURCE].bytes_list.value[0].decode() if ex.SOURCE in feature else "")
            rows["encoded"].append(feature[ex.IMAGE].bytes_list.value[0])
            rows["boxes"].append(np.stack(columns, -1).reshape(-1, 4))
            rows["labels"].append(labels)
            rows["crowd"].append(crowd)
    return rows


def check_box_labels(labels: Sequence[np.ndarray], class_names: Sequence[str], where: str) -> None:
    bad = sorted({int(v) for row in labels for v in row if not 0 <= v < len(class_names)})
    if bad:
        raise ValueError(f"test box labels {bad} are outside 0..{len(class_names) - 1} ({where})")


def stage_params(params: Mapping) -> dict:
    """`model.params` with `by_stage` resolved: the entry of params["stage"] (default "one") merged
    over the other keys. Without `by_stage`, the params as they are."""
    params = dict(params)
    if "by_stage" not in params:
        return params
    by_stage = params.pop("by_stage")
    stage = params.get("stage", "one")
    if not isinstance(by_stage, dict) or not all(isinstance(v, dict) for v in by_stage.values()):
        raise ValueError(f"model.params.by_stage: expected an object of stage -> params objects, got {by_stage!r}")
    if stage not in by_stage:
        raise ValueError(f"model.params.by_stage: expected an entry for stage {stage!r} (model.params.stage), "
                         f"found entries for {sorted(by_stage)}")
    return {**params, **by_stage[stage]}


# ------------------------------------------------------------------------------------------------
# detections and their scores
# ------------------------------------------------------------------------------------------------
def detect_batches(model, images: np.ndarray, max_detections: int, batch_size: int = 64) -> dict:
    """`model.detect` over `images` in batches: numpy {"boxes" [N, D, 4], "scores", "classes", "num_detections"}."""
    parts: dict[str, list] = {}
    for start in range(0, len(images), batch_size):
        found = model.detect(images[start:start + batch_size], score_threshold=SCORE_THRESHOLD,
                             iou_threshold=IOU_THRESHOLD, max_detections=max_detections)
        for key in ("boxes", "scores", "classes", "num_detections"):
            parts.setdefault(key, []).append(np.asarray(found[key]))
    return {key: np.concatenate(chunks) for key, chunks in parts.items()}


def per_image(detections: Mapping[str, np.ndarray]) -> list[dict]:
    """Padded detections -> one {"boxes", "scores", "classes"} of valid rows per image."""
    counts = np.asarray(detections["num_detections"]).astype(int)
    return [{key: np.asarray(detections[key][i][:n]) for key in ("boxes", "scores", "classes")}
            for i, n in enumerate(counts)]


def coco_metrics(test: dict, found: Sequence[dict], class_names: Sequence[str], image_size: Sequence[int]):
    """CocoMetrics of per-image detections against the test split's boxes (crowd regions as ignore)."""
    from models.detection.metrics import CocoEvaluator

    evaluator = CocoEvaluator(class_names)
    for i, detection in enumerate(found):
        evaluator.add_image(test["boxes"][i], test["labels"][i], detection["boxes"], detection["scores"],
                            detection["classes"], tuple(image_size[:2]), gt_crowd=test["crowd"][i])
    return evaluator.evaluate()


def metrics_of(coco, test: dict) -> dict:
    """metrics.json: the twelve COCO numbers, per-class AP and box counts."""
    counts = np.bincount(np.concatenate([lab[~c] for lab, c in zip(test["labels"], test["crowd"])] or [np.zeros(0, int)]),
                         minlength=len(coco.class_names))
    return {**{k: float(v) for k, v in coco.summary.items()}, "per_class": coco.per_class,
            "num_examples": len(test["id"]), "num_boxes": int(counts.sum()),
            "num_crowd": int(sum(int(c.sum()) for c in test["crowd"])),
            "boxes_per_class": {name: int(n) for name, n in zip(coco.class_names, counts)},
            "class_names": list(coco.class_names)}


def write_predictions(path: Path, test: dict, found: Sequence[dict], class_names: Sequence[str]) -> None:
    with open(path, "w") as handle:
        for i, example_id in enumerate(test["id"]):
            detection = found[i]
            handle.write(json.dumps({
                "id": example_id, "source": test["source"][i],
                "boxes": np.round(detection["boxes"].astype(float), 6).tolist(),
                "scores": np.round(detection["scores"].astype(float), 6).tolist(),
                "classes": [int(c) for c in detection["classes"]],
                "class_names": [class_names[int(c)] for c in detection["classes"]],
                "true_boxes": np.round(test["boxes"][i].astype(float), 6).tolist(),
                "true_classes": [int(c) for c in test["labels"][i]],
                "true_crowd": [bool(c) for c in test["crowd"][i]],
            }) + "\n")


def side_by_side(evaluations: Mapping[str, str | Path]) -> str:
    """An HTML table putting several evaluations (name -> ModelEvaluation dir or metrics.json)
    side by side: the COCO numbers and per-class AP, one column per method."""
    from components.tasks.detection_report import side_by_side_table

    metrics = {}
    for name, path in evaluations.items():
        path = Path(path)
        metrics[name] = json.loads((path / "metrics.json" if path.is_dir() else path).read_text())
    return side_by_side_table(metrics)


# ------------------------------------------------------------------------------------------------
# the adapter
# ------------------------------------------------------------------------------------------------
class DetectionTask(TaskAdapter):
    name = "detection"
    metric_names = ()
    signatures = (BYTES_SIGNATURE, IMAGES_SIGNATURE)

    # training ------------------------------------------------------------------------------------
    def builder_params(self, model_section, train_section) -> dict:
        """`model.params` with `by_stage` resolved (`stage_params`)."""
        return stage_params(model_section.params)

    def replica_loss(self, model, loss, x, y, training, num_replicas):
        """The registered loss on the raw outputs, or the model's `compute_loss`, on boxes and
        labels only (crowd regions are already label -1 there)."""
        return keras_replica_loss(model, loss, x, {"boxes": y["boxes"], "labels": y["labels"]}, training, num_replicas)

    def sample_grid_png(self, model, inputs, targets, class_names):
        from components.reports.sample_grids import boxes_grid_png

        images = np.asarray(inputs, np.float32)
        found = per_image(detect_batches(model, images, EVAL_MAX_DETECTIONS))
        truths = []
        for boxes, labels, crowd_labels in zip(targets["boxes"], targets["labels"],
                                               targets.get("crowd_labels", -np.ones_like(targets["labels"]))):
            keep = (labels >= 0) | (crowd_labels >= 0)
            truths.append({"boxes": boxes[keep], "labels": np.maximum(labels, crowd_labels)[keep],
                           "crowd": (crowd_labels >= 0)[keep]})
        return boxes_grid_png(images, truths, found, class_names, DISPLAY_SCORE)

    # evaluation ----------------------------------------------------------------------------------
    def known_metrics(self, evaluate_section) -> list:
        from components.tasks.detection_report import SUMMARY_ROWS

        return [name for name, _ in SUMMARY_ROWS]

    def read_test(self, examples_dir, schema) -> dict:
        test = read_boxes_split(examples_dir, "test")
        check_box_labels(test["labels"], schema["class_names"], str(examples_dir))
        return test

    def evaluate(self, model, test, schema, evaluate_section, out_dir) -> Evaluation:
        from components.tasks.detection_report import detection_sections, pr_curves
        from components.reports.sample_grids import boxes_grid_png

        class_names = schema["class_names"]
        images = self.decode_inputs(test["encoded"], schema)
        found = per_image(detect_batches(model, images, EVAL_MAX_DETECTIONS))
        coco = coco_metrics(test, found, class_names, schema["image_size"])
        metrics = metrics_of(coco, test)
        write_predictions(Path(out_dir) / PREDICTIONS_FILE, test, found, class_names)
        count = min(evaluate_section.num_sample_images, len(images))
        truths = [{"boxes": test["boxes"][i], "labels": test["labels"][i], "crowd": test["crowd"][i]} for i in range(count)]
        grid = boxes_grid_png(images[:count], truths, found[:count], class_names, DISPLAY_SCORE)
        sections = detection_sections(metrics, pr_curves(coco), coco.recall_thresholds, grid)
        per_class = ", ".join(f"{name} {v['AP']:.3f}" for name, v in coco.per_class.items())
        summary = (f"detection: test split ({metrics['num_examples']} images, {metrics['num_boxes']} boxes): "
                   f"mAP {metrics['mAP']:.4f}, AP50 {metrics['AP50']:.4f}, AP75 {metrics['AP75']:.4f}; "
                   f"AP per class: {per_class}")
        return Evaluation(metrics=metrics, sections=sections, summary=summary)

    def served_detections(self, saved_model: Path, encoded: Sequence[bytes]) -> list[dict]:
        from components import serving

        values = np.empty(len(encoded), dtype=object)
        values[:] = [bytes(e) for e in encoded]
        outputs = serving.ServedModel(saved_model, signatures=self.signatures).run(
            BYTES_SIGNATURE, **{BYTES_INPUT: values})
        return per_image({"boxes": outputs["boxes_xyxy"], "scores": outputs["scores"],
                          "classes": outputs["classes"], "num_detections": outputs["num_detections"]})

    def evaluate_served(self, saved_model, test, schema, evaluate_section) -> dict:
        found = self.served_detections(saved_model, test["encoded"])
        return metrics_of(coco_metrics(test, found, schema["class_names"], schema["image_size"]), test)

    def comparison_sections(self, trials: dict) -> list:
        """The trials' COCO numbers and per-class AP side by side, with their stage and training time."""
        from components.tasks.detection_report import side_by_side_table

        metrics = {name: t["metrics"] for name, t in trials.items() if t.get("metrics")}
        if not metrics:
            return []
        extra = [("stage", *[(trials[n]["trial"].get("params", {}).get("model", {}).get("params", {}) or {})
                             .get("stage", "one") for n in metrics]),
                 ("training seconds", *[f"{float(trials[n]['trial'].get('seconds') or 0.0):.0f}" for n in metrics])]
        return [("Detectors side by side (test split, COCO)", side_by_side_table(metrics, extra))]

    def write_probe(self, test, probe_dir, count) -> None:
        from components.tasks.classification import image_extension

        probe_dir.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(test["encoded"][:count]):
            (probe_dir / f"{i:03d}.{image_extension(data)}").write_bytes(data)

    # export and predict --------------------------------------------------------------------------
    def serving_info(self, info: dict) -> dict:
        return {"box_format": "rel_xyxy", "outputs": list(OUTPUTS), "score_threshold": SCORE_THRESHOLD,
                "iou_threshold": IOU_THRESHOLD, "max_detections": int(info.get("max_detections", DEFAULT_MAX_DETECTIONS))}

    def export_archive(self, model, info):
        import tensorflow as tf

        from components import serving

        max_detections = int(info.get("max_detections", DEFAULT_MAX_DETECTIONS))

        def serve_images(images):
            found = model.detect(images, score_threshold=SCORE_THRESHOLD, iou_threshold=IOU_THRESHOLD,
                                 max_detections=max_detections)
            return {"boxes_xyxy": tf.cast(found["boxes"], tf.float32), "scores": tf.cast(found["scores"], tf.float32),
                    "classes": tf.cast(found["classes"], tf.int32),
                    "num_detections": tf.cast(found["num_detections"], tf.int32)}

        return serving.image_archive(model, info["input_shape"], serve_images)

    def check_export(self, saved_model, model, probe_dir, info, scratch) -> dict:
        """Both signatures in a fresh process against `model.detect` on the probe images: the same
        number of detections and the same classes (else ExportMismatch); returned per signature,
        the largest |difference| of box coordinates and scores."""
        from components.serving import decode_images
        from components.serving.probe import run_in_fresh_process

        encoded = [p.read_bytes() for p in sorted(Path(probe_dir).glob("*")) if p.is_file()]
        if not encoded:
            raise ExportMismatch(f"{probe_dir} holds no test images to check the export with")
        images = decode_images(encoded, info["input_shape"])
        expected = detect_batches(model, images, int(info.get("max_detections", DEFAULT_MAX_DETECTIONS)))
        values = np.empty(len(encoded), dtype=object)
        values[:] = encoded
        outputs = run_in_fresh_process(saved_model, {BYTES_SIGNATURE: {BYTES_INPUT: values},
                                                     IMAGES_SIGNATURE: {IMAGES_INPUT: images}}, scratch)
        differences = {}
        for signature in self.signatures:
            served = outputs[signature]
            counts = served["num_detections"].astype(int)
            if counts.tolist() != expected["num_detections"].astype(int).tolist():
                raise ExportMismatch(f"{signature} num_detections {counts.tolist()} differs from the Keras model's "
                                     f"{expected['num_detections'].tolist()} on {probe_dir}")
            valid = np.arange(served["classes"].shape[1])[None, :] < counts[:, None]
            if not np.array_equal(served["classes"][valid], expected["classes"][valid]):
                raise ExportMismatch(f"{signature} classes {served['classes'][valid].tolist()} differ from the Keras "
                                     f"model's {expected['classes'][valid].tolist()} on {probe_dir}")
            differences[signature] = float(max(np.abs(served["boxes_xyxy"] - expected["boxes"]).max(initial=0.0),
                                               np.abs(served["scores"] - expected["scores"]).max(initial=0.0)))
        return differences

    def predict_lines(self, saved_model, paths) -> list:
        """`<path>\\t<n> detection(s)\\t<class> <score> [xmin, ymin, xmax, ymax]; ...` (normalised boxes)."""
        from components.serving import read_info

        names = read_info(saved_model).get("class_names") or []
        found = self.served_detections(saved_model, [Path(p).read_bytes() for p in paths])
        lines = []
        for path, detection in zip(paths, found):
            parts = [f"{names[int(c)] if int(c) < len(names) else int(c)} {float(s):.3f} "
                     f"[{', '.join(f'{v:.3f}' for v in b)}]"
                     for b, s, c in zip(detection["boxes"], detection["scores"], detection["classes"])]
            lines.append(f"{path}\t{len(parts)} detection(s)\t{'; '.join(parts)}")
        return lines


TASK = DetectionTask()
