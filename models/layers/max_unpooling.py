"""Max unpooling: each value written back where its pooling window found the maximum, zeros elsewhere.

The decoder half of SegNet: instead of guessing where detail was (nearest, bed of nails), it puts
each value at the exact position the encoder's MaxPoolingWithArgmax2D recorded, so boundaries come
back sharp. Inputs are `[values, argmax]` with a fixed `output_size=(H, W)`, or
`[values, argmax, like]` where `like` is the tensor the pooling layer received: its (dynamic) height
and width give the output size, which is the only way to undo 'same' pooling of odd sizes exactly.

`argmax` is per example (no batch in the index), as MaxPoolingWithArgmax2D returns it, so any batch
size works. Where overlapping windows (strides < pool size) picked the same position, the values
are summed: this layer is the transpose of max pooling's gather, as its gradient is.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from models.layers.arguments import positive_pair


@keras.saving.register_keras_serializable(package="convpipe")
class MaxUnpooling2D(keras.layers.Layer):
    """[values [b, h, w, C], argmax [b, h, w, C](, like [b, H, W, ...])] -> [b, H, W, C]."""

    def __init__(self, output_size=None, **kwargs):
        super().__init__(**kwargs)
        self.output_size = None if output_size is None else positive_pair(output_size, "output_size")

    def build(self, input_shape):
        shapes = [tuple(s) for s in input_shape] if isinstance(input_shape, (list, tuple)) and input_shape \
            and isinstance(input_shape[0], (list, tuple)) else None
        if shapes is None or len(shapes) not in (2, 3):
            raise ValueError(
                "MaxUnpooling2D expects [values, argmax] or [values, argmax, like]. "
                f"Received input_shape={input_shape}")
        if len(shapes) == 2 and self.output_size is None:
            raise ValueError(
                "MaxUnpooling2D needs the output size: pass output_size=(height, width), or call it on "
                "[values, argmax, like] with `like` the tensor the pooling layer received.")
        values, argmax = shapes[0], shapes[1]
        if len(values) != 4 or len(argmax) != 4 or any(
                a is not None and b is not None and a != b for a, b in zip(values[1:], argmax[1:])):
            raise ValueError(
                "MaxUnpooling2D expects values and argmax of the same shape [batch, h, w, C]. "
                f"Received values {values} and argmax {argmax}")
        super().build(input_shape)

    def _target_size(self, inputs):
        if len(inputs) == 3:
            like_shape = tf.shape(inputs[2])
            return like_shape[1], like_shape[2]
        return self.output_size

    def call(self, inputs):
        values, argmax = inputs[0], inputs[1]
        height, width = self._target_size(inputs)
        shape = tf.shape(values)
        batch, channels = shape[0], shape[3]
        flat_values = tf.reshape(values, [batch, -1])
        flat_argmax = tf.reshape(tf.cast(argmax, tf.int64), [batch, -1])
        rows = tf.broadcast_to(tf.range(tf.cast(batch, tf.int64), dtype=tf.int64)[:, None], tf.shape(flat_argmax))
        positions = tf.stack([rows, flat_argmax], axis=-1)
        flat_size = tf.cast(height, tf.int64) * tf.cast(width, tf.int64) * tf.cast(channels, tf.int64)
        out = tf.scatter_nd(positions, flat_values, tf.stack([tf.cast(batch, tf.int64), flat_size]))
        return tf.reshape(out, [batch, height, width, channels])

    def compute_output_shape(self, input_shape):
        values = tuple(input_shape[0])
        if len(input_shape) == 3:
            height, width = tuple(input_shape[2])[1:3]
        else:
            height, width = self.output_size
        return (values[0], height, width, values[3])

    def get_config(self):
        output_size = None if self.output_size is None else list(self.output_size)
        return {**super().get_config(), "output_size": output_size}
