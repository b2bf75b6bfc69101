"""Segmentation scores from one confusion matrix accumulated over the whole split.

Mean IoU averaged per batch is not the mean IoU of the split (a batch without a class would count
that class as 0 or skip it, depending on the batch), so both the Keras metric and the numpy
function count pixels into one confusion matrix (rows: true class, columns: predicted class) and
derive every score from it at the end:

- IoU of class k = TP / (TP + FP + FN); undefined (nan) for a class absent from both the truth and
  the predictions,
- mean IoU = the mean over the classes whose IoU is defined (as keras.metrics.MeanIoU does),
- pixel accuracy = trace / total.

Pixels whose true value is `ignore_value` (255 in Pascal VOC) are not counted.
"""
from __future__ import annotations

from typing import Optional

import keras
import numpy as np
from keras import ops


def confusion_matrix(y_true, y_pred, num_classes: int, ignore_value: Optional[int] = 255) -> np.ndarray:
    """[num_classes, num_classes] int64 pixel counts, rows true, columns predicted, ignored pixels left out.

    `y_pred` holds class ids of the same shape as `y_true`. A true or predicted id outside
    0..num_classes-1 (other than the ignore value in the truth) raises ValueError.
    """
    y_true = np.asarray(y_true).reshape(-1).astype(np.int64)
    y_pred = np.asarray(y_pred).reshape(-1).astype(np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_pred: expected {y_true.size} pixels like y_true, got {y_pred.size}")
    keep = y_true != ignore_value if ignore_value is not None else np.ones_like(y_true, bool)
    y_true, y_pred = y_true[keep], y_pred[keep]
    for name, ids in (("y_true", y_true), ("y_pred", y_pred)):
        bad = np.unique(ids[(ids < 0) | (ids >= num_classes)])
        if bad.size:
            raise ValueError(f"{name}: expected class ids 0..{num_classes - 1}"
                             f"{'' if name == 'y_pred' or ignore_value is None else f' or {ignore_value}'}, "
                             f"got {bad.tolist()}")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def scores_from_confusion(confusion) -> dict:
    """{"mean_iou", "per_class_iou" (nan where undefined), "pixel_accuracy"} of a confusion matrix."""
    confusion = np.asarray(confusion, np.float64)
    true_positives = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - true_positives
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(union > 0, true_positives / union, np.nan)
    defined = ~np.isnan(per_class)
    total = confusion.sum()
    return {
        "mean_iou": float(per_class[defined].mean()) if defined.any() else 0.0,
        "per_class_iou": per_class.tolist(),
        "pixel_accuracy": float(true_positives.sum() / total) if total else 0.0,
    }


def segmentation_scores(y_true, y_pred, num_classes: int, ignore_value: Optional[int] = 255) -> dict:
    """Scores of class-id masks (numpy): mean IoU, per-class IoU, pixel accuracy, and the confusion matrix."""
    confusion = confusion_matrix(y_true, y_pred, num_classes, ignore_value)
    return {**scores_from_confusion(confusion), "confusion_matrix": confusion.tolist()}


@keras.saving.register_keras_serializable(package="convpipe")
class SegmentationConfusion(keras.metrics.Metric):
    """Streaming confusion matrix over every batch seen; `result()` is the mean IoU, `scores()` all of them.

    `y_true`: class ids [b, H, W] (or [b, H, W, 1]). `y_pred`: float logits or probabilities
    [b, H, W, num_classes] (argmax taken), or integer class ids with as many pixels as y_true. True ids equal to
    `ignore_value`, or outside 0..num_classes-1, are not counted (the validate stage reports them).
    """

    def __init__(self, num_classes: int, ignore_value: Optional[int] = 255, name: str = "mean_iou", **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"Invalid value for argument `num_classes`. Expected an int >= 1. "
                             f"Received num_classes={num_classes!r}")
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.confusion = self.add_variable(
            shape=(num_classes, num_classes), initializer="zeros", dtype="float64", name="confusion",
            aggregation="sum")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(ops.convert_to_tensor(y_true), "int32")
        y_pred = ops.convert_to_tensor(y_pred)
        if keras.backend.is_float_dtype(y_pred.dtype):
            y_pred = ops.argmax(y_pred, axis=-1)
        y_true = ops.reshape(y_true, (-1,))
        y_pred = ops.reshape(ops.cast(y_pred, "int32"), (-1,))
        keep = (y_true >= 0) & (y_true < self.num_classes) & (y_pred >= 0) & (y_pred < self.num_classes)
        if self.ignore_value is not None:
            keep = keep & (y_true != self.ignore_value)
        weights = ops.cast(keep, "float64")
        if sample_weight is not None:
            weights = weights * ops.reshape(ops.cast(sample_weight, "float64"), (-1,))
        cells = ops.where(keep, y_true * self.num_classes + y_pred, 0)
        counts = ops.bincount(cells, weights=weights, minlength=self.num_classes * self.num_classes)
        self.confusion.assign_add(ops.reshape(counts, (self.num_classes, self.num_classes)))

    def result(self):
        confusion = ops.convert_to_tensor(self.confusion)
        true_positives = ops.diagonal(confusion)
        union = ops.sum(confusion, axis=0) + ops.sum(confusion, axis=1) - true_positives
        defined = ops.cast(union > 0, "float64")
        iou = ops.divide_no_nan(true_positives, union)
        return ops.cast(ops.divide_no_nan(ops.sum(iou * defined), ops.sum(defined)), "float32")

    def scores(self) -> dict:
        """{"mean_iou", "per_class_iou", "pixel_accuracy", "confusion_matrix"} from everything seen (numpy)."""
        confusion = np.asarray(ops.convert_to_numpy(self.confusion)).round().astype(np.int64)
        return {**scores_from_confusion(confusion), "confusion_matrix": confusion.tolist()}

    def reset_state(self):
        self.confusion.assign(ops.zeros((self.num_classes, self.num_classes), "float64"))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_value": self.ignore_value}
