"""Anchors: where they sit, how boxes are written against them, and which boxes they answer for.

- `generate_anchors`: one anchor per (level, row, column, scale, aspect ratio), centred on the
  feature-map cell, sized `size * scale` with width / height = aspect ratio. Order: level, then row,
  then column, then anchors of a location (aspect ratio major, scale minor) - the order in which a
  head's [B, h, w, A * k] output reshapes to [B, h * w * A, k].
- `encode` / `decode`: targets as (dx, dy, dw, dh) = ((cx - cx_a) / w_a, (cy - cy_a) / h_a,
  log(w / w_a), log(h / h_a)), divided by optional variances (SSD's (0.1, 0.1, 0.2, 0.2)); these
  are Keras's `encode_box_to_deltas` / `decode_deltas_to_boxes` in `center_xywh` encoding, with
  the size deltas clamped on decode so an untrained head cannot overflow `exp`.
- `match`: each anchor takes the ground-truth box it overlaps most; IoU >= positive threshold is
  positive, < negative threshold negative, in between ignored (no loss); optionally the best
  anchor of every box is made positive, so a box unlike every anchor still gets one.
- `sample_balanced`: a fixed-size random subset with at most a given share of positives (RPN and
  second-stage minibatches of Faster R-CNN).

Anchors and boxes are `rel_xyxy` (normalised corners). Deltas are ratios within one axis, so
they are the same as deltas computed in pixels.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from keras import ops
from keras import random as keras_random
from keras.utils import bounding_boxes as keras_boxes

from models.detection import boxes as box_ops

POSITIVE, NEGATIVE, IGNORE = 1, 0, -1
SIZE_DELTA_CLIP = math.log(1000.0 / 16.0)
"""Largest log size ratio decoded (detectron2's clamp): exp() of more is an untrained head's noise."""


# ------------------------------------------------------------------------------------------------
# generation
# ------------------------------------------------------------------------------------------------
def anchors_per_location(scales: Sequence[float], aspect_ratios: Sequence[float]) -> int:
    return len(scales) * len(aspect_ratios)


def _check_positive(values, name: str):
    values = [float(v) for v in values]
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"Invalid value for argument `{name}`. Expected a non-empty list of positive numbers. Received {name}={values}")
    return values


def generate_anchors(image_shape, feature_shapes, sizes, scales=(1.0,), aspect_ratios=(1.0,)) -> np.ndarray:
    """Anchors [N, 4] rel_xyxy float32 for feature maps `feature_shapes` [(h, w), ...] of an image.

    `sizes` holds one base side per level in pixels of `image_shape` (H, W[, C]); a level's stride
    is the image side over the feature side, and anchors are centred on cells ((j + 0.5) * stride).
    """
    height, width = float(image_shape[0]), float(image_shape[1])
    sizes = _check_positive(sizes, "sizes")
    scales = _check_positive(scales, "scales")
    aspect_ratios = _check_positive(aspect_ratios, "aspect_ratios")
    if len(sizes) != len(feature_shapes):
        raise ValueError(f"generate_anchors: expected one size per level ({len(feature_shapes)} levels), received sizes={sizes}")
    # Anchor shapes of one location, in pixels: aspect ratio major, scale minor.
    widths = np.array([s * math.sqrt(r) for r in aspect_ratios for s in scales])
    heights = np.array([s / math.sqrt(r) for r in aspect_ratios for s in scales])
    levels = []
    for (rows, cols), size in zip(feature_shapes, sizes):
        cy = (np.arange(rows, dtype=np.float64) + 0.5) / rows  # relative centres
        cx = (np.arange(cols, dtype=np.float64) + 0.5) / cols
        cy, cx = np.meshgrid(cy, cx, indexing="ij")
        half_w = widths * size / width / 2.0
        half_h = heights * size / height / 2.0
        cx, cy = cx[..., None], cy[..., None]  # [rows, cols, 1] against [A]
        corners = np.stack(np.broadcast_arrays(cx - half_w, cy - half_h, cx + half_w, cy + half_h), -1)
        levels.append(corners.reshape(-1, 4))
    return np.concatenate(levels, 0).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# encoding
# ------------------------------------------------------------------------------------------------
def _variance_list(variances):
    if variances is None:
        return None
    variances = _check_positive(variances, "variances")
    if len(variances) != 4:
        raise ValueError(f"Invalid value for argument `variances`. Expected 4 values (x, y, w, h). Received variances={variances}")
    return variances


def encode(boxes, anchors, variances: Optional[Sequence[float]] = None):
    """Deltas [..., N, 4] (dx, dy, dw, dh) that move `anchors` [N, 4] onto `boxes` [..., N, 4] (both rel_xyxy)."""
    return keras_boxes.encode_box_to_deltas(
        anchors, boxes, anchor_format="xyxy", box_format="xyxy", encoding_format="center_xywh",
        variance=_variance_list(variances))


def decode(deltas, anchors, variances: Optional[Sequence[float]] = None, size_clip: float = SIZE_DELTA_CLIP):
    """Boxes [..., N, 4] rel_xyxy from deltas [..., N, 4] against anchors [N, 4] (inverse of `encode`)."""
    variances = _variance_list(variances)
    scale_w, scale_h = (variances[2], variances[3]) if variances is not None else (1.0, 1.0)
    deltas = ops.convert_to_tensor(deltas)
    dx, dy, dw, dh = ops.split(deltas, 4, axis=-1)
    deltas = ops.concatenate([dx, dy, ops.minimum(dw, size_clip / scale_w), ops.minimum(dh, size_clip / scale_h)], -1)
    anchors = ops.cast(anchors, deltas.dtype)
    return keras_boxes.decode_deltas_to_boxes(
        anchors, deltas, anchor_format="xyxy", box_format="xyxy", encoded_format="center_xywh", variance=variances)


# ------------------------------------------------------------------------------------------------
# matching
# ------------------------------------------------------------------------------------------------
def match(anchors, gt_boxes, gt_valid, positive_threshold: float = 0.5, negative_threshold: float = 0.4,
          force_best: bool = True):
    """Matches anchors [N, 4] to boxes [..., M, 4]; `gt_valid` [..., M] masks padding rows.

    Returns (matched_index [..., N] int32, state [..., N] int32 in {POSITIVE, NEGATIVE, IGNORE},
    max_iou [..., N]). With `force_best`, every valid box's highest-IoU anchors (ties included,
    IoU > 0) are positive whatever the thresholds, keeping the box they overlap most (torchvision's
    low-quality matches).
    """
    if not 0.0 <= negative_threshold <= positive_threshold <= 1.0:
        raise ValueError(
            "match: expected 0 <= negative_threshold <= positive_threshold <= 1, "
            f"received negative_threshold={negative_threshold}, positive_threshold={positive_threshold}")
    anchors = ops.convert_to_tensor(anchors, "float32")
    gt_boxes = ops.cast(gt_boxes, "float32")
    gt_valid = ops.cast(gt_valid, "bool")
    iou = box_ops.pairwise_iou(anchors, gt_boxes, "rel_xyxy")  # [..., N, M]
    iou = ops.where(ops.expand_dims(gt_valid, -2), iou, -ops.ones_like(iou))
    if iou.shape[-1] == 0:  # no box slots at all: everything is background
        shape = ops.shape(iou)[:-1]
        return ops.zeros(shape, "int32"), ops.full(shape, NEGATIVE, "int32"), -ops.ones(shape, "float32")
    max_iou = ops.max(iou, axis=-1)
    matched = ops.cast(ops.argmax(iou, axis=-1), "int32")
    state = ops.where(max_iou >= positive_threshold, POSITIVE, ops.where(max_iou < negative_threshold, NEGATIVE, IGNORE))
    state = ops.cast(state, "int32")
    if force_best:
        best_per_box = ops.max(iou, axis=-2, keepdims=True)  # [..., 1, M]
        is_best = (iou == best_per_box) & (best_per_box > 0.0)
        state = ops.where(ops.any(is_best, axis=-1), POSITIVE, state)
    return matched, state, max_iou


def gather_boxes(values, index):
    """values [..., M, k] gathered along M by index [..., N] -> [..., N, k]."""
    return ops.take_along_axis(values, ops.expand_dims(index, -1), axis=-2)


def anchor_targets(anchors, gt_boxes, gt_labels, num_classes: int, positive_threshold: float = 0.5,
                   negative_threshold: float = 0.4, variances: Optional[Sequence[float]] = None,
                   force_best: bool = True) -> dict:
    """Per-anchor training targets from padded boxes [B, M, 4] and labels [B, M] (-1 = padding).

    Returns {"state" [B, N] int32, "class_targets" [B, N, K] one-hot (zeros unless positive),
    "box_targets" [B, N, 4] encoded deltas, "matched_boxes" [B, N, 4] rel_xyxy}.
    """
    gt_labels = ops.cast(gt_labels, "int32")
    matched, state, _ = match(anchors, gt_boxes, gt_labels >= 0, positive_threshold, negative_threshold, force_best)
    matched_boxes = gather_boxes(ops.cast(gt_boxes, "float32"), matched)
    matched_labels = ops.take_along_axis(gt_labels, matched, axis=-1)
    positive = state == POSITIVE
    class_targets = ops.one_hot(ops.where(positive, matched_labels, -1), num_classes)  # -1 -> all zeros
    box_targets = encode(matched_boxes, anchors, variances)
    return {"state": state, "class_targets": class_targets, "box_targets": box_targets, "matched_boxes": matched_boxes}


# ------------------------------------------------------------------------------------------------
# sampling
# ------------------------------------------------------------------------------------------------
def _kth_largest(values, k, max_k: int):
    """Per row the k-th largest of values [..., N] (k [...] int, 1-based); +inf where k == 0."""
    top = ops.top_k(values, max_k, sorted=True)[0]  # [..., max_k]
    index = ops.expand_dims(ops.clip(k - 1, 0, max_k - 1), -1)
    kth = ops.squeeze(ops.take_along_axis(top, index, axis=-1), -1)
    return ops.where(k > 0, kth, ops.full_like(kth, np.inf))


def sample_balanced(positive, negative, num_samples: int, positive_fraction: float = 0.5, seed=None):
    """Bool mask [..., N] of at most `num_samples` entries per row, drawn at random, of which at most
    `positive_fraction` are positives; negatives fill the rest (Faster R-CNN's minibatch sampling).

    `seed`: an int or a `keras.random.SeedGenerator` (pass a generator to draw anew every step).
    """
    if num_samples < 1 or not 0.0 < positive_fraction <= 1.0:
        raise ValueError(
            f"sample_balanced: expected num_samples >= 1 and 0 < positive_fraction <= 1, "
            f"received num_samples={num_samples}, positive_fraction={positive_fraction}")
    positive = ops.cast(positive, "bool")
    negative = ops.cast(negative, "bool") & ~positive
    length = positive.shape[-1]
    max_k = min(int(num_samples), int(length))
    noise = keras_random.uniform(ops.shape(positive), seed=seed)
    pos_keys = ops.where(positive, noise, -ops.ones_like(noise))
    neg_keys = ops.where(negative, noise, -ops.ones_like(noise))
    want_pos = int(num_samples * positive_fraction)
    num_pos = ops.minimum(ops.sum(ops.cast(positive, "int32"), -1), want_pos)
    pos_mask = positive & (pos_keys >= ops.expand_dims(_kth_largest(pos_keys, num_pos, max_k), -1))
    num_neg = ops.minimum(ops.sum(ops.cast(negative, "int32"), -1), num_samples - num_pos)
    neg_mask = negative & (neg_keys >= ops.expand_dims(_kth_largest(neg_keys, num_neg, max_k), -1))
    return pos_mask | neg_mask
