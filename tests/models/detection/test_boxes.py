"""Box formats, area, clipping, IoU and GIoU against hand-computed values."""
import itertools

import numpy as np
import pytest

from models.detection import boxes

# Integer pixel boxes in a 64 x 32 (H x W) image: every conversion below is exact arithmetic.
XYXY = np.array([[0, 0, 10, 10], [4, 6, 12, 20], [1, 3, 2, 63]], np.float32)
IMAGE = (64, 32, 3)


def test_each_format_holds_the_expected_numbers():
    box = np.array([[4, 6, 12, 20]], np.float32)
    expected = {
        "xyxy": [4, 6, 12, 20], "xywh": [4, 6, 8, 14], "cxcywh": [8, 13, 8, 14], "yxyx": [6, 4, 20, 12],
        "rel_xyxy": [4 / 32, 6 / 64, 12 / 32, 20 / 64], "rel_xywh": [4 / 32, 6 / 64, 8 / 32, 14 / 64],
        "rel_cxcywh": [8 / 32, 13 / 64, 8 / 32, 14 / 64], "rel_yxyx": [6 / 64, 4 / 32, 20 / 64, 12 / 32],
    }
    for name, values in expected.items():
        np.testing.assert_array_equal(boxes.to_numpy(boxes.convert(box, "xyxy", name, IMAGE)), [values])


@pytest.mark.parametrize("source,target", list(itertools.permutations(boxes.FORMATS, 2)))
def test_round_trips_are_exact(source, target):
    start = boxes.to_numpy(boxes.convert(XYXY, "xyxy", source, IMAGE))
    there = boxes.convert(start, source, target, IMAGE)
    back = boxes.to_numpy(boxes.convert(there, target, source, IMAGE))
    np.testing.assert_array_equal(back, start)


def test_round_trip_of_arbitrary_floats_to_rounding_and_dtype_kept():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (20, 2))
    start = np.concatenate([xy, xy + rng.uniform(0.1, 30, (20, 2))], -1)  # float64
    for fmt in boxes.FORMATS:
        there = boxes.convert(start, "xyxy", fmt, (37, 53))
        back = boxes.to_numpy(boxes.convert(there, fmt, "xyxy", (37, 53)))
        assert back.dtype == np.float64
        np.testing.assert_allclose(back, start, rtol=1e-13, atol=1e-12)


def test_batched_boxes_convert_on_the_last_axis():
    batch = np.stack([XYXY, XYXY + 1])
    out = boxes.to_numpy(boxes.convert(batch, "xyxy", "xywh"))
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out[1, 1], [5, 7, 8, 14])


def test_errors_name_the_argument_and_value():
    with pytest.raises(ValueError, match="from_format.*'xyzw'"):
        boxes.convert(XYXY, "xyzw", "xyxy")
    with pytest.raises(ValueError, match="image_shape"):
        boxes.convert(XYXY, "xyxy", "rel_xyxy")


def test_area_and_clip():
    np.testing.assert_array_equal(boxes.to_numpy(boxes.area(XYXY)), [100, 112, 60])
    np.testing.assert_array_equal(boxes.to_numpy(boxes.area(np.array([[5, 5, 2, 9.0]]))), [0])  # inverted: empty
    rel = np.array([[-0.25, 0.5, 1.5, 0.75]], np.float32)
    np.testing.assert_array_equal(boxes.to_numpy(boxes.clip(rel, "rel_xyxy")), [[0, 0.5, 1, 0.75]])
    xywh = np.array([[-2, 60, 10, 10]], np.float32)  # x -2..8, y 60..70 in a 64 x 32 image
    np.testing.assert_array_equal(boxes.to_numpy(boxes.clip(xywh, "xywh", IMAGE)), [[0, 60, 8, 4]])


def test_pairwise_iou_hand_cases():
    a = np.array([[0, 0, 10, 10], [0, 0, 4, 4]], np.float64)
    b = np.array([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 5]], np.float64)
    iou = boxes.to_numpy(boxes.pairwise_iou(a, b))
    expected = [[25 / 175, 1.0, 0.0, 0.5], [0.0, 16 / 100, 0.0, 16 / 50]]
    np.testing.assert_allclose(iou, expected, rtol=0, atol=1e-15)
    assert iou.shape == (2, 4)


def test_crowd_iou_is_intersection_over_the_first_box():
    det = np.array([[0, 0, 10, 10]], np.float64)
    crowd_region = np.array([[5, 0, 100, 100]], np.float64)
    plain = boxes.to_numpy(boxes.pairwise_iou(det, crowd_region))
    crowd = boxes.to_numpy(boxes.pairwise_iou(det, crowd_region, crowd=np.array([True])))
    np.testing.assert_allclose(plain, [[50 / (100 + 9500 - 50)]])
    np.testing.assert_allclose(crowd, [[0.5]])


def test_pairwise_giou_hand_cases():
    a = np.array([[0, 0, 10, 10]], np.float64)
    b = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [5, 0, 15, 10]], np.float64)
    giou = boxes.to_numpy(boxes.pairwise_giou(a, b))
    # identical: 1; disjoint side by side: 0 - (300 - 200) / 300; half overlap: 50/150 - (150-150)/150
    np.testing.assert_allclose(giou, [[1.0, -1 / 3, 1 / 3]], atol=1e-15)


def test_broadcast_anchors_against_a_batch_and_aligned_versions():
    anchors = np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], np.float32)
    batch = np.array([[[0, 0, 0.5, 0.5]], [[0.5, 0.5, 1, 1]]], np.float32)
    iou = boxes.to_numpy(boxes.pairwise_iou(anchors, batch, "rel_xyxy"))
    np.testing.assert_array_equal(iou, [[[1], [0]], [[0], [1]]])
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 5], [20, 0, 30, 10]], np.float32)
    np.testing.assert_allclose(boxes.to_numpy(boxes.aligned_iou(a, b)), [0.5, 0.0])
    np.testing.assert_allclose(boxes.to_numpy(boxes.aligned_giou(a, b)), [0.5, -1 / 3], rtol=1e-6)
