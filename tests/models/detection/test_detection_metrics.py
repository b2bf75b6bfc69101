"""COCO mAP on hand-made cases with known answers, and against pycocotools (a test dependency: setup.py's
`test` extra) on random cases."""
import numpy as np
import pytest

from models.detection.metrics import CocoEvaluator
from tests.models.detection.coco_reference import SUMMARY_KEYS, ours, pycocotools_eval

SIZE = (100, 100)  # image (H, W) in pixels; boxes below are pixels, passed as "xyxy"


def _evaluate(images, num_classes=1):
    """images: list of (gt_boxes, gt_labels, det_boxes, det_scores, det_labels[, crowd])."""
    evaluator = CocoEvaluator(num_classes)
    for image in images:
        gt, gl, dt, ds, dl = image[:5]
        crowd = image[5] if len(image) > 5 else None
        evaluator.add_image(gt, gl, dt, ds, dl, SIZE, gt_crowd=crowd, box_format="xyxy")
    return evaluator.evaluate()


def test_one_perfect_box_is_one():
    metrics = _evaluate([([[10, 10, 50, 50]], [0], [[10, 10, 50, 50]], [0.9], [0])])
    for key in ("mAP", "AP50", "AP75", "AP_medium", "AR1", "AR100"):
        assert metrics.summary[key] == pytest.approx(1.0, abs=1e-12), key
    # 40 x 40 = 1600 px: a medium box, so small and large have no ground truth: -1 as in COCOeval
    assert metrics.summary["AP_small"] == -1 and metrics.summary["AP_large"] == -1
    assert metrics.per_class["0"]["AP"] == pytest.approx(1.0)


def test_a_miss_halves_recall():
    # Two boxes, one found: precision 1 up to recall 0.5 -> 51 of 101 recall points.
    metrics = _evaluate([([[10, 10, 50, 50], [60, 60, 90, 90]], [0, 0], [[10, 10, 50, 50]], [0.9], [0])])
    assert metrics.summary["mAP"] == pytest.approx(51 / 101, abs=1e-6)
    assert metrics.summary["AR100"] == pytest.approx(0.5, abs=1e-12)


def test_a_duplicate_detection():
    # A duplicate scored below the true positive costs nothing: precision 1 at every recall reached.
    below = _evaluate([([[10, 10, 50, 50]], [0], [[10, 10, 50, 50], [12, 10, 50, 50]], [0.9, 0.8], [0, 0])])
    assert below.summary["mAP"] == pytest.approx(1.0, abs=1e-12)
    # A looser duplicate scored above (IoU 0.62: true positive up to threshold 0.60, false beyond) and the exact
    # box below it: thresholds .50-.60 give AP 1; .65-.95 match only the second detection, precision 1/2 -> 0.5.
    loose = [10, 10, 50, 34.8]  # 40 x 24.8 inside the 40 x 40 box: IoU 0.62
    above = _evaluate([([[10, 10, 50, 50]], [0], [loose, [10, 10, 50, 50]], [0.95, 0.9], [0, 0])])
    assert above.summary["AP50"] == pytest.approx(1.0, abs=1e-12)
    assert above.summary["AP75"] == pytest.approx(0.5, abs=1e-12)
    assert above.summary["mAP"] == pytest.approx((3 * 1.0 + 7 * 0.5) / 10, abs=1e-6)


def test_a_crowd_box_absorbs_detections_and_is_not_counted():
    gt = [[10, 10, 40, 40], [50, 50, 100, 100]]
    crowd = [False, True]
    # Two detections inside the crowd region, scored above the true positive: matched as ignore.
    dets = [[60, 60, 70, 70], [80, 80, 95, 95], [10, 10, 40, 40]]
    metrics = _evaluate([(gt, [0, 0], dets, [0.99, 0.98, 0.5], [0, 0, 0], crowd)])
    assert metrics.summary["mAP"] == pytest.approx(1.0, abs=1e-12)
    # Without the crowd flag the region is a missed box and the two detections are false positives.
    plain = _evaluate([(gt, [0, 0], dets, [0.99, 0.98, 0.5], [0, 0, 0])])
    # detections: FP (IoU 0.04), FP (0.09), TP: precision 1/3 at recall 1/2 -> 51 points of 1/3
    assert plain.summary["mAP"] == pytest.approx(51 / 101 / 3, abs=1e-6)


def test_classes_are_separate_and_absent_classes_are_left_out():
    images = [
        ([[10, 10, 50, 50]], [0], [[10, 10, 50, 50], [10, 10, 50, 50]], [0.9, 0.8], [0, 1]),  # class-1 det is an FP
        ([[20, 20, 60, 60]], [1], [[20, 20, 60, 60]], [0.7], [1]),
    ]
    metrics = _evaluate(images, num_classes=3)
    assert metrics.per_class["0"]["AP"] == pytest.approx(1.0)
    # class 1: FP at 0.8 then TP at 0.7 -> precision 0.5 at recall 1 -> AP 0.5; class 2 has no ground truth
    assert metrics.per_class["1"]["AP"] == pytest.approx(0.5, abs=1e-6)
    assert metrics.per_class["2"]["AP"] == -1
    assert metrics.summary["mAP"] == pytest.approx(0.75, abs=1e-6)
    assert metrics.num_images == 2


def test_size_buckets_use_absolute_pixels_and_negative_images_count():
    evaluator = CocoEvaluator(["shape"])
    # 0.2 x 0.2 of a 100 x 100 image = 400 px (small); of a 300 x 300 image = 3600 px (medium)
    evaluator.add_image([[0, 0, 0.2, 0.2]], [0], [[0, 0, 0.2, 0.2]], [0.9], [0], (100, 100))
    evaluator.add_image([[0, 0, 0.2, 0.2]], [0], [], [], [], (300, 300))
    evaluator.add_image([], [], [[0.5, 0.5, 0.9, 0.9]], [0.95], [0], (100, 100))  # a negative image, one FP
    summary = evaluator.evaluate().summary
    assert summary["AP_small"] == pytest.approx(1.0)
    assert summary["AP_medium"] == pytest.approx(0.0)
    # all: FP (0.95) then TP (0.9) of 2 boxes: precision 0.5 up to recall 0.5 -> 0.5 * 51 / 101
    assert summary["mAP"] == pytest.approx(0.5 * 51 / 101, abs=1e-6)


def test_add_batch_strips_padding_and_checks_labels():
    evaluator = CocoEvaluator(2)
    targets = {"boxes": np.array([[[0.1, 0.1, 0.5, 0.5], [-1, -1, -1, -1]]]), "labels": np.array([[1, -1]])}
    detections = {"boxes": np.array([[[0.1, 0.1, 0.5, 0.5], [0, 0, 0, 0]]]), "scores": np.array([[0.8, 0.0]]),
                  "classes": np.array([[1, 0]]), "num_detections": np.array([1])}
    evaluator.add_batch(targets, detections, image_size=(64, 64))
    metrics = evaluator.evaluate()
    assert metrics.per_class["1"]["AP"] == pytest.approx(1.0) and metrics.per_class["0"]["AP"] == -1
    assert metrics.precision.shape == (10, 101, 2, 4, 3)
    np.testing.assert_allclose(metrics.precision_curve(1), np.ones(101))
    with pytest.raises(ValueError, match="gt_labels expected in 0..1"):
        evaluator.add_image([[0, 0, 1, 1]], [2], [], [], [], (8, 8))


def _random_case(rng, num_images=12, num_classes=3):
    images = []
    for _ in range(num_images):
        size = (int(rng.integers(60, 400)), int(rng.integers(60, 400)))
        g = int(rng.integers(0, 5))
        xy = rng.uniform(0, 0.7, (g, 2))
        gt = np.concatenate([xy, xy + rng.uniform(0.02, 0.3, (g, 2))], 1)
        gl = rng.integers(0, num_classes, g)
        crowd = rng.uniform(size=g) < 0.15
        dets, labels = [], []
        for box, label in zip(gt, gl):  # noisy copies of the truth, some duplicated, some relabelled
            for _ in range(int(rng.integers(0, 3))):
                dets.append(box + rng.normal(0, 0.03, 4))
                labels.append(label if rng.uniform() < 0.8 else int(rng.integers(0, num_classes)))
        for _ in range(int(rng.integers(0, 3))):  # and pure false positives
            xy = rng.uniform(0, 0.7, 2)
            dets.append(np.concatenate([xy, xy + rng.uniform(0.02, 0.3, 2)]))
            labels.append(int(rng.integers(0, num_classes)))
        dets = np.clip(np.array(dets).reshape(-1, 4), 0, 1)
        dets[:, 2:] = np.maximum(dets[:, 2:], dets[:, :2] + 0.01)
        scores = np.round(rng.uniform(0.05, 1, len(dets)), 2)  # rounded: ties happen, as in real output
        images.append((size, gt, gl, crowd, dets, scores, np.array(labels, int)))
    return images


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_pycocotools_on_random_splits(seed):
    rng = np.random.default_rng(seed)
    images = _random_case(rng)
    reference = pycocotools_eval(images, 3)
    metrics = ours(images, 3)
    np.testing.assert_allclose([metrics.summary[k] for k in SUMMARY_KEYS], reference.stats, atol=1e-6)
    np.testing.assert_allclose(metrics.precision, reference.eval["precision"], atol=1e-6)
    np.testing.assert_allclose(metrics.recall, reference.eval["recall"], atol=1e-6)


def _image(gt=(), gl=(), crowd=None, dets=(), scores=(), labels=(), size=(120, 160)):
    gt = np.reshape(np.asarray(gt, float), (-1, 4))
    return (size, gt, np.asarray(gl, int), np.zeros(len(gt), bool) if crowd is None else np.asarray(crowd, bool),
            np.reshape(np.asarray(dets, float), (-1, 4)), np.asarray(scores, float), np.asarray(labels, int))


EDGE_CASES = {
    # a crowd region absorbs every detection inside it, scored above or below the true positive
    "crowd": [_image([[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 1.0, 1.0]], [0, 0], [False, True],
                     [[0.6, 0.6, 0.7, 0.7], [0.8, 0.8, 0.95, 0.95], [0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]],
                     [0.99, 0.98, 0.5, 0.3], [0, 0, 0, 0]),
              _image([[0.2, 0.2, 0.6, 0.5]], [1], [True], [[0.25, 0.25, 0.5, 0.45]], [0.7], [1]),
              _image([[0.2, 0.2, 0.6, 0.5]], [1], None, [[0.2, 0.21, 0.6, 0.5]], [0.6], [1])],
    # ground truth everywhere, not one detection: every AP and AR is 0
    "no_detections": [_image([[0.1, 0.1, 0.5, 0.5]], [0]), _image([[0.2, 0.3, 0.9, 0.8], [0, 0, 0.1, 0.1]], [1, 0])],
    # class 2 has detections but no ground truth: -1 for it, left out of every mean
    "class_without_ground_truth": [
        _image([[0.1, 0.1, 0.5, 0.5]], [0], None, [[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.5]], [0.9, 0.95], [0, 2]),
        _image([[0.3, 0.3, 0.8, 0.9]], [1], None, [[0.3, 0.32, 0.8, 0.9], [0.6, 0.1, 0.7, 0.2]], [0.8, 0.85], [1, 2])],
    # images without ground truth whose detections are all false positives
    "negative_images": [_image([], [], None, [[0.1, 0.1, 0.3, 0.3]], [0.9], [0]),
                        _image([[0.4, 0.4, 0.6, 0.6]], [0], None, [[0.4, 0.4, 0.6, 0.61]], [0.5], [0])],
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_cases_agree_with_pycocotools(case):
    images = EDGE_CASES[case]
    reference = pycocotools_eval(images, 3)
    metrics = ours(images, 3)
    np.testing.assert_allclose([metrics.summary[k] for k in SUMMARY_KEYS], reference.stats, atol=0.005)
    np.testing.assert_allclose(metrics.precision, reference.eval["precision"], atol=1e-6)
    if case == "no_detections":
        assert metrics.summary["mAP"] == 0.0 and metrics.summary["AR100"] == 0.0
    if case == "class_without_ground_truth":
        assert metrics.per_class["2"]["AP"] == -1 and (reference.eval["precision"][:, :, 2] == -1).all()
