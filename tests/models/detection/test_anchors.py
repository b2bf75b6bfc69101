"""Anchor positions and counts, encode/decode, matching thresholds and balanced sampling."""
import math

import numpy as np
import pytest

from models.detection import anchors

from models.detection import boxes


def test_counts_order_and_positions():
    grid = anchors.generate_anchors((32, 64), [(4, 8), (2, 4)], sizes=[8, 16], scales=[1.0, 2.0], aspect_ratios=[0.5, 1.0, 2.0])
    per_location = anchors.anchors_per_location([1.0, 2.0], [0.5, 1.0, 2.0])
    assert per_location == 6
    assert grid.shape == ((4 * 8 + 2 * 4) * 6, 4)
    pixels = boxes.to_numpy(boxes.convert(grid, "rel_xyxy", "xyxy", (32, 64)))
    # First location of level 0 (stride 8): centre (4, 4); ratio 0.5 (w/h), scale 1: w = 8 sqrt(.5), h = 8 / sqrt(.5)
    w, h = 8 * math.sqrt(0.5), 8 / math.sqrt(0.5)
    np.testing.assert_allclose(pixels[0], [4 - w / 2, 4 - h / 2, 4 + w / 2, 4 + h / 2], rtol=1e-6)
    np.testing.assert_allclose(pixels[1], [4 - w, 4 - h, 4 + w, 4 + h], rtol=1e-6)  # scale 2
    np.testing.assert_allclose(pixels[2], [0, 0, 8, 8], atol=1e-5)  # ratio 1, scale 1
    # The next location is one column to the right (x + 8); row 1 starts 8 columns later.
    np.testing.assert_allclose(pixels[6 + 2], [8, 0, 16, 8], atol=1e-5)
    np.testing.assert_allclose(pixels[8 * 6 + 2], [0, 8, 8, 16], atol=1e-5)
    # Level 1 (stride 16) starts after 32 locations of level 0: centre (8, 8), size 16.
    np.testing.assert_allclose(pixels[32 * 6 + 2], [0, 0, 16, 16], atol=1e-5)
    centres = (pixels[:, :2] + pixels[:, 2:]) / 2
    np.testing.assert_allclose(centres[-1], [56, 24], atol=1e-5)  # last cell of level 1


def test_generation_validates_arguments():
    with pytest.raises(ValueError, match="one size per level"):
        anchors.generate_anchors((32, 32), [(4, 4), (2, 2)], sizes=[8])
    with pytest.raises(ValueError, match="scales"):
        anchors.generate_anchors((32, 32), [(4, 4)], sizes=[8], scales=[0])


def test_encode_hand_case_and_decode_inverts_it():
    anchor = np.array([[0.0, 0.0, 0.5, 0.5]], np.float32)
    box = np.array([[0.125, 0.0, 0.625, 1.0]], np.float32)  # centre moved 0.125 in x, 0.25 in y; h doubled
    deltas = boxes.to_numpy(anchors.encode(box, anchor))
    np.testing.assert_allclose(deltas, [[0.25, 0.5, 0.0, math.log(2.0)]], rtol=1e-6, atol=1e-7)
    scaled = boxes.to_numpy(anchors.encode(box, anchor, variances=[0.1, 0.1, 0.2, 0.2]))
    np.testing.assert_allclose(scaled, [[2.5, 5.0, 0.0, math.log(2.0) / 0.2]], rtol=1e-6, atol=1e-6)
    grid = anchors.generate_anchors((32, 32), [(4, 4)], [8], [1.0, 1.5], [0.5, 2.0])
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 0.6, (len(grid), 2))
    targets = np.concatenate([xy, xy + rng.uniform(0.05, 0.4, (len(grid), 2))], -1).astype(np.float32)
    for variances in (None, [0.1, 0.1, 0.2, 0.2]):
        back = boxes.to_numpy(anchors.decode(anchors.encode(targets, grid, variances), grid, variances))
        np.testing.assert_allclose(back, targets, atol=2e-6)


def test_decode_clamps_size_deltas():
    anchor = np.array([[0.25, 0.25, 0.75, 0.75]], np.float32)
    out = boxes.to_numpy(anchors.decode(np.array([[0, 0, 100.0, 100.0]], np.float32), anchor))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0, 2] - out[0, 0], 0.5 * 1000 / 16, rtol=1e-5)


def test_match_thresholds_and_padding():
    # Four anchors in a row, one box: IoU 1.0, 0.6, 3/7 (between), 0 (background)
    anchor_boxes = np.array([[0, 0, 1, 1], [0, 0, 0.6, 1], [0.4, 0, 1.4, 1], [2, 2, 3, 3]], np.float32) * 0.25
    gt = np.array([[[0, 0, 0.25, 0.25], [-1, -1, -1, -1]]], np.float32)
    valid = np.array([[True, False]])
    index, state, max_iou = (boxes.to_numpy(t) for t in anchors.match(anchor_boxes, gt, valid, 0.5, 0.4))
    np.testing.assert_allclose(max_iou, [[1.0, 0.6, 0.6 / 1.4, 0.0]], rtol=1e-6)
    np.testing.assert_array_equal(state, [[1, 1, -1, 0]])
    np.testing.assert_array_equal(index[0, :2], [0, 0])
    # Raise the positive threshold above every IoU but the best: forcing keeps the best anchor.
    _, state, _ = anchors.match(anchor_boxes, gt, valid, 0.99, 0.4, force_best=False)
    np.testing.assert_array_equal(boxes.to_numpy(state), [[1, -1, -1, 0]])
    small_gt = np.array([[[0, 0, 0.05, 0.05]]], np.float32)  # IoU < 0.4 with every anchor
    _, state, _ = anchors.match(anchor_boxes, small_gt, np.array([[True]]), 0.5, 0.4, force_best=True)
    # IoU 0.0025 / 0.0625 = 0.04 with anchor 0, 0.0025 / 0.0375 = 0.067 with anchor 1: only the best is forced.
    np.testing.assert_array_equal(boxes.to_numpy(state), [[0, 1, 0, 0]])
    with pytest.raises(ValueError, match="negative_threshold"):
        anchors.match(anchor_boxes, gt, valid, 0.3, 0.4)


def test_anchor_targets_one_hot_and_deltas():
    grid = anchors.generate_anchors((16, 16), [(2, 2)], [8])  # four 8x8 anchors
    gt = np.array([[[0.5, 0.5, 1.0, 1.0], [0, 0, 0, 0]]], np.float32)
    labels = np.array([[2, -1]])
    targets = {k: boxes.to_numpy(v) for k, v in anchors.anchor_targets(grid, gt, labels, num_classes=3).items()}
    np.testing.assert_array_equal(targets["state"], [[0, 0, 0, 1]])
    np.testing.assert_array_equal(targets["class_targets"][0], [[0, 0, 0]] * 3 + [[0, 0, 1]])
    np.testing.assert_allclose(targets["box_targets"][0, 3], [0, 0, 0, 0], atol=1e-6)


def test_sample_balanced_respects_caps():
    positive = np.zeros((2, 50), bool)
    positive[0, :20] = True
    positive[1, :3] = True
    negative = ~positive
    negative[1, 3:10] = False  # row 1: only 40 negatives
    mask = boxes.to_numpy(anchors.sample_balanced(positive, negative, 16, 0.25, seed=3))
    assert mask.sum(1).tolist() == [16, 16]
    assert (mask & positive).sum(1).tolist() == [4, 3]  # capped at 16 * 0.25; row 1 has only 3
    assert not (mask[1] & ~positive[1] & ~negative[1]).any()
    few = boxes.to_numpy(anchors.sample_balanced(np.array([[True, False, False]]), np.array([[False, True, False]]), 8, 0.5, seed=0))
    np.testing.assert_array_equal(few, [[True, True, False]])
