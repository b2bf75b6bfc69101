"""pycocotools' COCOeval on our own cases: the reference our mAP (models/detection/metrics.py) must
agree with. pycocotools is in setup.py's `test` extra, so these comparisons run in `make test`.

A case is a list of images, each (size (H, W), gt boxes [G, 4], gt labels [G], gt crowd [G],
detection boxes [D, 4], scores [D], labels [D]), boxes rel_xyxy, labels 0..K-1.
"""
import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

SUMMARY_KEYS = ["mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large"]
"""Our summary's names for COCOeval.stats, in its order."""


def _xywh(box, size):
    h, w = size
    return [float(box[0] * w), float(box[1] * h), float((box[2] - box[0]) * w), float((box[3] - box[1]) * h)]


def pycocotools_eval(images, num_classes: int) -> COCOeval:
    """COCOeval (bbox, default parameters) after evaluate, accumulate and summarize."""
    gts, dts = [], []
    for image_id, (size, gt, gl, crowd, dets, scores, labels) in enumerate(images, start=1):
        for box, label, is_crowd in zip(np.reshape(gt, (-1, 4)), gl, crowd):
            b = _xywh(box, size)
            gts.append({"id": len(gts) + 1, "image_id": image_id, "category_id": int(label) + 1, "bbox": b,
                        "area": b[2] * b[3], "iscrowd": int(is_crowd)})
        for box, score, label in zip(np.reshape(dets, (-1, 4)), scores, labels):
            dts.append({"image_id": image_id, "category_id": int(label) + 1, "bbox": _xywh(box, size),
                        "score": float(score)})
    coco = COCO()
    coco.dataset = {"images": [{"id": i + 1, "height": s[0][0], "width": s[0][1]} for i, s in enumerate(images)],
                    "annotations": gts, "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        result = coco.loadRes(dts) if dts else COCO()  # loadRes refuses an empty list
        evaluation = COCOeval(coco, result, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def ours(images, num_classes: int):
    """The same case through our CocoEvaluator."""
    from models.detection.metrics import CocoEvaluator

    evaluator = CocoEvaluator(num_classes)
    for size, gt, gl, crowd, dets, scores, labels in images:
        evaluator.add_image(gt, gl, dets, scores, labels, size, gt_crowd=crowd)
    return evaluator.evaluate()
