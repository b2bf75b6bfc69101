"""What a detection report shows: precision-recall curves, the COCO tables, images with boxes.

The detection adapter (components/tasks/detection.py) builds its report sections from these;
plots are PNG bytes (matplotlib, Agg) for components/reports/html.py's `image_html`. The images with
boxes (here and in TensorBoard) come from components/reports/sample_grids.py's `boxes_grid_png`.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from components.reports.html import _png, _pyplot, image_html, table_html

SUMMARY_ROWS = (
    ("mAP", "AP @[.50:.95]"), ("AP50", "AP @.50"), ("AP75", "AP @.75"),
    ("AP_small", "AP small (< 32² px)"), ("AP_medium", "AP medium"), ("AP_large", "AP large (> 96² px)"),
    ("AR1", "AR, 1 detection"), ("AR10", "AR, 10 detections"), ("AR100", "AR, 100 detections"),
    ("AR_small", "AR small"), ("AR_medium", "AR medium"), ("AR_large", "AR large"),
)
"""The twelve COCO numbers in COCOeval.summarize's order: (metrics key, what it is)."""


def _value(v) -> object:
    """COCOeval's -1 (nothing to measure, e.g. no large boxes) shown as 'n/a'."""
    return "n/a" if v is None or float(v) < 0 else float(v)


def _colour(index: int):
    return _pyplot().get_cmap("tab10")(index % 10)


def precision_recall_png(curves: Mapping[str, np.ndarray], recall_thresholds: np.ndarray,
                         title: str = "precision-recall") -> Optional[bytes]:
    """One line per named curve (COCO's interpolated precision at each recall threshold; -1 = undefined)."""
    drawn = {name: np.asarray(c) for name, c in curves.items() if np.asarray(c).size and np.asarray(c)[0] > -1}
    if not drawn:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for index, (name, curve) in enumerate(drawn.items()):
        axis.plot(recall_thresholds, curve, label=name, color=_colour(index),
                  linestyle="--" if name.startswith("mean") else "-")
    axis.set_xlabel("recall")
    axis.set_ylabel("precision (interpolated)")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7)
    return _png(figure)


def pr_curves(coco) -> dict:
    """{label: curve} from CocoMetrics: each class at IoU .50, and the class means at .50 and .75."""
    curves = {f"{name} @.50": coco.precision_curve(k, 0.5) for k, name in enumerate(coco.class_names)}
    curves["mean @.50"] = coco.precision_curve(None, 0.5)
    curves["mean @.75"] = coco.precision_curve(None, 0.75)
    return curves


def summary_table(metrics: Mapping) -> str:
    rows = [(name, about, _value(metrics.get(name))) for name, about in SUMMARY_ROWS if name in metrics]
    rows.append(("images", "test split", int(metrics.get("num_examples", 0))))
    rows.append(("boxes", "true boxes (crowd regions apart)", int(metrics.get("num_boxes", 0))))
    return table_html(["metric", "meaning", "value"], rows)


def per_class_table(metrics: Mapping) -> str:
    counts = metrics.get("boxes_per_class", {})
    rows = [(name, _value(v["AP"]), _value(v["AP50"]), _value(v["AP75"]), int(counts.get(name, 0)))
            for name, v in metrics["per_class"].items()]
    return table_html(["class", "AP @[.50:.95]", "AP @.50", "AP @.75", "true boxes"], rows)


def side_by_side_table(metrics_by_name: Mapping[str, Mapping], extra_rows: Sequence[Sequence] = ()) -> str:
    """Methods as columns, the COCO numbers and per-class AP as rows (one HTML table), after
    `extra_rows` (label, one value per method)."""
    names = list(metrics_by_name)
    rows = [tuple(row) for row in extra_rows]
    rows += [(about, *[_value(metrics_by_name[n].get(key)) for n in names]) for key, about in SUMMARY_ROWS[:6]]
    classes = list(next(iter(metrics_by_name.values()), {}).get("per_class", {}))
    rows += [(f"AP {c}", *[_value(metrics_by_name[n].get("per_class", {}).get(c, {}).get("AP")) for n in names])
             for c in classes]
    return table_html(["metric", *names], rows)


def detection_sections(metrics: Mapping, curves: Mapping[str, np.ndarray], recall_thresholds: np.ndarray,
                       grid_png: Optional[bytes]) -> list[tuple[str, str]]:
    return [
        ("Test metrics (COCO)", summary_table(metrics)
         + "<p>AP and AR as COCOeval computes them for boxes: IoU thresholds .50:.05:.95, 101-point interpolated "
           "precision, size buckets by box area in pixels of the model's input; crowd regions are matched as "
           "ignore; n/a where the test split has no boxes of that kind.</p>"),
        ("Per-class AP", per_class_table(metrics)),
        ("Precision-recall curves", image_html(precision_recall_png(curves, recall_thresholds), "precision-recall curves")),
        ("Images with boxes", image_html(grid_png, "test images with predicted and true boxes")),
    ]
