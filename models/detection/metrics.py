"""COCO-style detection metrics, computed as pycocotools' COCOeval computes them for boxes.

    evaluator = CocoEvaluator(class_names)
    for images, targets in test_split:                      # per image or per padded batch
        evaluator.add_batch(targets, model.detect(images), image_size=(H, W))
    metrics = evaluator.evaluate()                          # metrics.summary["mAP"], ["AP50"], ...

What COCOeval does, and so what this does (`bbox` IoU, default parameters):
- IoU thresholds 0.50:0.05:0.95 (T = 10); recall thresholds 0:0.01:1 (R = 101); area ranges all,
  small (< 32^2 px), medium (32^2..96^2), large (> 96^2) on the absolute image size given; at most
  1, 10 and 100 detections per image, the highest scoring.
- Per image and class, detections best first are matched greedily to the unmatched ground truth
  of highest IoU >= threshold; ground truth outside the area range or `crowd` is "ignore": a
  detection matched to it counts neither way, and a crowd region can absorb any number of
  detections (its IoU is the intersection over the detection's area). Unmatched detections outside
  the area range are ignored too.
- Per class, detections of every image are sorted by score (stable), precision is made
  monotone from the right, and read at each recall threshold (the first point reaching it; 0
  past the last recall) - the 101-point interpolation. AP is the mean over thresholds and
  classes of those values; a class without (non-ignored) ground truth has -1 and is left out of
  every mean, as in COCOeval. Values are -1 where nothing was defined.

Ties in score between images are broken by insertion order (COCOeval uses image id order).
Ground-truth areas default to box areas; pass `gt_areas` to use e.g. segment areas as COCO does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np

from models.detection import boxes as box_ops

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1)
MAX_DETECTIONS = (1, 10, 100)
AREA_RANGES = {"all": (0.0, 1e5 ** 2), "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
               "large": (96.0 ** 2, 1e5 ** 2)}
AREA_NAMES = tuple(AREA_RANGES)


@dataclass
class _ImageClass:
    """COCOeval's evalImg for one image, one class, one area range (maxDet = 100)."""
    scores: np.ndarray       # [D] best first
    matched: np.ndarray      # [T, D] bool
    dt_ignore: np.ndarray    # [T, D] bool
    gt_ignore: np.ndarray    # [G] bool


@dataclass
class CocoMetrics:
    """`summary`: the twelve COCO numbers (mAP, AP50, AP75, AP_small/medium/large, AR1, AR10,
    AR100, AR_small/medium/large); `per_class`: {name: {"AP", "AP50", "AP75"}}; `precision`
    [T, R, K, A, M] and `recall` [T, K, A, M] as COCOeval's `eval` holds them (for PR curves)."""
    summary: dict
    per_class: dict
    precision: np.ndarray
    recall: np.ndarray
    class_names: list
    num_images: int
    iou_thresholds: np.ndarray = field(default_factory=lambda: IOU_THRESHOLDS.copy())
    recall_thresholds: np.ndarray = field(default_factory=lambda: RECALL_THRESHOLDS.copy())

    def to_dict(self) -> dict:
        return {**self.summary, "per_class": self.per_class, "num_images": self.num_images}

    def precision_curve(self, class_index: Optional[int] = None, iou_threshold: float = 0.5) -> np.ndarray:
        """Interpolated precision at the 101 recall thresholds (area all, 100 detections): one
        class, or the mean over classes with ground truth; -1 where undefined."""
        t = int(np.argmin(np.abs(IOU_THRESHOLDS - iou_threshold)))
        curves = self.precision[t, :, :, 0, -1]
        if class_index is not None:
            return curves[:, class_index]
        defined = curves[0] > -1
        return curves[:, defined].mean(1) if defined.any() else -np.ones(len(RECALL_THRESHOLDS))


def _mean_defined(values: np.ndarray) -> float:
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else -1.0


def _match(ious: np.ndarray, gt_ignore: np.ndarray, crowd: np.ndarray, dt_outside: np.ndarray):
    """COCOeval.evaluateImg's greedy matching: ious [D, G] with detections best first and
    ground truth sorted non-ignored first. Returns (matched [T, D], dt_ignore [T, D])."""
    num_dt, num_gt = ious.shape
    thresholds = len(IOU_THRESHOLDS)
    gt_matched = np.zeros((thresholds, num_gt), bool)
    matched = np.zeros((thresholds, num_dt), bool)
    dt_ignore = np.zeros((thresholds, num_dt), bool)
    if num_dt and num_gt:
        for t, threshold in enumerate(IOU_THRESHOLDS):
            for d in range(num_dt):
                best, m = min(threshold, 1 - 1e-10), -1
                for g in range(num_gt):
                    if gt_matched[t, g] and not crowd[g]:
                        continue
                    if m > -1 and not gt_ignore[m] and gt_ignore[g]:
                        break
                    if ious[d, g] < best:
                        continue
                    best, m = ious[d, g], g
                if m == -1:
                    continue
                dt_ignore[t, d] = gt_ignore[m]
                matched[t, d] = True
                gt_matched[t, m] = True
    dt_ignore |= ~matched & dt_outside[None, :]
    return matched, dt_ignore


class CocoEvaluator:
    """Accumulates per-image ground truth and detections over a split; `evaluate()` gives COCO mAP."""

    def __init__(self, class_names: Union[int, Sequence[str]]):
        if isinstance(class_names, int):
            class_names = [str(k) for k in range(class_names)]
        self.class_names = list(class_names)
        if not self.class_names:
            raise ValueError("CocoEvaluator: expected at least one class, received none")
        self.num_images = 0
        # per class, per area range: list over images of _ImageClass
        self._results = [[[] for _ in AREA_RANGES] for _ in self.class_names]

    def reset(self) -> None:
        self.__init__(self.class_names)

    # ------------------------------------------------------------------------------------------
    def add_image(self, gt_boxes, gt_labels, det_boxes, det_scores, det_labels, image_size, *,
                  gt_crowd=None, gt_areas=None, box_format: str = "rel_xyxy") -> None:
        """One image: ground truth boxes [G, 4] and labels [G] (0..K-1), detections [D, 4], scores
        [D], labels [D], in `box_format` (relative formats are scaled by `image_size` (H, W))."""
        num_classes = len(self.class_names)
        gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
        det_labels = np.asarray(det_labels, np.int64).reshape(-1)
        det_scores = np.asarray(det_scores, np.float64).reshape(-1)
        gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
        det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
        if len(gt_boxes) != len(gt_labels) or len(det_boxes) != len(det_labels) or len(det_boxes) != len(det_scores):
            raise ValueError(f"add_image: expected one label per box and one score per detection, received "
                             f"{len(gt_boxes)} boxes / {len(gt_labels)} labels, {len(det_boxes)} detections / "
                             f"{len(det_labels)} labels / {len(det_scores)} scores")
        for name, labels in (("gt_labels", gt_labels), ("det_labels", det_labels)):
            if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(f"add_image: {name} expected in 0..{num_classes - 1}, received {sorted(set(labels.tolist()))}")
        crowd = np.zeros(len(gt_boxes), bool) if gt_crowd is None else np.asarray(gt_crowd, bool).reshape(-1)
        image_shape = (float(image_size[0]), float(image_size[1]))
        gt_abs = box_ops.to_numpy(box_ops.convert(gt_boxes, box_format, "xyxy", image_shape)).reshape(-1, 4)
        det_abs = box_ops.to_numpy(box_ops.convert(det_boxes, box_format, "xyxy", image_shape)).reshape(-1, 4)
        gt_area = (box_ops.to_numpy(box_ops.area(gt_abs)).reshape(-1) if gt_areas is None
                   else np.asarray(gt_areas, np.float64).reshape(-1))
        det_area = box_ops.to_numpy(box_ops.area(det_abs)).reshape(-1)
        ious = box_ops.to_numpy(box_ops.pairwise_iou(det_abs, gt_abs, "xyxy", crowd=crowd)).reshape(len(det_abs), len(gt_abs))
        self.num_images += 1
        for k in range(num_classes):
            gt_index = np.flatnonzero(gt_labels == k)
            dt_index = np.flatnonzero(det_labels == k)
            if not gt_index.size and not dt_index.size:
                continue
            order = np.argsort(-det_scores[dt_index], kind="mergesort")[:MAX_DETECTIONS[-1]]
            dt_index = dt_index[order]
            for a, (low, high) in enumerate(AREA_RANGES.values()):
                ignore = crowd[gt_index] | (gt_area[gt_index] < low) | (gt_area[gt_index] > high)
                gt_order = np.argsort(ignore, kind="mergesort")
                sorted_gt = gt_index[gt_order]
                outside = (det_area[dt_index] < low) | (det_area[dt_index] > high)
                matched, dt_ignore = _match(ious[np.ix_(dt_index, sorted_gt)], ignore[gt_order], crowd[sorted_gt], outside)
                self._results[k][a].append(_ImageClass(det_scores[dt_index], matched, dt_ignore, ignore[gt_order]))

    def add_batch(self, targets: dict, detections: dict, image_size, crowd=None) -> None:
        """A padded batch: targets {"boxes" [B, M, 4], "labels" [B, M] (-1 = padding)} as
        components/examples/ yields them; detections {"boxes", "scores", "classes",
        "num_detections"} as a detector's `detect` returns them; both rel_xyxy."""
        gt_boxes, gt_labels = (np.asarray(targets[k]) for k in ("boxes", "labels"))
        det_boxes, scores, classes, counts = (np.asarray(detections[k]) for k in ("boxes", "scores", "classes", "num_detections"))
        for i in range(len(gt_labels)):
            keep = gt_labels[i] >= 0
            n = int(counts[i])
            self.add_image(gt_boxes[i][keep], gt_labels[i][keep], det_boxes[i][:n], scores[i][:n], classes[i][:n],
                           image_size, gt_crowd=None if crowd is None else np.asarray(crowd[i])[keep])

    # ------------------------------------------------------------------------------------------
    def _accumulate(self):
        """COCOeval.accumulate: precision [T, R, K, A, M] and recall [T, K, A, M], -1 where undefined."""
        T, R, K, A, M = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(self.class_names), len(AREA_RANGES), len(MAX_DETECTIONS)
        precision = -np.ones((T, R, K, A, M))
        recall = -np.ones((T, K, A, M))
        for k in range(K):
            for a in range(A):
                images = self._results[k][a]
                if not images:
                    continue
                gt_ignore = np.concatenate([e.gt_ignore for e in images])
                positives = np.count_nonzero(~gt_ignore)
                if positives == 0:
                    continue
                for m, max_det in enumerate(MAX_DETECTIONS):
                    scores = np.concatenate([e.scores[:max_det] for e in images])
                    order = np.argsort(-scores, kind="mergesort")
                    matched = np.concatenate([e.matched[:, :max_det] for e in images], axis=1)[:, order]
                    ignored = np.concatenate([e.dt_ignore[:, :max_det] for e in images], axis=1)[:, order]
                    tp_sum = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
                    fp_sum = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
                    for t in range(T):
                        tp, fp = tp_sum[t], fp_sum[t]
                        rc = tp / positives
                        pr = tp / (fp + tp + np.spacing(1))
                        recall[t, k, a, m] = rc[-1] if len(tp) else 0
                        pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr  # monotone from the right
                        index = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
                        q = np.zeros(R)
                        inside = index < len(pr)
                        q[inside] = pr[index[inside]]
                        precision[t, :, k, a, m] = q
        return precision, recall

    def evaluate(self) -> CocoMetrics:
        precision, recall = self._accumulate()
        all_area, last = 0, len(MAX_DETECTIONS) - 1
        t50 = np.where(IOU_THRESHOLDS == 0.5)[0]
        t75 = np.where(IOU_THRESHOLDS == 0.75)[0]

        def ap(t=slice(None), area=all_area, k=slice(None)):
            return _mean_defined(precision[t, :, k, area, last])

        def ar(area=all_area, m=last):
            return _mean_defined(recall[:, :, area, m])

        summary = {
            "mAP": ap(), "AP50": ap(t50), "AP75": ap(t75),
            "AP_small": ap(area=1), "AP_medium": ap(area=2), "AP_large": ap(area=3),
            "AR1": ar(m=0), "AR10": ar(m=1), "AR100": ar(),
            "AR_small": ar(area=1), "AR_medium": ar(area=2), "AR_large": ar(area=3),
        }
        per_class = {name: {"AP": ap(k=k), "AP50": ap(t50, k=k), "AP75": ap(t75, k=k)}
                     for k, name in enumerate(self.class_names)}
        return CocoMetrics(summary, per_class, precision, recall, list(self.class_names), self.num_images)
