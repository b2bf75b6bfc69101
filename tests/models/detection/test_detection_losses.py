"""Detection losses against hand-computed values."""
import math

import numpy as np
import pytest

from models import get_loss

from models.detection import anchors

from models.detection import boxes
from models.detection import losses as dl

LOG2 = math.log(2.0)


def _np(x):
    return boxes.to_numpy(x)


def test_sigmoid_focal_hand_values():
    logits = np.array([0.0, 0.0, 2.0], np.float32)
    targets = np.array([1.0, 0.0, 1.0], np.float32)
    out = _np(dl.sigmoid_focal(targets, logits, alpha=0.25, gamma=2.0))
    p = 1 / (1 + math.exp(-2.0))
    expected = [0.25 * 0.25 * LOG2, 0.75 * 0.25 * LOG2, 0.25 * (1 - p) ** 2 * -math.log(p)]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # gamma 0 and no alpha: plain binary cross-entropy
    plain = _np(dl.sigmoid_focal(targets, logits, alpha=None, gamma=0.0))
    np.testing.assert_allclose(plain, [LOG2, LOG2, -math.log(p)], rtol=1e-6)


def test_automated_gamma_is_minus_log_of_mean_true_probability():
    logits = np.array([[0.0, -5.0], [math.log(3.0), 0.0], [9.0, 9.0]], np.float32)  # p(true) = 0.5, 0.75
    targets = np.array([[1, 0], [1, 0], [0, 0]], np.float32)
    positive = np.array([True, True, False])
    np.testing.assert_allclose(_np(dl.automated_gamma(targets, logits, positive)), -math.log(0.625), rtol=1e-6)
    assert float(_np(dl.automated_gamma(targets, logits, np.zeros(3, bool), fallback=1.5))) == 1.5


def test_smooth_l1_and_giou_hand_values():
    np.testing.assert_allclose(_np(dl.smooth_l1(np.zeros(3), np.array([0.5, -2.0, 0.0]), beta=1.0)), [0.125, 1.5, 0.0])
    np.testing.assert_allclose(_np(dl.smooth_l1(np.zeros(2), np.array([0.5, -2.0]), beta=0.0)), [0.5, 2.0])
    true = np.array([[0, 0, 0.5, 0.5], [0, 0, 0.25, 0.25]], np.float32)
    pred = np.array([[0, 0, 0.5, 0.5], [0.5, 0, 0.75, 0.25]], np.float32)  # identical; disjoint, hull 3x
    np.testing.assert_allclose(_np(dl.giou_loss(true, pred)), [0.0, 1.0 + 1.0 / 3.0], rtol=1e-6)


def test_registered_single_term_losses():
    focal = get_loss("sigmoid_focal", alpha=0.25, gamma=2.0)
    value = float(focal(np.array([[1.0, 0.0]]), np.array([[0.0, 0.0]])))
    np.testing.assert_allclose(value, 0.25 * 0.25 * LOG2 + 0.75 * 0.25 * LOG2, rtol=1e-6)
    np.testing.assert_allclose(float(get_loss("smooth_l1", beta=1.0)(np.zeros((1, 2)), np.array([[0.5, 2.0]]))), 1.625)
    giou = get_loss("giou")
    np.testing.assert_allclose(float(giou(np.array([[0, 0, 0.25, 0.25]]), np.array([[0.5, 0, 0.75, 0.25]]))), 4 / 3, rtol=1e-6)
    with pytest.raises(ValueError, match="gamma"):
        get_loss("sigmoid_focal", gamma=-1)


def _four_anchor_case(deltas_value=0.0):
    grid = anchors.generate_anchors((16, 16), [(2, 2)], [8])  # four 8x8 anchors, one per quadrant
    outputs = {
        "class_logits": np.zeros((1, 4, 2), np.float32),
        "box_deltas": np.full((1, 4, 4), deltas_value, np.float32),
        "anchors": grid[None],
    }
    y_true = {"boxes": np.array([[[0.5, 0.5, 1.0, 1.0], [-1, -1, -1, -1]]], np.float32), "labels": np.array([[1, -1]])}
    return y_true, outputs


def test_detection_loss_by_hand():
    y_true, outputs = _four_anchor_case(deltas_value=0.5)
    parts = {k: float(v) for k, v in get_loss("detection", beta=1.0 / 9.0).components(y_true, outputs).items()}
    # Anchor 3 is the box: targets [0, 1]; anchors 0-2 background. Logits 0 -> p = 0.5 everywhere.
    expected_class = 0.25 * LOG2 * (0.75 * 7 + 0.25 * 1)  # 7 background terms, 1 foreground, / 1 positive
    assert parts["num_positives"] == 1.0
    np.testing.assert_allclose(parts["classification"], expected_class, rtol=1e-6)
    np.testing.assert_allclose(parts["box"], 4 * (0.5 - 0.5 / 9), rtol=1e-6)  # |0.5 - 0| - beta / 2, four deltas
    np.testing.assert_allclose(parts["loss"], parts["classification"] + parts["box"], rtol=1e-6)


def test_detection_loss_variants():
    y_true, outputs = _four_anchor_case()
    giou = {k: float(v) for k, v in dl.DetectionLoss(box="giou").components(y_true, outputs).items()}
    assert abs(giou["box"]) < 1e-6  # zero deltas decode onto the anchor, which is the box
    auto = {k: float(v) for k, v in dl.DetectionLoss(classification="automated_focal").components(y_true, outputs).items()}
    np.testing.assert_allclose(auto["gamma"], LOG2, rtol=1e-6)  # p(true) = 0.5 on the one positive
    np.testing.assert_allclose(auto["classification"], 0.5 ** LOG2 * 0.25 * LOG2 * 5.5 / 0.25, rtol=1e-5)
    # An anchor half-covering the box (IoU 1/3: between 0.3 and 0.5) is ignored.
    y_true["boxes"] = np.array([[[0.25, 0.5, 0.75, 1.0], [-1, -1, -1, -1]]], np.float32)
    ignored = dl.DetectionLoss(positive_iou=0.5, negative_iou=0.3, force_best=False).components(y_true, outputs)
    assert float(ignored["num_positives"]) == 0.0
    np.testing.assert_allclose(float(ignored["classification"]), 0.25 * LOG2 * 0.75 * 2 * 2, rtol=1e-6)


def test_detection_loss_rejects_unknown_terms():
    with pytest.raises(ValueError, match="box"):
        dl.DetectionLoss(box="l2")
    with pytest.raises(ValueError, match="classification"):
        dl.DetectionLoss(classification="softmax")


def test_the_detector_loss_defers_to_the_model():
    marker = get_loss("detector")
    assert marker.model_defined
    with pytest.raises(TypeError, match="model.compute_loss"):
        marker({}, {})
    with pytest.raises(ValueError, match="takes no loss_params"):
        get_loss("detector", gamma=2.0)
