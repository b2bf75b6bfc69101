"""Per-example head losses of the multitask model, against values computed by hand."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.multitask.losses import (
    MultitaskLoss, classification_example_losses, detection_example_losses, regression_example_losses,
    segmentation_example_losses)
from models.detection.losses import DetectionLoss
from models.segmentation.losses import PixelCrossentropy
from models.multitask.task_weighting import TaskWeighting


def test_classification_cross_entropy_per_example():
    one_hot = tf.constant([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    logits = tf.constant([[0.0, 0.0, 0.0], [5.0, 1.0, 2.0]])
    losses = classification_example_losses(one_hot, logits).numpy()
    assert losses == pytest.approx([math.log(3.0), 0.0])  # a missing label (zeros) costs nothing
    other = classification_example_losses(one_hot, logits, keras.losses.CategoricalCrossentropy(from_logits=True))
    np.testing.assert_allclose(other.numpy(), losses, rtol=1e-6)


def test_segmentation_mean_over_valid_pixels_with_class_weights():
    # one example, three pixels: class 0 with p = 1/2, class 1 with p = 1/(1 + e^2), one ignored
    logits = tf.constant([[[[0.0, 0.0], [2.0, 0.0], [9.0, -9.0]]]])  # [1, 1, 3, 2]
    mask = tf.constant([[[0, 1, 255]]])
    l0, l1 = math.log(2.0), -math.log(1.0 / (1.0 + math.exp(2.0)))
    plain = segmentation_example_losses(mask, logits).numpy()
    assert plain == pytest.approx([(l0 + l1) / 2])
    weighted = segmentation_example_losses(mask, logits, PixelCrossentropy(class_weights=[1.0, 3.0])).numpy()
    assert weighted == pytest.approx([(l0 + 3 * l1) / 4])
    all_ignored = segmentation_example_losses(tf.fill([1, 1, 3], 255), logits).numpy()
    assert all_ignored == [0.0]


def test_regression_mean_squared_error():
    losses = regression_example_losses(tf.constant([[2.0], [0.0]]), tf.constant([[1.5], [3.0]]))
    assert losses.numpy() == pytest.approx([0.25, 9.0])


def test_detection_focal_and_box_terms_by_hand():
    anchors = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]], np.float32)
    boxes = tf.constant([[[0.0, 0.0, 0.5, 0.5], [-1, -1, -1, -1]]])  # exactly anchor 0
    labels = tf.constant([[1, -1]])
    deltas = np.zeros((1, 2, 4), np.float32)
    deltas[0, 0] = [0.5, 0.05, 0.0, 0.0]  # smooth L1, beta 1/9: 0.5 - beta/2 and 0.05^2 / (2 beta)
    logits = np.array([[[-2.0, 3.0], [-1.0, -4.0]]], np.float32)
    output = tf.constant(np.concatenate([deltas, logits], -1))
    loss = detection_example_losses(boxes, labels, output, anchors).numpy()

    def focal(y, x):
        p = 1 / (1 + math.exp(-x))
        p_true = p if y else 1 - p
        return (0.25 if y else 0.75) * (1 - p_true) ** 2 * -math.log(p_true)

    box = (0.5 - 0.5 / 9) + 0.5 * 0.05 ** 2 * 9
    expected = focal(0, -2.0) + focal(1, 3.0) + focal(0, -1.0) + focal(0, -4.0) + box  # one positive anchor
    assert loss == pytest.approx([expected], rel=1e-5)
    weighted = detection_example_losses(boxes, labels, output, anchors, DetectionLoss(box_weight=2.0)).numpy()
    assert weighted == pytest.approx([expected + box], rel=1e-5)


def test_named_losses_come_from_the_registry():
    config = {"heads": ["classification", "segmentation"]}
    weighting = TaskWeighting({"classification": "classification", "segmentation": "classification"})
    loss = MultitaskLoss(config, weighting, losses={"segmentation": "pixel_focal"},
                         loss_params={"segmentation": {"gamma": 0.0}})
    assert type(loss.segmentation_loss).__name__ == "PixelFocal" and loss.segmentation_loss.gamma == 0.0
    logits = tf.constant([[[[0.0, 1.0]]]])
    np.testing.assert_allclose(segmentation_example_losses(tf.constant([[[1]]]), logits, loss.segmentation_loss),
                               segmentation_example_losses(tf.constant([[[1]]]), logits), rtol=1e-6)
    # a baseline without a segmentation head skips the segmentation loss of a shared config
    single = MultitaskLoss({"heads": ["classification"]}, TaskWeighting({"classification": "classification"}),
                           losses={"segmentation": "pixel_focal"})
    assert single.classification_loss is None


@pytest.mark.parametrize("kwargs, message", [
    ({"losses": {"detection": "focal"}}, r"\['detection'\] cannot be chosen by name"),
    ({"loss_params": {"classification": {"gamma": 1}}}, "given without a loss name"),
])
def test_loss_choice_errors_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultitaskLoss({"heads": ["classification"]}, TaskWeighting({"classification": "classification"}), **kwargs)


def test_set_active_switches_heads_off_inside_a_compiled_step():
    heads = {"heads": ["classification", "regression"], "regression": {"target": "count"}}
    weighting = TaskWeighting({"classification": "classification", "regression": "regression"},
                              weights={"classification": 1.0, "regression": 2.0})
    loss = MultitaskLoss(heads, weighting)
    targets = {"class": tf.constant([[1.0, 0.0]]), "labels": tf.constant([[0, 1, -1]])}
    outputs = {"classification": tf.constant([[0.0, 0.0]]), "regression": tf.constant([[3.0]])}
    step = tf.function(lambda: loss(targets, outputs))
    assert float(step()) == pytest.approx(math.log(2.0) + 2.0 * 1.0)  # count 2, predicted 3
    loss.set_active([0.0, 1.0])
    assert float(step()) == pytest.approx(2.0)
    loss.set_active([1.0, 0.0])
    assert float(step()) == pytest.approx(math.log(2.0))
    assert float(loss(targets, outputs, active=tf.constant([1.0, 1.0]))) == pytest.approx(math.log(2.0) + 2.0)
    with pytest.raises(ValueError, match="one value per head"):
        loss.set_active([1.0])


def test_focal_classification_loss_by_name_weights_each_example():
    heads = {"heads": ["classification"]}
    loss = MultitaskLoss(heads, TaskWeighting({"classification": "classification"}),
                         losses={"classification": "focal"}, loss_params={"classification": {"gamma": 2.0, "alpha": 1.0}})
    one_hot = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    logits = tf.constant([[0.0, 0.0], [0.0, math.log(3.0)]])  # p_true 1/2 and 3/4
    values = classification_example_losses(one_hot, logits, loss.classification_loss).numpy()
    assert values == pytest.approx([0.25 * math.log(2.0), 0.0625 * -math.log(0.75)], rel=1e-5)
