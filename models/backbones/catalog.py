"""The backbones convpipe can build: a name -> the keras.applications model, its input and its taps.

Each entry says which `keras.applications` constructor builds it (always `weights=None`: nothing
is downloaded, the user's own file is loaded after), what input it expects (preprocessing.py) and
how to find its feature maps at strides 8, 16 and 32. A tap is "the last layer, in the model's
order, whose name matches `tap_pattern` and whose map is the input size / stride": the output of
the last block at each resolution, before the next one downsamples. The patterns match only
layers the applications name explicitly; unnamed layers (MobileNetV3's activations, say) take a
per-process counter in their names and could not be found again in another process.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class Entry:
    constructor: str
    """The name in keras.applications, e.g. "ResNet50"."""
    preprocessing: str
    """BackbonePreprocessing mode: what the model expects in place of [0, 1] pixels."""
    tap_pattern: str
    """Regex (full match) of the layers that may serve as the stride-8/16/32 taps."""
    kwargs: dict = field(default_factory=dict)

    def matches(self, layer_name: str) -> bool:
        return re.fullmatch(self.tap_pattern, layer_name) is not None


_RESNET = r"conv\d_block\d+_out"
_RESNET_V2 = r"conv\d_block\d+_out|post_relu"
_EFFICIENTNET = r"block\d[a-z]_add|top_activation"

CATALOG: dict[str, Entry] = {
    "resnet50": Entry("ResNet50", "caffe", _RESNET),
    "resnet101": Entry("ResNet101", "caffe", _RESNET),
    "resnet152": Entry("ResNet152", "caffe", _RESNET),
    "resnet50_v2": Entry("ResNet50V2", "tf", _RESNET_V2),
    "resnet101_v2": Entry("ResNet101V2", "tf", _RESNET_V2),
    "mobilenet_v2": Entry("MobileNetV2", "tf", r"block_\d+_add|out_relu"),
    "mobilenet_v3_small": Entry("MobileNetV3Small", "builtin", r"expanded_conv(_\d+)?_add",
                                {"include_preprocessing": True}),
    "mobilenet_v3_large": Entry("MobileNetV3Large", "builtin", r"expanded_conv(_\d+)?_add",
                                {"include_preprocessing": True}),
    "efficientnet_b0": Entry("EfficientNetB0", "builtin", _EFFICIENTNET),
    "efficientnet_b1": Entry("EfficientNetB1", "builtin", _EFFICIENTNET),
    "efficientnet_b2": Entry("EfficientNetB2", "builtin", _EFFICIENTNET),
    "efficientnet_b3": Entry("EfficientNetB3", "builtin", _EFFICIENTNET),
    "efficientnet_v2_b0": Entry("EfficientNetV2B0", "builtin", _EFFICIENTNET, {"include_preprocessing": True}),
    "efficientnet_v2_b1": Entry("EfficientNetV2B1", "builtin", _EFFICIENTNET, {"include_preprocessing": True}),
    "densenet121": Entry("DenseNet121", "torch", r"pool\d_conv|relu"),
}


def entry(name: str, where: str) -> Entry:
    if name not in CATALOG:
        raise ValueError(f"{where}: invalid backbone.name={name!r}. Expected one of {', '.join(sorted(CATALOG))}.")
    return CATALOG[name]
