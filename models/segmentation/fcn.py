"""Fully convolutional segmentation: the `fcn` builder, and turning a trained classifier into an FCN.

    build_model("fcn", (32, 32, 3), 4, blocks=[{"filters": 16, "convs": 2}, {"filters": 32}], upsampling="max_unpool",
                skip="concat")

The builder: an encoder of conv/pool blocks, a decoder that undoes each pool with the configured
upsampling method followed by convolutions, and a 1x1-conv classifier instead of dense layers, so
the output is logits [H, W, num_classes] at the input resolution (float32, as every model here).

- `nearest` / `bed_of_nails`: weight-free upsampling (NearestUpsampling2D, BedOfNails2D),
- `max_unpool`: SegNet; the encoder pools with MaxPoolingWithArgmax2D and the decoder puts each
  value back where the encoder found its maximum (MaxUnpooling2D),
- `transposed`: a learned Conv2DTranspose with kernel and stride equal to the pool size,
- `bilinear`: UpSampling2D with bilinear interpolation.

Skip connections bring each encoder resolution's features (before pooling) to the decoder stage of
the same resolution: `add` projects them with a 1x1 conv and adds them (FCN-8s), `concat`
concatenates them (U-Net). Each decoder stage ends with the channel count of the next shallower
pool's output, so the next max unpooling gets values shaped like its argmax.

With `backbone={"name": ..., "weights": ..., "trainable": ...}` (models/backbones/) the encoder is
a keras.applications network instead of the blocks, and the skips come from its maps at strides
8, 16 and 32: the stride-32 map is upsampled twice, taking the stride-16 and stride-8 skips on
the way (FCN-8s), classified at stride 8 by a 1x1 conv, and upsampled 8x to the input size.
`max_unpool` needs the encoder's own pooling indices, so it is refused with a backbone.

`to_fully_convolutional(classifier)` rewrites a classifier with a dense head (the `cnn` builder's
output, or any functional Keras model of the same kinds of layers) as an all-convolutional model:
Dense -> Conv2D with the same weights reshaped (1x1, or the feature-map size after a Flatten), and
global pooling -> a pooling window of the training feature-map size sliding with stride 1. On the
training size it gives the classifier's logits; on a larger image, one set of class logits per
window position, spaced by the encoder's total stride in input pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from models import backbones
from models.layers.bed_of_nails import BedOfNails2D
from models.layers.fused_batch_normalization import FusedBatchNormalization
from models.layers.max_pooling_with_argmax import MaxPoolingWithArgmax2D
from models.layers.max_unpooling import MaxUnpooling2D
from models.layers.nearest_upsampling import NearestUpsampling2D
from models.registry import MODELS

UPSAMPLING = ("nearest", "bed_of_nails", "max_unpool", "transposed", "bilinear")
SKIPS = ("none", "add", "concat")
DEFAULT_BLOCKS = ({"filters": 16, "convs": 2}, {"filters": 32, "convs": 2}, {"filters": 64, "convs": 2})


# ------------------------------------------------------------------------------------------------
# parameters
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderBlock:
    """`convs` convolutions (kernel_size, 'same', ReLU, optional batch norm), then a max pool of pool_size
    (1: no pooling at this block)."""
    filters: int
    kernel_size: tuple[int, int] = (3, 3)
    convs: int = 1
    pool_size: tuple[int, int] = (2, 2)


BLOCK_KEYS = tuple(EncoderBlock.__dataclass_fields__)


def _fail(key: str, value: Any, expected: str):
    raise ValueError(f"fcn: invalid {key}={value!r}. Expected {expected}.")


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        _fail(key, value, "a strictly positive int")
    return value


def _pair(key: str, value: Any) -> tuple[int, int]:
    values = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(values, (list, tuple)) or len(values) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values)):
        _fail(key, value, "a strictly positive int or a pair [height, width] of them")
    return int(values[0]), int(values[1])


def parse_block(index: int, raw: Any) -> EncoderBlock:
    where = f"blocks[{index}]"
    if not isinstance(raw, dict):
        _fail(where, raw, f"a dict with keys {', '.join(BLOCK_KEYS)}")
    unknown = sorted(set(raw) - set(BLOCK_KEYS))
    if unknown:
        raise ValueError(f"fcn: {where} has unknown key(s) {unknown}. Expected keys: {', '.join(BLOCK_KEYS)}.")
    if "filters" not in raw:
        raise ValueError(f"fcn: {where} is missing 'filters'. Expected a strictly positive int.")
    return EncoderBlock(
        filters=_positive_int(f"{where}.filters", raw["filters"]),
        kernel_size=_pair(f"{where}.kernel_size", raw.get("kernel_size", 3)),
        convs=_positive_int(f"{where}.convs", raw.get("convs", 1)),
        pool_size=_pair(f"{where}.pool_size", raw.get("pool_size", 2)),
    )


def encoder_stride(blocks: list[EncoderBlock]) -> tuple[int, int]:
    """The product of the pool sizes per axis: input pixels per bottleneck position."""
    return (int(np.prod([b.pool_size[0] for b in blocks])), int(np.prod([b.pool_size[1] for b in blocks])))


def check_input_size(input_shape, stride: tuple[int, int]) -> None:
    """Every pool must halve (or divide) exactly so the decoder lands on the input size again."""
    height, width = input_shape[:2]
    bad = [(name, size, s) for name, size, s in (("height", height, stride[0]), ("width", width, stride[1]))
           if size is not None and size % s]
    if not bad:
        return
    if stride[0] == stride[1]:
        s = stride[0]
        lower = max(s, (max(v for _, v, _ in bad) // s) * s)
        raise ValueError(f"fcn: input {height}x{width} is not divisible by the encoder stride {s}; "
                         f"use a multiple of {s} such as {lower} or {lower + s}.")
    needs = "; ".join(f"{name} {size} is not a multiple of {s} (use {max(s, size // s * s)} or {size // s * s + s})"
                      for name, size, s in bad)
    raise ValueError(f"fcn: input {height}x{width} is not divisible by the encoder stride "
                     f"{stride[0]}x{stride[1]}: {needs}.")


# ------------------------------------------------------------------------------------------------
# the builder
# ------------------------------------------------------------------------------------------------
def _conv(x, filters: int, kernel, batch_norm: bool, name: str):
    x = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=not batch_norm, name=f"{name}_conv")(x)
    if batch_norm:
        x = FusedBatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def _upsample(x, method: str, size: tuple[int, int], name: str, *, argmax=None, like=None,
              nail_position=(0, 0)):
    if method == "nearest":
        return NearestUpsampling2D(size, name=name)(x)
    if method == "bed_of_nails":
        return BedOfNails2D(size, position=nail_position, name=name)(x)
    if method == "max_unpool":
        return MaxUnpooling2D(name=name)([x, argmax, like])
    if method == "transposed":
        return keras.layers.Conv2DTranspose(x.shape[-1], size, strides=size, padding="same", name=name)(x)
    return keras.layers.UpSampling2D(size, interpolation="bilinear", name=name)(x)


@MODELS.register("fcn")
def build_fcn(input_shape, num_classes: int, *, blocks=DEFAULT_BLOCKS, upsampling: str = "nearest",
              skip: str = "concat", decoder_convs: int = 1, batch_norm: bool = True, nail_position=(0, 0),
              backbone=None, name: str = "fcn", **unknown) -> keras.Model:
    """Image [H, W, C] -> per-pixel logits [H, W, num_classes] (float32)."""
    if unknown:
        raise ValueError(f"fcn: unknown parameter(s) {sorted(unknown)}. Expected: blocks, upsampling, skip, "
                         f"decoder_convs, batch_norm, nail_position, backbone, name.")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or any(s is not None and (not isinstance(s, int) or s < 1) for s in input_shape):
        _fail("input_shape", input_shape, "(height, width, channels) of positive ints (height/width may be None)")
    _positive_int("num_classes", num_classes)
    if upsampling not in UPSAMPLING:
        _fail("upsampling", upsampling, "one of " + ", ".join(repr(u) for u in UPSAMPLING))
    if skip not in SKIPS:
        _fail("skip", skip, "one of " + ", ".join(repr(s) for s in SKIPS))
    _positive_int("decoder_convs", decoder_convs)
    if batch_norm not in (True, False):
        _fail("batch_norm", batch_norm, "true or false")
    spec = backbones.parse_spec(backbone, "fcn")
    if spec is not None:
        if blocks is not DEFAULT_BLOCKS:
            _fail("blocks", blocks, "no blocks with a backbone (the backbone is the encoder)")
        if upsampling == "max_unpool":
            _fail("upsampling", upsampling, "'nearest', 'bed_of_nails', 'transposed' or 'bilinear' with a backbone "
                                            "(max unpooling needs the encoder's own pooling indices)")
        return _build_on_backbone(spec, input_shape, num_classes, upsampling, skip, decoder_convs, batch_norm,
                                  _nail(nail_position), name)
    if not isinstance(blocks, (list, tuple)) or not blocks:
        _fail("blocks", blocks, "a non-empty list of block dicts")
    parsed = [parse_block(i, raw) for i, raw in enumerate(blocks)]
    nail = _nail(nail_position)
    if upsampling == "bed_of_nails":
        for i, block in enumerate(parsed):
            if block.pool_size != (1, 1) and not all(0 <= p < k for p, k in zip(nail, block.pool_size)):
                _fail("nail_position", nail_position, f"a [row, col] inside every pool window; blocks[{i}] pools "
                                                      f"{block.pool_size[0]}x{block.pool_size[1]}")
    check_input_size(input_shape, encoder_stride(parsed))

    inputs = keras.Input(input_shape, name="image")
    x = inputs
    stages = []  # per pooled block: (index, block, features before pooling, argmax)
    for n, block in enumerate(parsed, start=1):
        for c in range(1, block.convs + 1):
            x = _conv(x, block.filters, block.kernel_size, batch_norm, f"encoder{n}_{c}")
        if block.pool_size == (1, 1):
            continue
        before = x
        if upsampling == "max_unpool":
            x, argmax = MaxPoolingWithArgmax2D(block.pool_size, name=f"encoder{n}_pool")(x)
        else:
            x, argmax = keras.layers.MaxPooling2D(block.pool_size, padding="same", name=f"encoder{n}_pool")(x), None
        stages.append((n, block, before, argmax))

    for n, block, before, argmax in reversed(stages):
        # channels the next (shallower) unpooling needs: the filters of the block it mirrors
        shallower = [s for s in stages if s[0] < n]
        filters = shallower[-1][1].filters if shallower else parsed[0].filters
        x = _upsample(x, upsampling, block.pool_size, f"decoder{n}_up", argmax=argmax, like=before,
                      nail_position=nail)
        if skip == "add":
            x = keras.layers.Add(name=f"decoder{n}_skip")(
                [x, keras.layers.Conv2D(x.shape[-1], 1, name=f"decoder{n}_skip_proj")(before)])
        elif skip == "concat":
            x = keras.layers.Concatenate(name=f"decoder{n}_skip")([x, before])
        for c in range(1, decoder_convs + 1):
            x = _conv(x, filters, block.kernel_size, batch_norm, f"decoder{n}_{c}")
    outputs = keras.layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


BACKBONE_DECODER_FILTERS = 256
"""Most channels a decoder stage on a backbone keeps (ResNet's stride-16 map has 1024)."""


def _build_on_backbone(spec, input_shape, num_classes: int, upsampling: str, skip: str, decoder_convs: int,
                       batch_norm: bool, nail: tuple[int, int], name: str) -> keras.Model:
    """Backbone maps at strides 8/16/32 -> FCN-8s decoder -> logits at the input size."""
    if upsampling == "bed_of_nails" and not all(p < 2 for p in nail):
        _fail("nail_position", list(nail), "a [row, col] inside the 2x2 windows a backbone's decoder upsamples by")
    encoder = backbones.build(spec, input_shape, "fcn", taps=True)
    inputs = keras.Input(tuple(input_shape), name="image")
    stride8, stride16, x = encoder(inputs)
    for stride, before in ((16, stride16), (8, stride8)):
        x = _upsample(x, upsampling, (2, 2), f"decoder{stride}_up", nail_position=nail)
        filters = min(before.shape[-1], BACKBONE_DECODER_FILTERS)
        if skip == "add":
            x = keras.layers.Conv2D(filters, 1, name=f"decoder{stride}_proj")(x)
            x = keras.layers.Add(name=f"decoder{stride}_skip")(
                [x, keras.layers.Conv2D(filters, 1, name=f"decoder{stride}_skip_proj")(before)])
        elif skip == "concat":
            x = keras.layers.Concatenate(name=f"decoder{stride}_skip")([x, before])
        for c in range(1, decoder_convs + 1):
            x = _conv(x, filters, (3, 3), batch_norm, f"decoder{stride}_{c}")
    x = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)
    x = _upsample(x, upsampling, (8, 8), "decoder1_up", nail_position=nail)
    outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _nail(value) -> tuple[int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value)):
        _fail("nail_position", value, "a pair [row, col] of ints >= 0")
    return int(value[0]), int(value[1])


# ------------------------------------------------------------------------------------------------
# classifier -> fully convolutional
# ------------------------------------------------------------------------------------------------
_GLOBAL_POOLS = {"GlobalAveragePooling2D": keras.layers.AveragePooling2D,
                 "GlobalMaxPooling2D": keras.layers.MaxPooling2D}
_VECTOR_SAFE = {"Dropout", "Activation", "ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax", "BatchNormalization",
                "FusedBatchNormalization", "Identity", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "GaussianNoise",
                "GaussianDropout", "AlphaDropout"}
"""Layers that act on the last axis only, so applying them to [b, h, w, C] instead of [b, C] is the
same computation at every position."""


def _producer(tensor):
    return tensor._keras_history.operation


def _flatten_before(dense) -> Any:
    """The Flatten feeding `dense` through vector-safe layers (dropout, activations), or None."""
    layer = _producer(dense.input)
    while type(layer).__name__ in _VECTOR_SAFE and not isinstance(layer.input, (list, tuple)):
        layer = _producer(layer.input)
    return layer if isinstance(layer, keras.layers.Flatten) else None


def _training_map_size(layer, what: str) -> tuple[int, int]:
    shape = tuple(layer.input.shape)
    if len(shape) != 4 or None in shape[1:3]:
        raise ValueError(
            f"to_fully_convolutional: layer '{layer.name}' ({what}) sees a feature map of shape {shape}. Expected "
            f"a known [batch, height, width, channels]: build the classifier with a fixed input size.")
    return int(shape[1]), int(shape[2])


def _convolutional_twin(layer):
    """The layer that does `layer`'s work on feature maps of any size (weights copied after the call)."""
    kind = type(layer).__name__
    config = layer.get_config()
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        raise ValueError(f"to_fully_convolutional: layer '{layer.name}' uses channels_first. Expected channels_last.")
    if kind in _GLOBAL_POOLS:
        size = _training_map_size(layer, kind)
        return _GLOBAL_POOLS[kind](pool_size=size, strides=1, padding="valid", name=layer.name,
                                   dtype=layer.dtype_policy.name)
    if isinstance(layer, keras.layers.Flatten):
        _training_map_size(layer, "Flatten")
        return keras.layers.Identity(name=layer.name, dtype=layer.dtype_policy.name)
    if isinstance(layer, keras.layers.Dense):
        flatten = _flatten_before(layer)
        kernel = _training_map_size(flatten, "Flatten") if flatten is not None else (1, 1)
        return keras.layers.Conv2D(config["units"], kernel, padding="valid", activation=config["activation"],
                                   use_bias=config["use_bias"], name=layer.name, dtype=layer.dtype_policy.name)
    if len(tuple(layer.input.shape if not isinstance(layer.input, (list, tuple)) else layer.input[0].shape)) == 2:
        if kind not in _VECTOR_SAFE:
            raise ValueError(
                f"to_fully_convolutional: layer '{layer.name}' ({kind}) works on vectors after the global "
                f"pooling or Flatten, and has no convolutional equivalent here. Expected only "
                f"{', '.join(sorted(_VECTOR_SAFE | {'Dense'}))} in the head.")
        if kind in ("BatchNormalization", "FusedBatchNormalization"):
            config["axis"] = -1
    return type(layer).from_config(config)


def _twin_weights(original, twin) -> list:
    weights = original.get_weights()
    if isinstance(original, keras.layers.Dense):
        kernel, *bias = weights
        return [kernel.reshape(twin.kernel.shape), *bias]
    return weights


def to_fully_convolutional(classifier: keras.Model, input_shape=None, name: str | None = None) -> keras.Model:
    """The classifier as an all-convolutional model: logits [b, h', w', num_classes] for images of any size.

    `input_shape` (default [None, None, channels]) is the new model's input. On the classifier's own
    input size the output is [b, 1, 1, num_classes] and equals the classifier's logits; on a larger
    image each position is the classifier applied to one window of the image, windows spaced by the
    product of the strides before the head.
    """
    if isinstance(classifier, keras.Sequential):
        classifier = keras.Model(classifier.inputs[0], classifier.outputs[0], name=classifier.name)
    if len(classifier.inputs) != 1 or len(classifier.outputs) != 1:
        raise ValueError(f"to_fully_convolutional: expected a classifier with one image input and one logits "
                         f"output, got {len(classifier.inputs)} input(s) and {len(classifier.outputs)} output(s)")
    original_input = classifier.inputs[0]
    if len(original_input.shape) != 4:
        raise ValueError(f"to_fully_convolutional: expected an image input [batch, H, W, C], got "
                         f"{tuple(original_input.shape)}")
    inputs = keras.Input(tuple(input_shape) if input_shape is not None else (None, None, original_input.shape[-1]),
                         dtype=original_input.dtype, name=original_input.name)
    originals = {}

    def clone(layer):
        twin = _convolutional_twin(layer)
        originals[id(twin)] = layer
        return twin

    def call(twin, *args, **kwargs):
        outputs = twin(*args, **kwargs)
        twin.set_weights(_twin_weights(originals[id(twin)], twin))
        return outputs

    input_tensors = [inputs] if isinstance(classifier.input, (list, tuple)) else inputs
    model = keras.models.clone_model(classifier, input_tensors=input_tensors, clone_function=clone,
                                     call_function=call)
    if name is not None or model.name == classifier.name:
        model.name = name or f"{classifier.name}_fully_convolutional"
    return model
