"""Per-pixel cross-entropy and focal loss against values computed by hand."""
import numpy as np
import pytest
import keras

from models import get_loss
from models.segmentation.losses import PixelCrossentropy, PixelFocal


def _log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _case():
    """Two 2x2 examples, three classes; pixel (0, 1, 1) is ignored (255)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 2, 2, 3)).astype(np.float32)
    mask = np.array([[[0, 1], [2, 0]], [[1, 1], [0, 255]]], np.int32)
    return mask, logits


def test_crossentropy_ignores_the_ignore_value_and_averages_over_valid_pixels():
    mask, logits = _case()
    log_p = _log_softmax(logits.astype(np.float64))
    valid = mask != 255
    picked = np.take_along_axis(log_p, np.where(valid, mask, 0)[..., None], -1)[..., 0]
    expected = -(picked * valid).sum() / valid.sum()  # 7 valid pixels
    loss = get_loss("pixel_crossentropy")(mask, logits)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    # the ignored pixel's logits do not matter at all
    changed = logits.copy()
    changed[1, 1, 1] = [50.0, -50.0, 9.0]
    np.testing.assert_allclose(float(get_loss("pixel_crossentropy")(mask, changed)), expected, rtol=1e-5)


def test_crossentropy_of_a_uniform_prediction_is_log_k():
    mask = np.array([[[0, 1, 2, 3]]], np.int32)
    logits = np.zeros((1, 1, 4, 4), np.float32)
    np.testing.assert_allclose(float(PixelCrossentropy()(mask, logits)), np.log(4.0), rtol=1e-6)


def test_class_weights_give_a_weighted_mean_over_valid_pixels():
    mask, logits = _case()
    weights = np.array([0.5, 2.0, 1.0])
    log_p = _log_softmax(logits.astype(np.float64))
    valid = mask != 255
    labels = np.where(valid, mask, 0)
    picked = np.take_along_axis(log_p, labels[..., None], -1)[..., 0]
    w = weights[labels] * valid
    expected = -(picked * w).sum() / w.sum()
    loss = get_loss("pixel_crossentropy", class_weights=weights.tolist())(mask, logits)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_matches_keras_sparse_crossentropy_when_nothing_is_ignored():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    mask = rng.integers(0, 6, size=(3, 4, 5))
    ours = PixelCrossentropy(ignore_value=None)(mask, logits)
    theirs = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(mask, logits)
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)
    # masks with a trailing channel axis are accepted
    np.testing.assert_allclose(float(PixelCrossentropy(ignore_value=None)(mask[..., None], logits)), float(theirs), rtol=1e-5)


def test_probabilities_input_with_from_logits_false():
    probs = np.array([[[[0.25, 0.75], [0.9, 0.1]]]], np.float32)  # 1x1x2 pixels, 2 classes
    mask = np.array([[[1, 0]]])
    expected = -(np.log(0.75) + np.log(0.9)) / 2
    np.testing.assert_allclose(float(PixelCrossentropy(from_logits=False)(mask, probs)), expected, rtol=1e-5)


def test_focal_loss_by_hand_and_gamma_zero_is_crossentropy():
    probs = np.array([[[[0.25, 0.75], [0.9, 0.1], [0.5, 0.5]]]], np.float32)
    mask = np.array([[[1, 0, 255]]])
    gamma = 2.0
    expected = -((0.25 ** gamma) * np.log(0.75) + (0.1 ** gamma) * np.log(0.9)) / 2
    loss = get_loss("pixel_focal", gamma=gamma, from_logits=False)(mask, probs)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    mask2, logits = _case()
    np.testing.assert_allclose(float(PixelFocal(gamma=0.0)(mask2, logits)), float(PixelCrossentropy()(mask2, logits)),
                               rtol=1e-6)


def test_every_pixel_ignored_gives_zero_not_nan():
    logits = np.zeros((1, 2, 2, 3), np.float32)
    mask = np.full((1, 2, 2), 255)
    assert float(PixelCrossentropy()(mask, logits)) == 0.0


def test_batch_mean_of_per_example_values_is_the_pixel_mean():
    mask, logits = _case()
    per_example = PixelCrossentropy(reduction="none")(mask, logits).numpy()
    assert per_example.shape == (2,)
    np.testing.assert_allclose(per_example.mean(), float(PixelCrossentropy()(mask, logits)), rtol=1e-6)


def test_config_round_trip_and_bad_arguments():
    loss = PixelFocal(gamma=1.5, ignore_value=0, class_weights=[1, 2])
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, PixelFocal)
    assert (again.gamma, again.ignore_value, again.class_weights) == (1.5, 0, [1.0, 2.0])
    with pytest.raises(ValueError, match="class_weights"):
        PixelCrossentropy(class_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="gamma"):
        PixelFocal(gamma=-1)
    with pytest.raises(ValueError, match="3 weights"):
        PixelCrossentropy(class_weights=[1.0, 1.0])(np.zeros((1, 1, 1)), np.zeros((1, 1, 1, 3), np.float32))
