"""Bed-of-nails upsampling: each value at one fixed position of its k x k block, zeros elsewhere.

Max unpooling without the memory of where the maximum was: the value always lands on the same
"nail" (by default the top-left corner). Cheap and weight-free; the sparse map it leaves is filled
in by the convolutions after it.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from models.layers.arguments import positive_pair


@keras.saving.register_keras_serializable(package="convpipe")
class BedOfNails2D(keras.layers.Layer):
    """[batch, H, W, C] -> [batch, H * k0, W * k1, C]; out[i * k0 + p0, j * k1 + p1] = in[i, j], 0 elsewhere."""

    def __init__(self, size=2, position=(0, 0), **kwargs):
        super().__init__(**kwargs)
        self.size = positive_pair(size, "size")
        try:
            position = tuple(position)
        except TypeError:
            position = None
        if (position is None or len(position) != 2
                or not all(isinstance(p, int) and not isinstance(p, bool) for p in position)
                or not all(0 <= p < k for p, k in zip(position, self.size))):
            raise ValueError(
                f"Invalid value for argument `position`. Expected (row, col) inside the {self.size[0]}x{self.size[1]} "
                f"block, 0 <= row < {self.size[0]} and 0 <= col < {self.size[1]}. Received position={position!r}")
        self.position = position
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs):
        rows, cols = self.size
        nail = np.zeros((1, 1, rows, 1, cols, 1), dtype="float32")
        nail[0, 0, self.position[0], 0, self.position[1], 0] = 1.0
        nail = ops.cast(nail, inputs.dtype)
        # [B, H, 1, W, 1, C] * [1, 1, k0, 1, k1, 1] -> [B, H, k0, W, k1, C] -> [B, H*k0, W*k1, C]
        spread = inputs[:, :, None, :, None, :] * nail
        shape = ops.shape(inputs)
        return ops.reshape(spread, (shape[0], shape[1] * rows, shape[2] * cols, shape[3]))

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (batch,
                None if height is None else height * self.size[0],
                None if width is None else width * self.size[1],
                channels)

    def get_config(self):
        return {**super().get_config(), "size": list(self.size), "position": list(self.position)}
