"""Video classifiers that differ only in where time is fused (Karpathy et al., 2014).

One builder, `video`, takes clips [T, H, W, C] and returns logits; `fusion` says how the frames meet:

- `single_frame`: a 2D CNN on the middle frame. The baseline: it sees no motion at all.
- `late`: the same 2D tower (the same layers, one set of weights) on the first and the last
  frame; the two feature maps meet only in the first dense layer, which can compare where things
  are at either end.
- `early`: the first convolution spans all T frames (temporal extent T, valid in time), so motion
  is read from raw pixels once; the blocks above it have temporal extent 1 (2D convolutions kept
  in the 3D layout, so early and slow differ only in their temporal plan).
- `slow`: 3D convolutions with a small temporal extent and temporal stride, stacked so that each
  layer sees more frames and the top layer sees all of them (see `slow_fusion_schedule`).
- `conv3d`: a plain 3D CNN, Conv3D + MaxPooling3D blocks; pooling strides through time, height
  and width alike.

Every fusion uses the same `filters` per block (one conv per block, spatial max-pooling by 2 after
each), the same head (Flatten -> Dense(dense_units) -> logits) and the same spatial kernel, so a
sweep over `fusion` compares fusion and nothing else. Flatten, not global pooling, keeps where
things are, which late fusion needs to tell the direction of motion from two frames.

Temporal sizes follow the same rule as 2D (models.arithmetic): O = (I - F + P_start + P_end) / S + 1
per axis, time included.
"""
from __future__ import annotations

from typing import Sequence

import keras

from models.arithmetic import output_size, same_padding
from models.layers.select_frame import SelectFrame
from models.registry import MODELS

FUSIONS = ("single_frame", "late", "early", "slow", "conv3d")
DEFAULT_FILTERS = (16, 32, 32)


# ------------------------------------------------------------------------------------------------
# the temporal plan of slow fusion
# ------------------------------------------------------------------------------------------------
def slow_fusion_schedule(frames: int, num_layers: int, temporal_kernel: int = 4,
                         temporal_stride: int = 2) -> list[tuple[int, int]]:
    """(kernel, stride) along time for each slow-fusion layer, valid padding in time.

    Layers stride through time with `temporal_kernel`; the last layer, or the first one that
    finds no more than `temporal_kernel` frames left, spans all that is left, so the top layer's
    temporal receptive field is exactly the clip. A kernel is widened by (I - F) mod S so that the
    stride never skips the last frames. Layers after time is used up have extent 1.
    For T=8, three layers: [(4, 2), (3, 1), (1, 1)]: 8 -> 3 -> 1 -> 1 frames.
    """
    plan, remaining = [], frames
    for layer in range(num_layers):
        if remaining == 1:
            kernel, stride = 1, 1
        elif layer == num_layers - 1 or remaining <= temporal_kernel:
            kernel, stride = remaining, 1
        else:
            kernel = temporal_kernel + (remaining - temporal_kernel) % temporal_stride
            stride = temporal_stride
        plan.append((kernel, stride))
        remaining = output_size(remaining, kernel, stride, strict=True, layer=f"slow fusion layer {layer + 1}")
    return plan


# ------------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------------
def _pool(size: int) -> int:
    """Pool by 2 while there is something to pool; a size-1 axis is left alone."""
    return 2 if size >= 2 else 1


def _conv_block_3d(x, filters: int, kernel_size: int, temporal_kernel: int, temporal_stride: int, name: str):
    """Conv3D valid in time (extent `temporal_kernel`), 'same' in space, then 2x2 spatial pooling."""
    height, width = x.shape[2], x.shape[3]
    pads = ((0, 0), same_padding(height, kernel_size), same_padding(width, kernel_size))
    x = keras.layers.ZeroPadding3D(pads, name=f"{name}_pad")(x)
    x = keras.layers.Conv3D(filters, (temporal_kernel, kernel_size, kernel_size), strides=(temporal_stride, 1, 1),
                            padding="valid", activation="relu", name=f"{name}_conv")(x)
    height, width = x.shape[2], x.shape[3]
    return keras.layers.MaxPooling3D((1, _pool(height), _pool(width)), name=f"{name}_pool")(x)


def _temporal_stack(clips, filters: Sequence[int], kernel_size: int, plan: Sequence[tuple[int, int]]):
    """3D conv blocks following a temporal plan of (kernel, stride) per block, then Flatten."""
    x = clips
    for i, (count, (kernel, stride)) in enumerate(zip(filters, plan), start=1):
        x = _conv_block_3d(x, count, kernel_size, kernel, stride, f"block{i}")
    return keras.layers.Flatten(name="flatten")(x)


def _frame_tower(frame, filters: Sequence[int], kernel_size: int):
    """The 2D CNN of single-frame and late fusion on one frame -> (features, its layers in order).

    The layers are returned so that late fusion can apply the very same layers (one set of
    weights) to its second frame.
    """
    layers, x = [], frame
    for i, count in enumerate(filters, start=1):
        conv = keras.layers.Conv2D(count, kernel_size, padding="same", activation="relu", name=f"tower_block{i}_conv")
        x = conv(x)
        pool = keras.layers.MaxPooling2D((_pool(x.shape[1]), _pool(x.shape[2])), name=f"tower_block{i}_pool")
        x = pool(x)
        layers += [conv, pool]
    flatten = keras.layers.Flatten(name="tower_flatten")
    return flatten(x), layers + [flatten]


def _head(features, num_classes: int, dense_units: int, dropout: float):
    x = keras.layers.Dense(dense_units, activation="relu", name="fc")(features)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="fc_dropout")(x)
    return keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)


# ------------------------------------------------------------------------------------------------
# the fusions: clips -> features
# ------------------------------------------------------------------------------------------------
def _single_frame(clips, filters, kernel_size, **_):
    middle = SelectFrame(clips.shape[1] // 2, name="middle_frame")(clips)
    features, _ = _frame_tower(middle, filters, kernel_size)
    return features


def _late(clips, filters, kernel_size, **_):
    first, tower = _frame_tower(SelectFrame(0, name="first_frame")(clips), filters, kernel_size)
    last = SelectFrame(-1, name="last_frame")(clips)
    for layer in tower:
        last = layer(last)
    return keras.layers.Concatenate(name="late_merge")([first, last])


def _early(clips, filters, kernel_size, **_):
    """Slow fusion's blocks with all of time in the first: plan [(T, 1), (1, 1), ...]."""
    plan = [(clips.shape[1], 1)] + [(1, 1)] * (len(filters) - 1)
    return _temporal_stack(clips, filters, kernel_size, plan)


def _slow(clips, filters, kernel_size, temporal_kernel, temporal_stride, **_):
    plan = slow_fusion_schedule(clips.shape[1], len(filters), temporal_kernel, temporal_stride)
    return _temporal_stack(clips, filters, kernel_size, plan)


def _conv3d(clips, filters, kernel_size, **_):
    x = clips
    for i, count in enumerate(filters, start=1):
        x = keras.layers.Conv3D(count, (3, kernel_size, kernel_size), padding="same", activation="relu",
                                name=f"block{i}_conv")(x)
        x = keras.layers.MaxPooling3D(tuple(_pool(size) for size in x.shape[1:4]), name=f"block{i}_pool")(x)
    return keras.layers.Flatten(name="flatten")(x)


_FUSION_BUILDERS = {"single_frame": _single_frame, "late": _late, "early": _early, "slow": _slow, "conv3d": _conv3d}


# ------------------------------------------------------------------------------------------------
# the builder
# ------------------------------------------------------------------------------------------------
def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"video: invalid value for argument `{name}`. Expected a positive integer. Received {name}={value!r}")
    return value


@MODELS.register("video")
def build_video(input_shape, num_classes: int, fusion: str = "slow", filters: Sequence[int] = DEFAULT_FILTERS,
                kernel_size: int = 3, temporal_kernel: int = 4, temporal_stride: int = 2,
                dense_units: int = 64, dropout: float = 0.0) -> keras.Model:
    """Clips [T, H, W, C] -> logits [num_classes], fusing time as `fusion` says (one of FUSIONS)."""
    input_shape = tuple(input_shape)
    if len(input_shape) != 4 or any(d is None or int(d) < 1 for d in input_shape):
        raise ValueError(f"video: expected input_shape [T, H, W, C] of positive sizes, got {list(input_shape)}")
    if fusion not in FUSIONS:
        raise ValueError(f"video: invalid value for argument `fusion`. Expected one of {', '.join(FUSIONS)}. "
                         f"Received fusion={fusion!r}")
    if isinstance(filters, (str, bytes)) or not isinstance(filters, Sequence) or not filters:
        raise ValueError(f"video: invalid value for argument `filters`. Expected a non-empty list of positive "
                         f"integers (one per block). Received filters={filters!r}")
    filters = [_positive_int("filters", f) for f in filters]
    for name, value in (("num_classes", num_classes), ("kernel_size", kernel_size), ("dense_units", dense_units),
                        ("temporal_kernel", temporal_kernel), ("temporal_stride", temporal_stride)):
        _positive_int(name, value)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"video: invalid value for argument `dropout`. Expected 0 <= dropout < 1. Received dropout={dropout!r}")

    clips = keras.Input(input_shape, name="clips")
    features = _FUSION_BUILDERS[fusion](clips, filters=filters, kernel_size=kernel_size,
                                        temporal_kernel=temporal_kernel, temporal_stride=temporal_stride)
    logits = _head(features, num_classes, dense_units, dropout)
    return keras.Model(clips, logits, name=f"video_{fusion}")
