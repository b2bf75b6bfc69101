"""Losses for anchor-based detection: sigmoid focal (fixed or automated gamma), smooth L1, GIoU,
and the one-stage detector's whole loss.

- Focal loss (Lin et al. 2017, RetinaNet): per anchor and class a sigmoid cross-entropy scaled by
  alpha_t (1 - p_t)^gamma, so the many easy background anchors stop dominating.
- Automated focal loss (Weber et al. 2019): gamma = -log(p_hat), p_hat the mean probability the
  model gives the true class on the positive anchors of the batch (not differentiated through).
  gamma falls as the model grows confident, so the loss anneals itself towards cross-entropy.
- Smooth L1 on encoded box deltas (Fast R-CNN): quadratic below `beta`, linear above.
- GIoU loss (Rezatofighi et al. 2019): 1 - GIoU of the decoded box and its target, which still
  has a gradient when the boxes do not overlap.
- "detector": the loss is the model's own: every detector has `compute_loss(batch)` (models/
  detector.py), which a training loop calls instead of `loss(y_true, y_pred)`. The two-stage and
  sliding-window detectors need it (their second stage samples regions from the ground truth
  inside the forward pass); the one-stage detector configures its `DetectionLoss` from the model
  parameter `loss`.
- `DetectionLoss` ("detection"): (y_true, y_pred) with y_true {"boxes" [B, M, 4] rel_xyxy padded,
  "labels" [B, M] with -1 padding} as components/examples/ yields them, y_pred the one-stage
  detector's dict {"class_logits" [B, N, K], "box_deltas" [B, N, 4], "anchors" [B, N, 4]}. Anchors
  are matched to boxes (models/detection/anchors.py); ignored anchors add nothing; both terms are summed and
  divided by the number of positive anchors in the batch (at least 1), as RetinaNet normalises.
"""
from __future__ import annotations

from typing import Optional, Sequence

import keras
from keras import ops

from models.detection import anchors as anchor_ops
from models.detection import boxes as box_ops
from models.registry import LOSSES

CLASSIFICATION_LOSSES = ("focal", "automated_focal")
BOX_LOSSES = ("smooth_l1", "giou")


# ------------------------------------------------------------------------------------------------
# element-wise terms
# ------------------------------------------------------------------------------------------------
def sigmoid_cross_entropy(targets, logits):
    """Stable -t log(sigmoid(x)) - (1 - t) log(1 - sigmoid(x)), element-wise."""
    return ops.maximum(logits, 0.0) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))


def sigmoid_focal(targets, logits, alpha: Optional[float] = 0.25, gamma=2.0):
    """Element-wise focal loss for multi-hot `targets` and `logits` of the same shape."""
    targets = ops.cast(targets, logits.dtype)
    probs = ops.sigmoid(logits)
    p_t = probs * targets + (1.0 - probs) * (1.0 - targets)
    # The floor keeps d/dp (1 - p_t)^gamma finite for gamma < 1 (automated focal) once p_t rounds to 1.
    loss = sigmoid_cross_entropy(targets, logits) * ops.power(ops.maximum(1.0 - p_t, 1e-7), gamma)
    if alpha is not None:
        loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
    return loss


def automated_gamma(targets, logits, positive, fallback: float = 2.0, epsilon: float = 1e-6):
    """Automated focal loss's gamma = -log(mean true-class probability over positive anchors).

    targets/logits [..., K] (one-hot on positives), positive [...] bool. Without positives in the
    batch the estimate is undefined and `fallback` is used. Held constant for the gradient.
    """
    probs = ops.sigmoid(ops.stop_gradient(logits))
    true_prob = ops.sum(probs * ops.cast(targets, probs.dtype), -1)
    weight = ops.cast(positive, probs.dtype)
    count = ops.sum(weight)
    p_hat = ops.sum(true_prob * weight) / ops.maximum(count, 1.0)
    gamma = -ops.log(ops.clip(p_hat, epsilon, 1.0))
    return ops.where(count > 0, gamma, ops.cast(fallback, gamma.dtype))


def smooth_l1(targets, predictions, beta: float = 1.0 / 9.0):
    """Element-wise smooth L1: 0.5 x^2 / beta for |x| < beta, |x| - 0.5 beta beyond (beta 0: L1)."""
    diff = ops.abs(predictions - targets)
    if beta <= 0:
        return diff
    return ops.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def giou_loss(target_boxes, predicted_boxes, box_format: str = "rel_xyxy"):
    """1 - GIoU of aligned box pairs [..., 4] -> [...], in [0, 2]."""
    return 1.0 - box_ops.aligned_giou(target_boxes, predicted_boxes, box_format)


def _check_number(name, value, low=None, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (low is not None and value < low):
        raise ValueError(f"Invalid value for argument `{name}`. Expected a number >= {low}. Received {name}={value!r}")
    return float(value)


# ------------------------------------------------------------------------------------------------
# Keras losses for single terms (registered; per-example sums over the last axis)
# ------------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="convpipe")
class SigmoidFocal(keras.losses.Loss):
    """Focal loss over independent sigmoid classes: y_true multi-hot [..., K], y_pred logits [..., K]."""

    def __init__(self, alpha: Optional[float] = 0.25, gamma: float = 2.0, name: str = "sigmoid_focal", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha = _check_number("alpha", alpha, 0.0, allow_none=True)
        self.gamma = _check_number("gamma", gamma, 0.0)

    def call(self, y_true, y_pred):
        return ops.sum(sigmoid_focal(y_true, ops.cast(y_pred, "float32"), self.alpha, self.gamma), -1)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="convpipe")
class SmoothL1(keras.losses.Loss):
    """Smooth L1 summed over the last axis (box deltas)."""

    def __init__(self, beta: float = 1.0 / 9.0, name: str = "smooth_l1", **kwargs):
        super().__init__(name=name, **kwargs)
        self.beta = _check_number("beta", beta, 0.0)

    def call(self, y_true, y_pred):
        return ops.sum(smooth_l1(ops.cast(y_true, "float32"), ops.cast(y_pred, "float32"), self.beta), -1)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


@keras.saving.register_keras_serializable(package="convpipe")
class GIoULoss(keras.losses.Loss):
    """1 - GIoU between true and predicted boxes [..., 4] in `box_format`."""

    def __init__(self, box_format: str = "rel_xyxy", name: str = "giou", **kwargs):
        super().__init__(name=name, **kwargs)
        if box_format not in box_ops.FORMATS:
            raise ValueError(f"Invalid value for argument `box_format`. Expected one of {box_ops.FORMATS}. "
                             f"Received box_format={box_format!r}")
        self.box_format = box_format

    def call(self, y_true, y_pred):
        return giou_loss(ops.cast(y_true, "float32"), ops.cast(y_pred, "float32"), self.box_format)

    def get_config(self):
        return {**super().get_config(), "box_format": self.box_format}


# ------------------------------------------------------------------------------------------------
# the one-stage detector's loss
# ------------------------------------------------------------------------------------------------
class DetectionLoss:
    """Classification (focal or automated focal) + box_weight * box loss (smooth L1 or GIoU),
    both normalised by the number of positive anchors. `components` returns every term."""

    def __init__(self, classification: str = "focal", box: str = "smooth_l1", alpha: Optional[float] = 0.25,
                 gamma: float = 2.0, beta: float = 1.0 / 9.0, box_weight: float = 1.0,
                 positive_iou: float = 0.5, negative_iou: float = 0.4, force_best: bool = True,
                 variances: Optional[Sequence[float]] = None):
        if classification not in CLASSIFICATION_LOSSES:
            raise ValueError(f"Invalid value for argument `classification`. Expected one of {CLASSIFICATION_LOSSES}. "
                             f"Received classification={classification!r}")
        if box not in BOX_LOSSES:
            raise ValueError(f"Invalid value for argument `box`. Expected one of {BOX_LOSSES}. Received box={box!r}")
        if not 0.0 <= negative_iou <= positive_iou <= 1.0:
            raise ValueError(f"Expected 0 <= negative_iou <= positive_iou <= 1. "
                             f"Received negative_iou={negative_iou}, positive_iou={positive_iou}")
        self.classification = classification
        self.box = box
        self.alpha = _check_number("alpha", alpha, 0.0, allow_none=True)
        self.gamma = _check_number("gamma", gamma, 0.0)
        self.beta = _check_number("beta", beta, 0.0)
        self.box_weight = _check_number("box_weight", box_weight, 0.0)
        self.positive_iou, self.negative_iou = float(positive_iou), float(negative_iou)
        self.force_best = bool(force_best)
        self.variances = None if variances is None else [float(v) for v in variances]

    def components(self, y_true, y_pred) -> dict:
        logits = ops.cast(y_pred["class_logits"], "float32")
        deltas = ops.cast(y_pred["box_deltas"], "float32")
        anchors = ops.cast(y_pred["anchors"], "float32")
        if len(anchors.shape) == 3:
            anchors = anchors[0]
        targets = anchor_ops.anchor_targets(
            anchors, y_true["boxes"], y_true["labels"], logits.shape[-1], self.positive_iou, self.negative_iou,
            self.variances, self.force_best)
        positive = targets["state"] == anchor_ops.POSITIVE
        counted = ops.cast(targets["state"] != anchor_ops.IGNORE, "float32")
        num_positives = ops.sum(ops.cast(positive, "float32"))
        normaliser = ops.maximum(num_positives, 1.0)

        gamma = self.gamma
        if self.classification == "automated_focal":
            gamma = automated_gamma(targets["class_targets"], logits, positive, fallback=self.gamma)
        per_anchor = ops.sum(sigmoid_focal(targets["class_targets"], logits, self.alpha, gamma), -1)
        classification = ops.sum(per_anchor * counted) / normaliser

        if self.box == "smooth_l1":
            per_box = ops.sum(smooth_l1(targets["box_targets"], deltas, self.beta), -1)
        else:
            predicted = anchor_ops.decode(deltas, anchors, self.variances)
            per_box = giou_loss(targets["matched_boxes"], predicted)
        box = ops.sum(per_box * ops.cast(positive, "float32")) / normaliser
        return {"loss": classification + self.box_weight * box, "classification": classification, "box": box,
                "num_positives": num_positives, "gamma": ops.convert_to_tensor(gamma, "float32")}

    def __call__(self, y_true, y_pred):
        return self.components(y_true, y_pred)["loss"]

    def get_config(self) -> dict:
        return {"classification": self.classification, "box": self.box, "alpha": self.alpha, "gamma": self.gamma,
                "beta": self.beta, "box_weight": self.box_weight, "positive_iou": self.positive_iou,
                "negative_iou": self.negative_iou, "force_best": self.force_best, "variances": self.variances}


class ModelDefinedLoss:
    """The "detector" loss: a marker telling the training loop to call `model.compute_loss(batch)`."""

    model_defined = True

    def __call__(self, y_true, y_pred):
        raise TypeError("train.loss='detector': this loss is computed by the model; call model.compute_loss(batch) "
                        "(a dict with 'loss') instead of loss(y_true, y_pred)")

    def get_config(self) -> dict:
        return {}


@LOSSES.register("detector")
def detector(**params) -> ModelDefinedLoss:
    """The detector's own loss (`model.compute_loss(batch)`); configure it in model.params."""
    if params:
        raise ValueError(f"train.loss='detector' takes no loss_params (the model's parameters configure its loss), "
                         f"received {sorted(params)}")
    return ModelDefinedLoss()


@LOSSES.register("detection")
def detection(**params) -> DetectionLoss:
    """The one-stage detector's loss: `classification` focal|automated_focal, `box` smooth_l1|giou,
    `alpha`, `gamma`, `beta`, `box_weight`, `positive_iou`, `negative_iou`, `force_best`, `variances`."""
    return DetectionLoss(**params)


@LOSSES.register("sigmoid_focal")
def sigmoid_focal_loss(**params) -> SigmoidFocal:
    """Focal loss over sigmoid classes (multi-hot targets): `alpha` (None: no weighting), `gamma`."""
    return SigmoidFocal(**params)


@LOSSES.register("smooth_l1")
def smooth_l1_loss(**params) -> SmoothL1:
    """Smooth L1 summed over the last axis: `beta` (0 gives L1)."""
    return SmoothL1(**params)


@LOSSES.register("giou")
def giou(**params) -> GIoULoss:
    """1 - GIoU of true and predicted boxes: `box_format` (default rel_xyxy)."""
    return GIoULoss(**params)
