"""Backbone and feature pyramid shared by the learned detectors.

The backbone is the classification CNN's blocks (models/classification/cnn.py: conv -> [batch norm] -> ReLU ->
[pool]); the last `levels` blocks give the pyramid's inputs, finest first. A feature pyramid (Lin
et al. 2017) gives every level the same width and the semantics of the coarsest one: a 1x1
lateral conv per level, nearest-neighbour upsampling of the coarser level added top-down, then a
3x3 conv to smooth the sum.

    network = feature_network((64, 64, 3), blocks, levels=2, filters=32)   # image -> [P3, P4]

With `backbone` (a models/backbones spec) the pyramid's inputs are the backbone's maps at strides
8, 16 and 32 instead of the blocks' (`levels` 3; with 2, the strides 16 and 32 as the blocks give
their coarsest levels):

    network = feature_network((64, 64, 3), levels=3, filters=32, backbone={"name": "resnet50"})
"""
from __future__ import annotations

import keras

from models import backbones
from models.classification import cnn

# Four blocks halving the side each time: levels of stride 8 and 16 on a 64 x 64 image.
DEFAULT_BLOCKS = (
    {"filters": 16, "batch_norm": True, "pool": "max"},
    {"filters": 32, "batch_norm": True, "pool": "max"},
    {"filters": 64, "batch_norm": True, "pool": "max"},
    {"filters": 64, "batch_norm": True, "pool": "max"},
)


def parse_blocks(blocks, where: str) -> list:
    if not isinstance(blocks, (list, tuple)) or not blocks:
        raise ValueError(f"{where}: invalid blocks={blocks!r}. Expected a non-empty list of block dicts (models/classification/cnn.py).")
    return [cnn.parse_block(i, raw) for i, raw in enumerate(blocks)]


def level_strides(input_shape, blocks, levels: int, where: str = "detector") -> list[int]:
    """Strides of the pyramid levels (image side / feature side), checked to be exact."""
    if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= len(blocks):
        raise ValueError(f"{where}: invalid levels={levels!r}. Expected an int from 2 to the number of blocks ({len(blocks)}).")
    parsed = parse_blocks(blocks, where)
    strides = []
    for end in range(len(parsed) - levels + 1, len(parsed) + 1):
        size = cnn.check_sizes(input_shape, parsed[:end]).size
        stride_y, stride_x = input_shape[0] / size[0], input_shape[1] / size[1]
        if stride_y != stride_x or stride_y != int(stride_y):
            raise ValueError(f"{where}: block {end} gives a {size[0]}x{size[1]} map of a {input_shape[0]}x{input_shape[1]} "
                             f"image. Expected an image side divisible by every level's stride, so anchors sit on cells.")
        strides.append(int(stride_y))
    for finer, coarser in zip(strides, strides[1:]):
        if coarser % finer:
            raise ValueError(f"{where}: level strides {strides}. Expected each level's stride to be a multiple of the previous one.")
    return strides


def backbone_spec(raw, blocks, where: str):
    """`backbone` of a detector's config as a BackboneSpec (None without one); blocks must be left out."""
    spec = backbones.parse_spec(raw, where)
    if spec is not None and blocks is not DEFAULT_BLOCKS:
        raise ValueError(f"{where}: invalid blocks={blocks!r}. Expected no blocks with a backbone (the backbone "
                         f"replaces them).")
    return spec


def with_backbone(spec, config: dict) -> dict:
    """A detector's get_config with its backbone in place of the blocks. The weights file is left
    out: a saved model carries its own weights, and loading it must not need (or read) the file."""
    if spec is None:
        return config
    config = {k: v for k, v in config.items() if k != "blocks"}
    return {**config, "backbone": {**spec.to_config(), "weights": None}}


def default_levels(backbone) -> int:
    """Levels when the detector's config leaves them out: 2 on blocks, 3 (strides 8/16/32) on a backbone."""
    return 2 if backbone is None else len(backbones.STRIDES)


def backbone_strides(spec, levels, where: str) -> list[int]:
    """The strides of a backbone's pyramid levels: the last `levels` of 8, 16, 32."""
    count = len(backbones.STRIDES)
    if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= count:
        raise ValueError(f"{where}: invalid levels={levels!r}. Expected 2 or 3 with a backbone (its maps at strides "
                         f"{', '.join(map(str, backbones.STRIDES))}).")
    return list(backbones.STRIDES[count - levels:])


def pyramid_strides(input_shape, blocks, levels, backbone, where: str) -> list[int]:
    """Strides of the pyramid levels for blocks or for a backbone spec (parsed or raw)."""
    if backbone is None:
        return level_strides(input_shape, blocks, levels, where)
    spec = backbones.parse_spec(backbone, where)
    backbones.check_input(input_shape, where, max(backbones.STRIDES))
    return backbone_strides(spec, levels, where)


def feature_network(input_shape, blocks=DEFAULT_BLOCKS, levels: int = 2, filters: int = 64,
                    name: str = "features", backbone=None) -> keras.Model:
    """Image [H, W, C] -> list of `levels` pyramid maps [h_l, w_l, filters], finest first."""
    strides = pyramid_strides(input_shape, blocks, levels, backbone, name)
    if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
        raise ValueError(f"{name}: invalid fpn filters={filters!r}. Expected a strictly positive int.")
    inputs = keras.Input(tuple(input_shape), name="image")
    if backbone is None:
        x, outputs = inputs, []
        for n, block in enumerate(parse_blocks(blocks, name), start=1):
            x = cnn.conv_block(x, n, block)
            outputs.append(x)
    else:
        outputs = list(backbones.build(backbones.parse_spec(backbone, name), input_shape, name, taps=True)(inputs))
    features = outputs[-levels:]
    laterals = [keras.layers.Conv2D(filters, 1, name=f"fpn_lateral{k}")(f) for k, f in enumerate(features)]
    merged = [laterals[-1]]
    for k in range(levels - 2, -1, -1):
        factor = strides[k + 1] // strides[k]
        up = keras.layers.UpSampling2D(factor, interpolation="nearest", name=f"fpn_up{k + 1}")(merged[0])
        merged.insert(0, keras.layers.Add(name=f"fpn_add{k}")([laterals[k], up]))
    pyramid = [keras.layers.Conv2D(filters, 3, padding="same", name=f"fpn_out{k}")(m) for k, m in enumerate(merged)]
    return keras.Model(inputs, pyramid, name=name)


def conv_tower(filters: int, depth: int, name: str) -> list:
    """`depth` 3x3 conv + ReLU layers, created once and applied to every level (shared heads)."""
    return [keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_conv{i}")
            for i in range(depth)]


def apply(layers, x):
    for layer in layers:
        x = layer(x)
    return x
