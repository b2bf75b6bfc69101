"""Classification metrics from true labels and predicted probabilities (numpy, no framework).

One function computes everything evaluate reports and blesses on, for the trained model and for
the served model alike, so the two are compared by the same arithmetic. A class never predicted
has precision 0 (scikit-learn's zero_division=0); macro averages are over all classes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

LOWER_IS_BETTER = ("loss",)


def metric_names(top_k: int) -> list[str]:
    return ["accuracy", f"top_{top_k}_accuracy", "loss", "macro_precision", "macro_recall", "macro_f1"]


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix


def classification_metrics(true: Sequence[int], probabilities: np.ndarray, class_names: Sequence[str],
                           top_k: int = 2) -> dict:
    true = np.asarray(true, np.int64)
    probabilities = np.asarray(probabilities, np.float64)
    num_classes = len(class_names)
    if probabilities.ndim != 2 or probabilities.shape != (len(true), num_classes):
        raise ValueError(f"probabilities: expected shape ({len(true)}, {num_classes}), got {probabilities.shape}")
    if len(true) == 0:
        raise ValueError("no examples to evaluate: the split is empty")
    top_k = max(1, min(int(top_k), num_classes))
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(true, predicted, num_classes)
    diagonal = np.diag(matrix).astype(np.float64)
    predicted_counts = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    precision = np.divide(diagonal, predicted_counts, out=np.zeros(num_classes), where=predicted_counts > 0)
    recall = np.divide(diagonal, support, out=np.zeros(num_classes), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_classes), where=(precision + recall) > 0)
    # top-k: the true class is among the k most probable (ties broken by class order, as argsort is stable)
    ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    in_top_k = (ranked == true[:, None]).any(axis=1)
    true_probability = np.clip(probabilities[np.arange(len(true)), true], 1e-12, 1.0)
    return {
        "num_examples": int(len(true)),
        "accuracy": float((predicted == true).mean()),
        f"top_{top_k}_accuracy": float(in_top_k.mean()),
        "loss": float(-np.log(true_probability).mean()),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(class_names)},
        "confusion_matrix": matrix.tolist(),
        "class_names": list(class_names),
        "top_k": top_k,
    }


def not_worse(metric: str, value: float, reference: float, tolerance: float) -> bool:
    """`value` is at least as good as `reference` within `tolerance` (direction by metric name)."""
    if metric in LOWER_IS_BETTER or metric.endswith("loss"):
        return value <= reference + tolerance
    return value >= reference - tolerance
