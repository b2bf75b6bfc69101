"""Non-max suppression through `tf.image`, with the fixed-size outputs a SavedModel signature needs.

`tf.image.combined_non_max_suppression` already does per-class NMS with a score threshold, a
per-class and a per-image cap, and zero padding; this wrapper takes our box format (rel_xyxy),
converts through `models.detection.boxes`, and returns a dict with integer classes. It runs inside a graph,
so export can put the whole post-processing in the SavedModel.
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf

from models.detection import boxes as box_ops


def batched_nms(boxes, scores, *, max_detections: int = 100, max_per_class: Optional[int] = None,
                iou_threshold: float = 0.5, score_threshold: float = 0.05, clip: bool = True) -> dict:
    """Per-class NMS over a batch.

    boxes: [B, N, 4] rel_xyxy shared by every class, or [B, N, K, 4] one box per class.
    scores: [B, N, K] probabilities (sigmoid or softmax, background excluded).
    Returns {"boxes" [B, D, 4] rel_xyxy, "scores" [B, D], "classes" [B, D] int32,
    "num_detections" [B] int32}, D = max_detections; rows past num_detections are zeros.
    """
    if max_detections < 1:
        raise ValueError(f"Invalid value for argument `max_detections`. Expected >= 1. Received max_detections={max_detections}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"Invalid value for argument `iou_threshold`. Expected a value in [0, 1]. Received iou_threshold={iou_threshold}")
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    if boxes.shape.rank == 3:
        boxes = boxes[:, :, None, :]
    if boxes.shape.rank != 4 or scores.shape.rank != 3:
        raise ValueError(f"batched_nms: expected boxes [B, N, 4] or [B, N, K, 4] and scores [B, N, K], "
                         f"received boxes {boxes.shape} and scores {scores.shape}")
    nmsed_boxes, nmsed_scores, nmsed_classes, valid = tf.image.combined_non_max_suppression(
        box_ops.convert(boxes, "rel_xyxy", "rel_yxyx"), scores,
        max_output_size_per_class=max_per_class or max_detections, max_total_size=max_detections,
        iou_threshold=iou_threshold, score_threshold=score_threshold, pad_per_class=False, clip_boxes=clip)
    return {
        "boxes": box_ops.convert(nmsed_boxes, "rel_yxyx", "rel_xyxy"),
        "scores": nmsed_scores,
        "classes": tf.cast(nmsed_classes, tf.int32),
        "num_detections": tf.cast(valid, tf.int32),
    }


def class_agnostic_nms(boxes, scores, *, max_output: int, iou_threshold: float = 0.7,
                       score_threshold: float = float("-inf"), clip: bool = True) -> dict:
    """NMS of boxes [B, N, 4] rel_xyxy by one score [B, N] (region proposals): the survivors,
    best first, padded with zeros to `max_output`; {"boxes", "scores", "num_detections"}."""
    result = batched_nms(boxes, scores[..., None], max_detections=max_output, iou_threshold=iou_threshold,
                         score_threshold=score_threshold, clip=clip)
    return {"boxes": result["boxes"], "scores": result["scores"], "num_detections": result["num_detections"]}
