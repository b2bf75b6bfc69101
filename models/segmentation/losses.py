"""Per-pixel losses for segmentation: cross-entropy and focal loss, with an ignore value and class weights.

`y_true` is an integer mask [batch, H, W] (or [batch, H, W, 1]) of class ids; pixels equal to
`ignore_value` (255 in Pascal VOC: object borders, "don't care") contribute nothing. `y_pred` is
logits [batch, H, W, num_classes] (probabilities with from_logits=False).

Normalisation follows the usual convention (PyTorch's CrossEntropyLoss with `weight` and
`ignore_index`): the batch loss is sum(w * l) / sum(w) over all valid pixels of the batch, where w
is the class weight of the pixel's true class (1 without weights). So that Keras's default
reduction (mean over the batch) yields exactly that, `call` returns one value per example: the
example's sum of w * l divided by the batch's mean weight per example. A batch whose every pixel is
ignored has loss 0.
"""
from __future__ import annotations

from typing import Optional, Sequence

import keras
from keras import ops

from models.registry import LOSSES


def _true_class_log_prob(labels, log_probs):
    return ops.squeeze(ops.take_along_axis(log_probs, ops.expand_dims(labels, -1), axis=-1), -1)


@keras.saving.register_keras_serializable(package="convpipe")
class PixelCrossentropy(keras.losses.Loss):
    """-log p(true class) per pixel; holds the masking, weighting and normalisation that the focal
    loss shares (it changes only the per-pixel term)."""

    def __init__(self, ignore_value: Optional[int] = 255, class_weights: Optional[Sequence[float]] = None,
                 from_logits: bool = True, name: str = "pixel_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        if ignore_value is not None and (isinstance(ignore_value, bool) or not isinstance(ignore_value, int)):
            raise ValueError(f"Invalid value for argument `ignore_value`. Expected an int or None. "
                             f"Received ignore_value={ignore_value!r}")
        if class_weights is not None:
            class_weights = [float(w) for w in class_weights]
            if not class_weights or any(w < 0 for w in class_weights):
                raise ValueError(f"Invalid value for argument `class_weights`. Expected one non-negative weight per "
                                 f"class. Received class_weights={class_weights!r}")
        self.ignore_value = ignore_value
        self.class_weights = class_weights
        self.from_logits = bool(from_logits)

    def pixel_losses(self, labels, log_probs):
        """Unweighted loss per pixel [b, H, W] from valid labels [b, H, W] and log-probabilities."""
        return -_true_class_log_prob(labels, log_probs)

    def weighted_pixel_losses(self, y_true, y_pred):
        """(losses, weights), both [b, H, W]: each pixel's loss and its weight (0 for ignored pixels,
        the class weight otherwise); the one place that masks, weights and takes log-probabilities."""
        y_pred = ops.cast(y_pred, "float32")
        num_classes = y_pred.shape[-1]
        labels = ops.cast(y_true, "int32")
        if len(labels.shape) == len(y_pred.shape):
            labels = ops.squeeze(labels, axis=-1)
        valid = ops.ones_like(labels, dtype="bool") if self.ignore_value is None else labels != self.ignore_value
        safe_labels = ops.where(valid, labels, ops.zeros_like(labels))
        if self.from_logits:
            log_probs = ops.log_softmax(y_pred, axis=-1)
        else:
            log_probs = ops.log(ops.clip(y_pred, keras.config.epsilon(), 1.0))
        losses = self.pixel_losses(safe_labels, log_probs)
        weights = ops.cast(valid, "float32")
        if self.class_weights is not None:
            if num_classes is not None and len(self.class_weights) != num_classes:
                raise ValueError(f"class_weights: expected {num_classes} weights, one per class, "
                                 f"got {len(self.class_weights)}")
            weights = weights * ops.take(ops.convert_to_tensor(self.class_weights, "float32"), safe_labels)
        return losses, weights

    def call(self, y_true, y_pred):
        losses, weights = self.weighted_pixel_losses(y_true, y_pred)
        per_example = ops.sum(losses * weights, axis=(1, 2))
        mean_weight = ops.mean(ops.sum(weights, axis=(1, 2)))
        return ops.divide_no_nan(per_example, mean_weight)

    def get_config(self):
        return {**super().get_config(), "ignore_value": self.ignore_value, "class_weights": self.class_weights,
                "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="convpipe")
class PixelFocal(PixelCrossentropy):
    """-(1 - p)^gamma log p per pixel (Lin et al. 2017): easy, confident pixels count less, so large
    uniform regions (background) do not drown out thin objects. gamma=0 is cross-entropy."""

    def __init__(self, gamma: float = 2.0, name: str = "pixel_focal", **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0:
            raise ValueError(f"Invalid value for argument `gamma`. Expected a number >= 0. Received gamma={gamma!r}")
        self.gamma = float(gamma)

    def pixel_losses(self, labels, log_probs):
        log_p = _true_class_log_prob(labels, log_probs)
        return -ops.power(1.0 - ops.exp(log_p), self.gamma) * log_p

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma}


@LOSSES.register("pixel_crossentropy")
def pixel_crossentropy(**params) -> PixelCrossentropy:
    """Per-pixel cross-entropy: `ignore_value` (default 255), optional `class_weights`, `from_logits`."""
    return PixelCrossentropy(**params)


@LOSSES.register("pixel_focal")
def pixel_focal(**params) -> PixelFocal:
    """Per-pixel focal loss: `gamma` (default 2), `ignore_value`, optional `class_weights`, `from_logits`."""
    return PixelFocal(**params)
