"""Nearest-neighbour upsampling: every value copied into its k x k block.

The simplest un-pooling: no weights, no interpolation, so a decoder built on it must learn to
sharpen the blocky map with the convolutions that follow. Same result as
`keras.layers.UpSampling2D(interpolation="nearest")` for integer factors, written as a repeat so
the behaviour is exact and obvious.
"""
from __future__ import annotations

import keras
from keras import ops

from models.layers.arguments import positive_pair


@keras.saving.register_keras_serializable(package="convpipe")
class NearestUpsampling2D(keras.layers.Layer):
    """[batch, H, W, C] -> [batch, H * size[0], W * size[1], C]; out[i, j] = in[i // k0, j // k1]."""

    def __init__(self, size=2, **kwargs):
        super().__init__(**kwargs)
        self.size = positive_pair(size, "size")
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs):
        rows, cols = self.size
        return ops.repeat(ops.repeat(inputs, rows, axis=1), cols, axis=2)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (batch,
                None if height is None else height * self.size[0],
                None if width is None else width * self.size[1],
                channels)

    def get_config(self):
        return {**super().get_config(), "size": list(self.size)}
