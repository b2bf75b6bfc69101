"""Confusion-matrix scores over a whole split, by hand and against keras.metrics.MeanIoU."""
import numpy as np
import pytest
import keras

from models.segmentation.metrics import (SegmentationConfusion, confusion_matrix, scores_from_confusion,
                                         segmentation_scores)

TRUE = np.array([[0, 0, 1, 1],
                 [0, 2, 1, 255]])
PRED = np.array([[0, 1, 1, 1],
                 [0, 2, 0, 2]])
# valid pixels: 7. confusion rows true, cols pred:
#   true 0: pred 0,1,0 -> [2, 1, 0]; true 1: pred 1,1,0 -> [1, 2, 0]; true 2: pred 2 -> [0, 0, 1]
CONFUSION = [[2, 1, 0], [1, 2, 0], [0, 0, 1]]
IOU = [2 / (3 + 3 - 2), 2 / (3 + 3 - 2), 1.0]  # class 0: TP 2, row 3, col 3


def test_confusion_matrix_and_scores_by_hand():
    np.testing.assert_array_equal(confusion_matrix(TRUE, PRED, 3), CONFUSION)
    scores = segmentation_scores(TRUE, PRED, 3)
    np.testing.assert_allclose(scores["per_class_iou"], IOU)
    np.testing.assert_allclose(scores["mean_iou"], np.mean(IOU))
    np.testing.assert_allclose(scores["pixel_accuracy"], 5 / 7)


def test_a_class_absent_from_truth_and_prediction_is_nan_and_left_out_of_the_mean():
    scores = scores_from_confusion([[3, 1, 0], [0, 4, 0], [0, 0, 0]])
    assert np.isnan(scores["per_class_iou"][2])
    np.testing.assert_allclose(scores["mean_iou"], (3 / 4 + 4 / 5) / 2)


def test_ids_outside_the_classes_raise_with_the_ids():
    with pytest.raises(ValueError, match=r"0\.\.2 or 255, got \[7\]"):
        confusion_matrix(np.array([0, 7]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match=r"y_pred: expected class ids 0\.\.2, got \[3\]"):
        confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)


def test_streaming_metric_counts_the_whole_split_not_a_mean_of_batches():
    metric = SegmentationConfusion(num_classes=3)
    logits = np.eye(3, dtype=np.float32)[PRED] * 5.0  # one-hot logits whose argmax is PRED
    metric.update_state(TRUE[:1][None], logits[:1][None])  # first row: classes 0 and 1 only
    metric.update_state(TRUE[1:][None], logits[1:][None])
    np.testing.assert_allclose(float(metric.result()), np.mean(IOU), rtol=1e-6)
    scores = metric.scores()
    assert scores["confusion_matrix"] == CONFUSION
    np.testing.assert_allclose(scores["pixel_accuracy"], 5 / 7)
    # the mean of the two per-batch mean IoUs is something else
    first = segmentation_scores(TRUE[:1], PRED[:1], 3)["mean_iou"]
    second = segmentation_scores(TRUE[1:], PRED[1:], 3)["mean_iou"]
    assert abs((first + second) / 2 - float(metric.result())) > 0.05
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_streaming_metric_accepts_class_ids_and_matches_keras_mean_iou():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, size=(3, 8, 8))
    y_true[0, :2] = 255
    logits = rng.normal(size=(3, 8, 8, 4)).astype(np.float32)
    ours = SegmentationConfusion(num_classes=4)
    ours.update_state(y_true[..., None], logits)
    theirs = keras.metrics.MeanIoU(num_classes=4, ignore_class=255, sparse_y_pred=False)
    theirs.update_state(y_true, logits)
    np.testing.assert_allclose(float(ours.result()), float(theirs.result()), rtol=1e-6)
    ids = SegmentationConfusion(num_classes=4)
    ids.update_state(y_true, logits.argmax(-1).astype(np.int32))
    assert ids.scores()["confusion_matrix"] == ours.scores()["confusion_matrix"]
    np.testing.assert_allclose(ours.scores()["mean_iou"], segmentation_scores(y_true, logits.argmax(-1), 4)["mean_iou"])


def test_metric_config_and_use_in_compile():
    metric = SegmentationConfusion(num_classes=2, ignore_value=None, name="miou")
    again = SegmentationConfusion.from_config(metric.get_config())
    assert (again.num_classes, again.ignore_value, again.name) == (2, None, "miou")
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 1)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=[metric])
    x = np.random.default_rng(1).normal(size=(4, 4, 4, 1)).astype(np.float32)
    y = (x[..., 0] > 0).astype(np.int32)
    results = model.evaluate(x, y, verbose=0, return_dict=True)
    expected = segmentation_scores(y, model.predict(x, verbose=0).argmax(-1), 2, ignore_value=None)["mean_iou"]
    np.testing.assert_allclose(results["miou"], expected, rtol=1e-5)
