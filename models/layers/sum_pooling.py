"""Sum pooling: the sum of each window, where max pooling keeps its largest value and average pooling its mean.

For windows inside the input the sum is average pooling times the window area. At a 'same' border
TensorFlow's average pooling divides by the number of real (unpadded) pixels, so "average × area"
would count padding as if it held the mean; this layer sums with a depthwise convolution by a
window of ones instead, which adds zeros for the padding and is exact in both modes.
Overlapping pooling needs no layer of its own: it is any pooling with stride < pool size.
"""
from __future__ import annotations

import keras
from keras import ops

from models import arithmetic


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"Invalid value for argument `{name}`. Expected a strictly positive int or a pair of "
                         f"strictly positive ints. Received {name}={value!r}")
    return pair


@keras.saving.register_keras_serializable(package="convpipe")
class SumPooling2D(keras.layers.Layer):
    """Sums each `pool_size` window, moving by `strides` (default: `pool_size`); channels last."""

    def __init__(self, pool_size=(2, 2), strides=None, padding: str = "valid", **kwargs):
        super().__init__(**kwargs)
        self.pool_size = _pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else _pair(strides, "strides")
        if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
            raise ValueError(f"Invalid value for argument `padding`. Expected 'valid' or 'same'. "
                             f"Received padding={padding!r}")
        self.padding = padding.lower()
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"SumPooling2D needs a known channel count. Received input_shape={tuple(input_shape)}")
        self.channels = int(channels)
        super().build(input_shape)

    def call(self, inputs):
        window = ops.ones((*self.pool_size, self.channels, 1), dtype=inputs.dtype)
        return ops.depthwise_conv(inputs, window, strides=self.strides, padding=self.padding)

    def compute_output_shape(self, input_shape):
        sizes = tuple(arithmetic.output_size(input_shape[1 + axis], self.pool_size[axis], self.strides[axis],
                                             self.padding, layer=self.name, axis=axis, rank=2)
                      for axis in range(2))
        return (input_shape[0], *sizes, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides,
                "padding": self.padding}
