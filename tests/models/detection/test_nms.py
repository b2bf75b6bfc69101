"""The tf.image NMS wrapper: per class, score threshold, caps, padding, our box format."""
import numpy as np
import pytest

from models.detection import nms

BOXES = np.array([[[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.45], [0.5, 0.5, 1.0, 1.0], [0.6, 0.6, 1.0, 1.0]]], np.float32)
SCORES = np.array([[[0.9, 0.0], [0.8, 0.3], [0.02, 0.7], [0.0, 0.6]]], np.float32)


def _numpy(result):
    return {k: np.asarray(v) for k, v in result.items()}


def test_per_class_suppression_threshold_and_padding():
    out = _numpy(nms.batched_nms(BOXES, SCORES, max_detections=6, iou_threshold=0.5, score_threshold=0.1))
    # class 0: box 1 (IoU 0.9 with box 0) suppressed, box 2 under threshold; class 1: box 3 (IoU 0.64) suppressed
    assert out["num_detections"].tolist() == [3]
    np.testing.assert_allclose(out["scores"][0], [0.9, 0.7, 0.3, 0, 0, 0])
    assert out["classes"][0, :3].tolist() == [0, 1, 1]
    assert out["classes"].dtype == np.int32
    np.testing.assert_allclose(out["boxes"][0, :3], [[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0, 0.5, 0.45]])
    np.testing.assert_array_equal(out["boxes"][0, 3:], 0)


def test_caps_per_image_and_per_class():
    out = _numpy(nms.batched_nms(BOXES, SCORES, max_detections=2, iou_threshold=0.95, score_threshold=0.1))
    assert out["num_detections"].tolist() == [2]
    np.testing.assert_allclose(out["scores"][0], [0.9, 0.8])
    out = _numpy(nms.batched_nms(BOXES, SCORES, max_detections=8, max_per_class=1, iou_threshold=0.95, score_threshold=0.1))
    np.testing.assert_allclose(out["scores"][0, :3], [0.9, 0.7, 0])


def test_class_agnostic_proposals():
    out = _numpy(nms.class_agnostic_nms(BOXES, SCORES.max(-1), max_output=3, iou_threshold=0.7))
    # box 1 overlaps box 0 at IoU 0.9 (suppressed); box 3 overlaps box 2 at 0.64 < 0.7 (kept)
    assert out["num_detections"].tolist() == [3]
    np.testing.assert_allclose(out["scores"][0], [0.9, 0.7, 0.6])


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_detections"):
        nms.batched_nms(BOXES, SCORES, max_detections=0)
    with pytest.raises(ValueError, match=r"scores \[B, N, K\]"):
        nms.batched_nms(BOXES, SCORES[0])
