"""Max pooling that also returns where each maximum came from, for max unpooling (SegNet).

Returns `(pooled, argmax)`. `argmax` holds, for every pooled value, the flat position of its
maximum inside its own example: `(row * input_width + col) * channels + channel`. The index leaves
out the batch (tf.nn.max_pool_with_argmax with include_batch_in_index=False), so it does not depend
on the batch size or on where an example sits in the batch, and MaxUnpooling2D adds the batch
position itself.

Ties: when several positions of a window hold the maximum, TensorFlow's CPU kernel records the
first in row-major order (smallest row, then smallest column). TensorFlow does not promise the same
order on GPU; the pooled value is the same either way.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from models.layers.arguments import positive_pair

PADDINGS = ("same", "valid")


def pooled_length(length, pool: int, stride: int, padding: str):
    """Output length of a pooling window along one axis (None stays None)."""
    if length is None:
        return None
    if padding == "same":
        return -(-length // stride)
    return max(0, (length - pool) // stride + 1)


@keras.saving.register_keras_serializable(package="convpipe")
class MaxPoolingWithArgmax2D(keras.layers.Layer):
    """[batch, H, W, C] -> (pooled [batch, h, w, C], argmax int64 [batch, h, w, C])."""

    def __init__(self, pool_size=2, strides=None, padding="same", **kwargs):
        super().__init__(**kwargs)
        self.pool_size = positive_pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else positive_pair(strides, "strides")
        if not isinstance(padding, str) or padding.lower() not in PADDINGS:
            raise ValueError(
                f"Invalid value for argument `padding`. Expected one of {PADDINGS}. Received padding={padding!r}")
        self.padding = padding.lower()
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs):
        pooled, argmax = tf.nn.max_pool_with_argmax(
            inputs, ksize=self.pool_size, strides=self.strides, padding=self.padding.upper(),
            include_batch_in_index=False)
        return pooled, argmax

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        shape = (batch,
                 pooled_length(height, self.pool_size[0], self.strides[0], self.padding),
                 pooled_length(width, self.pool_size[1], self.strides[1], self.padding),
                 channels)
        return shape, shape

    def compute_output_spec(self, inputs):
        pooled_shape, argmax_shape = self.compute_output_shape(inputs.shape)
        return (keras.KerasTensor(pooled_shape, dtype=self.compute_dtype),
                keras.KerasTensor(argmax_shape, dtype="int64"))

    def get_config(self):
        return {**super().get_config(), "pool_size": list(self.pool_size), "strides": list(self.strides),
                "padding": self.padding}
