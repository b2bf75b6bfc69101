"""Per-head losses of a multitask model, one value per example, and the total a step minimises.

Each head's loss is computed per example, then averaged over the examples that carry that
head's target (models/multitask_training.masked_mean), so a head without targets in the batch
adds exactly 0. The per-head means go through the model's TaskWeighting (static weights or
learned log-variances) and the schedule's `active` mask into one scalar.

Per example:
- classification: categorical cross-entropy from logits, or any Keras loss object (focal,
  automated focal) called unreduced, so per-example weighting schemes act inside the head.
- segmentation: the mean over the example's valid pixels (not `ignore_value`) of the per-pixel
  loss of models/pixel_losses (cross-entropy or focal, with its class weights).
- detection: the one-stage detector's terms (models/detection/losses.py): anchors matched to boxes,
  focal (or automated focal) loss over every non-ignored anchor and class plus smooth L1 (or GIoU)
  on positive anchors, divided by the example's number of positive anchors (at least 1).
- regression: mean squared error (the Gaussian likelihood the uncertainty weighting assumes).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import keras
import numpy as np
from keras import ops

from models.detection import anchors as anchor_ops
from models.detection.losses import DetectionLoss, automated_gamma, giou_loss, sigmoid_focal, smooth_l1
from models.multitask.network import detection_anchors, split_detection
from models.multitask.training import TARGET_KEYS, masked_mean, regression_targets, target_presence
from models.segmentation.losses import PixelCrossentropy


def classification_example_losses(one_hot, logits, loss: Optional[keras.losses.Loss] = None):
    """[B]: -log p(true class), or `loss.call` (the unreduced per-example values of a Keras loss)."""
    one_hot = ops.cast(one_hot, "float32")
    logits = ops.cast(logits, "float32")
    if loss is None:
        return keras.losses.categorical_crossentropy(one_hot, logits, from_logits=True)
    return ops.reshape(ops.cast(loss.call(one_hot, logits), "float32"), (ops.shape(logits)[0],))


def segmentation_example_losses(mask, logits, pixel_loss: Optional[PixelCrossentropy] = None,
                                ignore_value: Optional[int] = 255):
    """[B]: each example's mean per-pixel loss over its valid pixels (class-weighted if the pixel
    loss has class weights); 0 for an example whose every pixel is ignored."""
    pixel_loss = pixel_loss or PixelCrossentropy(ignore_value=ignore_value)
    losses, weights = pixel_loss.weighted_pixel_losses(mask, logits)
    return ops.divide_no_nan(ops.sum(losses * weights, axis=(1, 2)), ops.sum(weights, axis=(1, 2)))


def detection_example_losses(boxes, labels, output, anchors, options: Optional[DetectionLoss] = None):
    """[B]: class loss + box_weight x box loss per example, each summed over its anchors and divided
    by its positive anchors (at least 1).

    The terms and their settings are the one-stage detector's (models/detection/losses.py: focal or
    automated focal on every non-ignored anchor and class, smooth L1 or GIoU on positives);
    `options` is a DetectionLoss holding them (default: focal, smooth L1). `boxes` [B, M, 4]
    rel_xyxy and `labels` [B, M] padded with -1; `output` [B, N, 4 + K] from the detection head;
    `anchors` [N, 4] in the same order. Per example rather than per batch, so that examples
    without a detection target can be left out of the mean.
    """
    options = options or DetectionLoss()
    deltas, logits = split_detection(ops.cast(output, "float32"))
    targets = anchor_ops.anchor_targets(anchors, boxes, labels, logits.shape[-1], options.positive_iou,
                                        options.negative_iou, options.variances, options.force_best)
    positive = targets["state"] == anchor_ops.POSITIVE
    counted = ops.cast(targets["state"] != anchor_ops.IGNORE, "float32")
    gamma = options.gamma
    if options.classification == "automated_focal":
        gamma = automated_gamma(targets["class_targets"], logits, positive, fallback=options.gamma)
    per_anchor = ops.sum(sigmoid_focal(targets["class_targets"], logits, options.alpha, gamma), -1)
    class_loss = ops.sum(per_anchor * counted, axis=-1)
    if options.box == "smooth_l1":
        per_box = ops.sum(smooth_l1(targets["box_targets"], deltas, options.beta), -1)
    else:
        per_box = giou_loss(targets["matched_boxes"], anchor_ops.decode(deltas, anchors, options.variances))
    box_loss = ops.sum(per_box * ops.cast(positive, "float32"), axis=-1)
    positives = ops.maximum(ops.sum(ops.cast(positive, "float32"), axis=-1), 1.0)
    return (class_loss + options.box_weight * box_loss) / positives


def regression_example_losses(target, prediction):
    """[B]: mean squared error over the regression outputs."""
    target = ops.cast(target, "float32")
    prediction = ops.cast(prediction, "float32")
    return ops.mean(ops.square(prediction - ops.reshape(target, ops.shape(prediction))), axis=-1)


NAMED_LOSS_HEADS = ("classification", "segmentation")


def _resolve_losses(losses: Mapping, loss_params: Mapping[str, Mapping], heads: Sequence[str]) -> dict:
    """Head -> loss object, from objects or registered names (train.multitask.losses / loss_params).

    Heads the model lacks are skipped, so the single-task baselines of a sweep share one `losses`.
    """
    for argument, mapping in (("losses", losses), ("loss_params", loss_params)):
        wrong = sorted(set(mapping) - set(NAMED_LOSS_HEADS))
        if wrong:
            raise ValueError(f"train.multitask.{argument}: {wrong} cannot be chosen by name; expected heads among "
                             f"{list(NAMED_LOSS_HEADS)}")
    unused = sorted(set(loss_params) - set(losses))
    if unused:
        raise ValueError(f"train.multitask.loss_params: {unused} given without a loss name in train.multitask.losses")
    resolved = {}
    for head, loss in losses.items():
        if head not in heads:
            continue
        if isinstance(loss, str):
            from models import get_loss
            loss = get_loss(loss, **dict(loss_params.get(head, {})))
        resolved[head] = loss
    return resolved


class MultitaskLoss:
    """`loss(targets, outputs, active=None)` -> the weighted total; `head_losses` -> per-head means.

    Built for a model (`MultitaskLoss.for_model(model)`): it reads the heads, their classes,
    anchors and regression target from `model.head_config`, and adds the terms with
    `model.task_weighting`, whose s_i are the model's own variables.

    The schedule reaches a compiled step through `active_tasks`, a non-trainable variable (one 0/1
    per head, all 1 at first): the loop calls `set_active(schedule.active(epoch, step))` before
    each step, and every call without an explicit `active` reads it, so the step function keeps
    its (y, outputs) signature and is never retraced. Build the loss inside the strategy's scope.
    """

    def __init__(self, head_config: Mapping, weighting, losses: Optional[Mapping] = None,
                 loss_params: Optional[Mapping[str, Mapping]] = None, ignore_value: Optional[int] = 255,
                 detection_options: Optional[Mapping] = None):
        self.heads: Sequence[str] = list(head_config["heads"])
        self.head_config = head_config
        self.weighting = weighting
        chosen = _resolve_losses(losses or {}, loss_params or {}, self.heads)
        self.classification_loss = chosen.get("classification")
        self.segmentation_loss = chosen.get("segmentation") or PixelCrossentropy(ignore_value=ignore_value)
        if not isinstance(self.segmentation_loss, PixelCrossentropy):
            raise ValueError(f"train.multitask.losses.segmentation: expected a per-pixel loss (pixel_crossentropy, "
                             f"pixel_focal), got {type(self.segmentation_loss).__name__}")
        self.ignore_value = self.segmentation_loss.ignore_value
        self.detection_loss = DetectionLoss(**dict(detection_options or {}))
        self.anchors = detection_anchors(head_config["detection"]) if "detection" in self.heads else None
        self.active_tasks = keras.Variable(np.ones(len(self.heads), np.float32), trainable=False,
                                           name="active_tasks")

    def set_active(self, active) -> None:
        """Which heads the next steps train: one 0/1 per head in head order (MultitaskSchedule.active)."""
        active = np.asarray(active, np.float32).reshape(-1)
        if active.shape != (len(self.heads),):
            raise ValueError(f"set_active: expected one value per head {list(self.heads)}, got {active.tolist()}")
        self.active_tasks.assign(active)

    @classmethod
    def for_model(cls, model, **options) -> "MultitaskLoss":
        return cls(model.head_config, model.task_weighting, **options)

    def example_losses(self, head: str, targets: Mapping, output):
        if head == "classification":
            return classification_example_losses(targets["class"], output, self.classification_loss)
        if head == "segmentation":
            return segmentation_example_losses(targets["mask"], output, self.segmentation_loss)
        if head == "detection":
            return detection_example_losses(targets["boxes"], targets["labels"], output, self.anchors,
                                            self.detection_loss)
        return regression_example_losses(regression_targets(targets, self.head_config["regression"]["target"]), output)

    def head_losses(self, targets: Mapping, outputs: Mapping) -> dict:
        """Head -> scalar loss: the mean over examples carrying its target (0 when none do)."""
        presence = target_presence(targets, self.heads, self.ignore_value)
        losses = {}
        for head in self.heads:
            if not self._has_target(head, targets):
                losses[head] = ops.zeros((), "float32")
                continue
            losses[head] = masked_mean(self.example_losses(head, targets, outputs[head]), presence[head])
        return losses

    def _has_target(self, head: str, targets: Mapping) -> bool:
        if head == "regression" and "regression" not in targets:
            return "labels" in targets
        return all(key in targets for key in TARGET_KEYS[head])

    def total_and_head_losses(self, targets: Mapping, outputs: Mapping, active=None):
        """(weighted total, head -> loss); `active` defaults to the `active_tasks` variable."""
        losses = self.head_losses(targets, outputs)
        if active is None:
            active = ops.convert_to_tensor(self.active_tasks)
        return self.weighting(losses, active=active), losses

    def __call__(self, targets: Mapping, outputs: Mapping, active=None):
        return self.total_and_head_losses(targets, outputs, active)[0]
