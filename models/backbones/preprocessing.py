"""Pixels in [0, 1] (what every convpipe model receives) -> what a keras.applications backbone expects.

The applications disagree on their input, and only some of them carry the conversion inside:

- `builtin`: the model starts with its own Rescaling (and Normalization) layers and wants pixels
  in [0, 255]: EfficientNet, EfficientNetV2, MobileNetV3 (include_preprocessing=True). We scale by 255.
- `caffe`: ResNet (v1) wants BGR in [0, 255] with the ImageNet channel means subtracted
  (`keras.applications.resnet.preprocess_input`), and carries nothing of it.
- `tf`: ResNetV2 and MobileNetV2 want [-1, 1] (`preprocess_input` mode "tf"), carried by neither.
- `torch`: DenseNet wants [0, 1] minus the ImageNet mean, over the ImageNet std per channel.

Feeding [0, 1] pixels straight into a caffe or builtin model is the silent mistake this layer
exists to prevent: pretrained weights then see an image a few grey levels from black. A small
registered layer rather than a `Lambda`, so the model clones and loads with safe_mode (DESIGN.md).
"""
from __future__ import annotations

import keras
from keras import ops

MODES = ("builtin", "caffe", "tf", "torch")

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.imagenet_utils, mode "caffe"


@keras.saving.register_keras_serializable(package="convpipe")
class BackbonePreprocessing(keras.layers.Layer):
    """[b, h, w, 3] float in [0, 1] -> the input of a backbone of preprocessing `mode` (see MODES)."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"Invalid value for argument `mode`. Expected one of {', '.join(MODES)}. "
                             f"Received mode={mode!r}")
        self.mode = mode

    def call(self, images):
        x = ops.cast(images, self.compute_dtype)
        if self.mode == "builtin":
            return x * 255.0
        if self.mode == "tf":
            return x * 2.0 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(IMAGENET_MEAN_RGB, self.compute_dtype)
            std = ops.convert_to_tensor(IMAGENET_STD_RGB, self.compute_dtype)
            return (x - mean) / std
        bgr = ops.flip(x, axis=-1) * 255.0
        return bgr - ops.convert_to_tensor(CAFFE_MEAN_BGR, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}
