"""Every head of a multitask model, from encoded images to scores: read a split, post-process the
heads' raw outputs into what a client receives, and score those outputs against the targets.

One path for the Keras model, the served SavedModel and the per-epoch evaluation during training:
`postprocess` (TF) turns raw outputs into the served outputs, flat and keyed by head, so the
SavedModel's `serving_default` runs the very same graph; `score_heads` (numpy) turns served
outputs and targets into metrics, with the arithmetic of the single-task stages:

    classification  classification_metrics (accuracy, top-k, loss, macro P/R/F1, confusion)
    segmentation    models/segmentation_metrics (mean IoU, per-class IoU, pixel accuracy)
    detection       models/detection_metrics.CocoEvaluator (mAP, AP50, AP75, AR), after NMS
    regression      mean absolute and root mean squared error of the count (or mean box area)

A head the model lacks, or whose targets the split does not carry, scores NaN: a threshold on it
fails and the compare stage ranks a trial by it last. `mean_head_score` averages the headline
scores (accuracy, mean IoU, AP50) of every head the split has targets for, a missing head
counting 0, so a single-task baseline cannot outrank a model that does every task.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

SCORE_THRESHOLD = 0.05
IOU_THRESHOLD = 0.5
MAX_DETECTIONS = 20
"""Detections kept per image after per-class NMS, in evaluation and in the SavedModel alike."""
IGNORE_VALUE = 255
HEADLINE = {"classification": "accuracy", "segmentation": "mean_iou", "detection": "AP50", "regression": "mae"}
"""Each head's headline metric (metrics.json has it as `<head>_<name>`)."""
SCORED_HEADS = ("classification", "segmentation", "detection")
"""Heads whose headline is a score in [0, 1], averaged into `mean_head_score`."""
EPOCH_METRICS = ("segmentation_mean_iou", "segmentation_pixel_accuracy", "detection_mAP", "detection_AP50",
                 "regression_mae", "mean_head_score")
"""What the per-epoch evaluation adds to each epoch's row as `val_<name>` (classification accuracy
and the heads' losses come from the loop's own per-batch sums)."""


def headline(head: str) -> str:
    return f"{head}_{HEADLINE[head]}"


def metric_names(top_k: int) -> list[str]:
    """Every scalar name `score_heads` may write (for evaluate.metric / thresholds checks)."""
    from components.tasks.classification_metrics import metric_names as classification_names

    names = [f"classification_{n}" for n in classification_names(top_k)]
    names += ["segmentation_mean_iou", "segmentation_pixel_accuracy"]
    names += [f"detection_{n}" for n in ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1",
                                         "AR10", "AR100", "AR_small", "AR_medium", "AR_large")]
    names += ["regression_mae", "regression_rmse", "mean_head_score"]
    names += [f"forgetting_{head}" for head in HEADLINE]
    return names


def mask_class_names(num_mask_classes: int, class_names: Sequence[str]) -> list[str]:
    """Names of the segmentation head's classes: background then the object classes when they fit."""
    if num_mask_classes == len(class_names) + 1:
        return ["background", *class_names]
    return [f"class_{k}" for k in range(num_mask_classes)]


# ------------------------------------------------------------------------------------------------
# the split as arrays
# ------------------------------------------------------------------------------------------------
def read_split(examples_dir: str | Path, split: str) -> dict:
    """{"id", "source", "encoded" (image bytes as stored), "label" (-1: none), "mask" (uint8 [H, W]
    or None), "boxes" ([G, 4] rel_xyxy or None), "box_labels" ([G] or None)} lists of one split."""
    import tensorflow as tf

    from components import examples as ex

    rows = {key: [] for key in ("id", "source", "encoded", "label", "mask", "boxes", "box_labels")}
    for path in ex.shard_files(examples_dir, split):
        for serialized in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            record = ex.decode_example(serialized)
            feature = tf.train.Example.FromString(serialized).features.feature
            rows["id"].append(record["id"])
            rows["source"].append(record.get("source", ""))
            rows["encoded"].append(feature[ex.IMAGE].bytes_list.value[0])
            rows["label"].append(int(record.get("label", -1)))
            rows["mask"].append(record.get("mask"))
            has_boxes = "box_labels" in record
            rows["boxes"].append(np.asarray(record["boxes"], np.float32).reshape(-1, 4) if has_boxes else None)
            rows["box_labels"].append(np.asarray(record["box_labels"], np.int64).reshape(-1) if has_boxes else None)
    return rows


def targets_of(split: dict, image_size: Sequence[int]) -> dict:
    """The split's targets as arrays: "label" [N], "mask" [N, H, W] (IGNORE_VALUE where an example has
    none), "boxes"/"box_labels" lists, and "has" (which targets the split carries at all)."""
    height, width = int(image_size[0]), int(image_size[1])
    masks = np.full((len(split["id"]), height, width), IGNORE_VALUE, np.int32)
    for i, mask in enumerate(split["mask"]):
        if mask is not None:
            mask = np.asarray(mask).reshape(np.asarray(mask).shape[:2])
            if mask.shape != (height, width):
                raise ValueError(f"example {split['id'][i]}: mask of {mask.shape[0]}x{mask.shape[1]} pixels; "
                                 f"expected the image size {height}x{width}")
            masks[i] = mask
    labels = np.asarray(split["label"], np.int64)
    has_boxes = any(b is not None for b in split["box_labels"])
    return {"label": labels, "mask": masks,
            "boxes": [np.zeros((0, 4), np.float32) if b is None else b for b in split["boxes"]],
            "box_labels": [np.zeros(0, np.int64) if b is None else b for b in split["box_labels"]],
            "has": {"classification": bool((labels >= 0).any()),
                    "segmentation": any(m is not None for m in split["mask"]),
                    "detection": has_boxes, "regression": has_boxes}}


def targets_from_batches(dataset, image_size: Sequence[int]) -> tuple[np.ndarray, dict]:
    """(images [N, H, W, C], targets as `targets_of` gives them) from a dataset of (images, target
    dicts) batches, as components/examples.make_dataset yields them for the multitask task."""
    images, split = [], {key: [] for key in ("id", "mask", "label", "boxes", "box_labels")}
    for x, y in dataset:
        images.append(np.asarray(x))
        y = {k: np.asarray(v) for k, v in y.items()}
        count = len(images[-1])
        for i in range(count):
            split["id"].append(str(len(split["id"])))
            one_hot = y.get("class")
            split["label"].append(int(one_hot[i].argmax()) if one_hot is not None and one_hot[i].any() else -1)
            split["mask"].append(y["mask"][i] if "mask" in y else None)
            keep = y["labels"][i] >= 0 if "labels" in y else None
            split["boxes"].append(None if keep is None else y["boxes"][i][keep])
            split["box_labels"].append(None if keep is None else y["labels"][i][keep])
    return (np.concatenate(images) if images else np.zeros((0, *image_size), np.float32)), targets_of(split, image_size)


# ------------------------------------------------------------------------------------------------
# raw outputs -> served outputs (TF; the SavedModel runs this same function)
# ------------------------------------------------------------------------------------------------
def postprocess(outputs: Mapping, head_config: Mapping, class_names: Sequence[str]) -> dict:
    """The heads' raw outputs -> flat outputs under each head's name: classification_probabilities
    [B, K], classification_class_id, classification_class_name; segmentation_probabilities
    [B, H, W, K+1], segmentation_class_id [B, H, W]; detection_boxes [B, D, 4] rel_xyxy,
    detection_scores, detection_classes, detection_num_detections (sigmoid scores, per-class NMS);
    regression_values [B, R]."""
    import tensorflow as tf

    from models.multitask.network import detection_anchors, one_stage_outputs
    from models.detection.one_stage import decode_detections

    result = {}
    for head in head_config["heads"]:
        raw = tf.cast(outputs[head], tf.float32)
        if head == "classification":
            probabilities = tf.nn.softmax(raw, axis=-1)
            class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            result.update(classification_probabilities=probabilities, classification_class_id=class_id,
                          classification_class_name=tf.gather(tf.constant(list(class_names)), class_id))
        elif head == "segmentation":
            probabilities = tf.nn.softmax(raw, axis=-1)
            result.update(segmentation_probabilities=probabilities,
                          segmentation_class_id=tf.argmax(probabilities, axis=-1, output_type=tf.int32))
        elif head == "detection":
            detections = decode_detections(one_stage_outputs(raw), anchors=detection_anchors(head_config["detection"]),
                                           score_threshold=SCORE_THRESHOLD, iou_threshold=IOU_THRESHOLD,
                                           max_detections=MAX_DETECTIONS)
            result.update({f"detection_{key}": value for key, value in detections.items()})
        else:
            result["regression_values"] = raw
    return result


def predict(model, images: np.ndarray, class_names: Sequence[str], batch_size: int = 64) -> dict:
    """`postprocess(model(images))` in batches, as numpy."""
    parts: dict[str, list] = {}
    for start in range(0, len(images), batch_size):
        outputs = postprocess(model(images[start:start + batch_size], training=False), model.head_config, class_names)
        for key, value in outputs.items():
            parts.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(chunks) for key, chunks in parts.items()}


def heads_of(outputs: Mapping) -> list[str]:
    """Heads present in a flat output dict, in canonical order."""
    return [head for head in HEADLINE if any(key.startswith(head + "_") for key in outputs)]


# ------------------------------------------------------------------------------------------------
# served outputs + targets -> metrics (numpy)
# ------------------------------------------------------------------------------------------------
def regression_truth(targets: Mapping, kind: str = "count") -> np.ndarray:
    """[N]: the number of objects (or their mean relative area) per example, from the boxes."""
    if kind == "count":
        return np.array([len(labels) for labels in targets["box_labels"]], np.float64)
    areas = [np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None) for b in targets["boxes"]]
    return np.array([a.mean() if len(a) else 0.0 for a in areas], np.float64)


def score_heads(outputs: Mapping, targets: Mapping, class_names: Sequence[str], image_size: Sequence[int],
                top_k: int = 2, regression_target: str = "count") -> tuple[dict, dict]:
    """(metrics, details): flat `<head>_<name>` floats for every head (NaN where not measured) and
    `mean_head_score`; details per head (per-class tables, confusion matrices)."""
    from components.tasks.classification_metrics import classification_metrics
    from models.detection.metrics import CocoEvaluator
    from models.segmentation.metrics import segmentation_scores

    heads, has = heads_of(outputs), targets["has"]
    metrics = {name: math.nan for name in metric_names(top_k) if not name.startswith(("forgetting_", "mean_"))}
    metrics.pop(f"classification_top_{top_k}_accuracy", None)
    details: dict = {}
    if "classification" in heads and has["classification"]:
        present = targets["label"] >= 0
        scores = classification_metrics(targets["label"][present], outputs["classification_probabilities"][present],
                                        class_names, top_k)
        metrics.update({f"classification_{k}": float(v) for k, v in scores.items()
                        if isinstance(v, float)})
        details["classification"] = {k: scores[k] for k in ("per_class", "confusion_matrix", "class_names", "top_k",
                                                             "num_examples")}
    if "segmentation" in heads and has["segmentation"]:
        probabilities = outputs["segmentation_probabilities"]
        names = mask_class_names(probabilities.shape[-1], class_names)
        scores = segmentation_scores(targets["mask"], outputs["segmentation_class_id"], len(names), IGNORE_VALUE)
        metrics.update(segmentation_mean_iou=scores["mean_iou"], segmentation_pixel_accuracy=scores["pixel_accuracy"])
        details["segmentation"] = {"class_names": names, "per_class_iou": dict(zip(names, scores["per_class_iou"])),
                                   "confusion_matrix": scores["confusion_matrix"]}
    if "detection" in heads and has["detection"]:
        evaluator = CocoEvaluator(class_names)
        for i in range(len(targets["boxes"])):
            n = int(outputs["detection_num_detections"][i])
            evaluator.add_image(targets["boxes"][i], targets["box_labels"][i], outputs["detection_boxes"][i][:n],
                                outputs["detection_scores"][i][:n], outputs["detection_classes"][i][:n],
                                image_size[:2])
        coco = evaluator.evaluate()
        metrics.update({f"detection_{k}": float(v) for k, v in coco.summary.items()})
        details["detection"] = {"per_class": coco.per_class, "num_images": coco.num_images}
    if "regression" in heads and has["regression"]:
        error = outputs["regression_values"][:, 0].astype(np.float64) - regression_truth(targets, regression_target)
        metrics.update(regression_mae=float(np.abs(error).mean()), regression_rmse=float(np.sqrt((error ** 2).mean())))
        details["regression"] = {"target": regression_target}
    scored = [head for head in SCORED_HEADS if has[head]]
    values = [metrics[headline(head)] for head in scored]
    metrics["mean_head_score"] = float(np.mean([0.0 if math.isnan(v) else v for v in values])) if values else math.nan
    return metrics, details


# ------------------------------------------------------------------------------------------------
# forgetting, from the per-epoch evaluations in history.json
# ------------------------------------------------------------------------------------------------
def forgetting_rows(history: Mapping, phase_ends: Mapping[str, int]) -> list[dict]:
    """Per head: its headline metric on the eval split at the end of its phase and at the end of
    training, and the forgetting (models/multitask_training.forgetting: positive = got worse)."""
    from models.multitask.training import forgetting

    epochs = list(history.get("epoch") or [])
    rows = []
    for head, end in phase_ends.items():
        values = history.get(f"val_{headline(head)}") or []
        if not epochs or not values:
            continue
        end = min(int(end), epochs[-1])
        at_end, final = values[epochs.index(end)], values[-1]
        if at_end is None or final is None or math.isnan(at_end) or math.isnan(final):
            continue
        amount = forgetting({head: at_end}, {head: final}, higher_is_better=head != "regression")[head]
        rows.append({"task": head, "metric": headline(head), "phase_end_epoch": end, "at_phase_end": float(at_end),
                     "final_epoch": epochs[-1], "final": float(final), "forgetting": float(amount)})
    return rows
