"""One frame out of a clip, as a layer: [batch, T, H, W, C] -> [batch, H, W, C].

Video models that look at single frames (the single-frame baseline, late fusion) pick their
frames with this layer rather than a Lambda, so the model clones and loads with safe_mode=True.
"""
from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="convpipe")
class SelectFrame(keras.layers.Layer):
    """Frame `index` of the time axis (axis 1); a negative index counts from the end, as in Python."""

    def __init__(self, index: int, **kwargs):
        super().__init__(**kwargs)
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"Invalid value for argument `index`. Expected an integer. Received index={index!r}")
        self.index = index

    def build(self, input_shape):
        if len(input_shape) != 5:
            raise ValueError(
                f"SelectFrame expects clips [batch, T, H, W, C]. Received input_shape={tuple(input_shape)}")
        frames = input_shape[1]
        if frames is not None and not -frames <= self.index < frames:
            raise ValueError(
                f"Invalid value for argument `index`. Expected -{frames} <= index < {frames} for clips of "
                f"{frames} frames. Received index={self.index}")
        super().build(input_shape)

    def call(self, inputs):
        return inputs[:, self.index]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *input_shape[2:])

    def get_config(self):
        return {**super().get_config(), "index": self.index}
