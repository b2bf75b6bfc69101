"""The classification CNN: blocks of conv -> [batch norm] -> ReLU -> [pool], then a dense or 1x1-conv head.

    build_model("cnn", (32, 32, 3), 3, blocks=[{"filters": 16, "pool": "max"}, ...], head="dense")

Each hidden unit computes h_j = max(0, sum_k h_k * w_kj): a convolution followed by ReLU. Parameters
are checked before any layer is built, and sizes are followed block by block with models/arithmetic:
an explicit padding whose stride does not divide evenly fails here, naming the block and the
numbers, rather than being floored by Keras. Layers are named block<n>_pad/conv/bn/<activation>/pool
and the output layer is always `logits`, float32 so that mixed precision training stays stable.
Batch norm is Keras's computed with TensorFlow's fused kernel (models/layers/fused_batch_normalization.py),
which trains the default network about 1.4x faster on a CPU.

`backbone={"name": "mobilenet_v3_small", "weights": "<file>", "trainable": "all"}` replaces the
blocks with a keras.applications network (models/backbones/): image -> backbone -> the same head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import keras

from models import arithmetic, backbones
from models.layers.fused_batch_normalization import FusedBatchNormalization
from models.layers.sum_pooling import SumPooling2D
from models.registry import MODELS

Pair = tuple[int, int]
ExplicitPadding = tuple[Pair, Pair]

POOLS = {"max": keras.layers.MaxPooling2D, "avg": keras.layers.AveragePooling2D, "sum": SumPooling2D}
GLOBAL_POOLS = ("avg", "max", "flatten")
HEADS = ("dense", "conv1x1")

# The default network: three conv blocks, the middle pool overlapping (F=3, S=2).
DEFAULT_BLOCKS = (
    {"filters": 16, "kernel_size": 3, "padding": "same", "batch_norm": True, "pool": "max", "pool_size": 2},
    {"filters": 32, "kernel_size": 3, "padding": "same", "batch_norm": True, "pool": "max", "pool_size": 3,
     "pool_stride": 2},
    {"filters": 64, "kernel_size": 3, "padding": "same", "batch_norm": True, "pool": None},
)


@dataclass(frozen=True)
class Block:
    """One conv block, as validated from its config dict."""
    filters: int
    kernel_size: Pair = (3, 3)
    strides: Pair = (1, 1)
    padding: Union[str, ExplicitPadding] = "same"
    dilation_rate: Pair = (1, 1)
    batch_norm: bool = False
    activation: str = "relu"
    pool: Optional[str] = None
    pool_size: Pair = (2, 2)
    pool_stride: Optional[Pair] = None
    pool_padding: str = "valid"


BLOCK_KEYS = tuple(Block.__dataclass_fields__)


class _Checker:
    """Turns a bad value into an error that names the block, the key, the value and what was expected."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, key: str, value: Any, expected: str):
        raise ValueError(f"cnn: invalid {self.where}{key}={value!r}. Expected {expected}.")

    def positive_int(self, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(key, value, "a strictly positive int")
        return value

    def pair(self, key: str, value: Any) -> Pair:
        values = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
        if (not isinstance(values, (list, tuple)) or len(values) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values)):
            self.fail(key, value, "a strictly positive int or a pair [height, width] of them")
        return int(values[0]), int(values[1])

    def choice(self, key: str, value: Any, options) -> Any:
        if value not in options:
            self.fail(key, value, "one of " + ", ".join(repr(o) for o in options))
        return value

    def padding(self, key: str, value: Any) -> Union[str, ExplicitPadding]:
        if isinstance(value, str) and value in ("valid", "same"):
            return value
        try:
            (top, bottom), (left, right) = value
            pads = ((top, bottom), (left, right))
            if all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for pair in pads for p in pair):
                return pads
        except (TypeError, ValueError):
            pass
        self.fail(key, value, "'valid', 'same' or explicit [[top, bottom], [left, right]] of ints >= 0")


def parse_block(index: int, raw: Any) -> Block:
    check = _Checker(f"blocks[{index}].")
    if not isinstance(raw, dict):
        raise ValueError(f"cnn: invalid blocks[{index}]={raw!r}. Expected a dict with keys {', '.join(BLOCK_KEYS)}.")
    unknown = sorted(set(raw) - set(BLOCK_KEYS))
    if unknown:
        raise ValueError(f"cnn: blocks[{index}] has unknown key(s) {unknown}. Expected keys: {', '.join(BLOCK_KEYS)}.")
    if "filters" not in raw:
        raise ValueError(f"cnn: blocks[{index}] is missing 'filters'. Expected a strictly positive int.")
    defaults = Block(filters=1)

    def get(key: str):
        return raw.get(key, getattr(defaults, key))

    pool = get("pool")
    pool = None if pool in (None, "null", "none") else check.choice("pool", pool, (*POOLS, None))
    block = Block(
        filters=check.positive_int("filters", raw["filters"]),
        kernel_size=check.pair("kernel_size", get("kernel_size")),
        strides=check.pair("strides", get("strides")),
        padding=check.padding("padding", get("padding")),
        dilation_rate=check.pair("dilation_rate", get("dilation_rate")),
        batch_norm=check.choice("batch_norm", get("batch_norm"), (True, False)),
        activation=_activation(check, get("activation")),
        pool=pool,
        pool_size=check.pair("pool_size", get("pool_size")),
        pool_stride=None if get("pool_stride") is None else check.pair("pool_stride", get("pool_stride")),
        pool_padding=check.choice("pool_padding", get("pool_padding"), ("valid", "same")),
    )
    if max(block.strides) > 1 and max(block.dilation_rate) > 1:
        raise ValueError(f"cnn: invalid blocks[{index}]: strides={list(block.strides)} with "
                         f"dilation_rate={list(block.dilation_rate)}. Expected strides 1 when dilation_rate > 1 "
                         f"(Keras convolutions support one or the other).")
    return block


def _activation(check: _Checker, name: Any) -> str:
    try:
        if isinstance(name, str):
            keras.activations.get(name)
            return name
    except (ValueError, TypeError):
        pass
    check.fail("activation", name, "a Keras activation name such as 'relu'")


def check_sizes(input_shape, blocks: list[Block]) -> arithmetic.Geometry:
    """Follows the spatial size through the blocks; explicit padding must divide evenly (strict mode)."""
    geometry = arithmetic.Geometry.of_input(input_shape[:2])
    for n, block in enumerate(blocks, start=1):
        where = f"blocks[{n - 1}]"
        try:
            explicit = not isinstance(block.padding, str)
            geometry = arithmetic.apply_window(geometry, block.kernel_size, block.strides, block.padding,
                                               block.dilation_rate, strict=explicit, layer=f"block{n}_conv").geometry
            if block.pool:
                geometry = arithmetic.apply_window(geometry, block.pool_size, block.pool_stride or block.pool_size,
                                                   block.pool_padding, layer=f"block{n}_pool").geometry
        except arithmetic.ConvArithmeticError as err:
            raise arithmetic.ConvArithmeticError(f"cnn: {where}: {err}") from None
    return geometry


def conv_block(x, n: int, block: Block, bn_momentum: float = 0.9):
    """conv -> [batch norm] -> activation -> [pool], layers named block<n>_*."""
    padding = block.padding
    if not isinstance(padding, str):
        x = keras.layers.ZeroPadding2D(padding, name=f"block{n}_pad")(x)
        padding = "valid"
    x = keras.layers.Conv2D(block.filters, block.kernel_size, strides=block.strides, padding=padding,
                            dilation_rate=block.dilation_rate, use_bias=not block.batch_norm,
                            name=f"block{n}_conv")(x)
    if block.batch_norm:
        x = FusedBatchNormalization(momentum=bn_momentum, name=f"block{n}_bn")(x)
    x = keras.layers.Activation(block.activation, name=f"block{n}_{block.activation}")(x)
    if block.pool:
        x = POOLS[block.pool](block.pool_size, strides=block.pool_stride or block.pool_size,
                              padding=block.pool_padding, name=f"block{n}_pool")(x)
    return x


def classifier_head(x, num_classes: int, kind: str, global_pool: str, dense_units: list[int], dropout: float):
    """Dense head: pool/flatten -> [dense]* -> logits. 1x1-conv head: [1x1 conv]* -> 1x1 conv to classes -> pool."""
    def drop(x, name):
        return keras.layers.Dropout(dropout, name=name)(x) if dropout else x

    if kind == "dense":
        x = _global(global_pool)(x)
        for k, units in enumerate(dense_units, start=1):
            x = keras.layers.Dense(units, activation="relu", name=f"head_dense{k}")(drop(x, f"head_dropout{k}"))
        return keras.layers.Dense(num_classes, dtype="float32", name="logits")(drop(x, "logits_dropout"))
    for k, units in enumerate(dense_units, start=1):
        x = keras.layers.Conv2D(units, 1, activation="relu", name=f"head_conv{k}")(drop(x, f"head_dropout{k}"))
    x = keras.layers.Conv2D(num_classes, 1, name="head_classifier")(drop(x, "classifier_dropout"))
    x = _global(global_pool)(x)
    return keras.layers.Activation("linear", dtype="float32", name="logits")(x)


def _global(kind: str):
    return {"avg": lambda: keras.layers.GlobalAveragePooling2D(name="global_avg_pool"),
            "max": lambda: keras.layers.GlobalMaxPooling2D(name="global_max_pool"),
            "flatten": lambda: keras.layers.Flatten(name="flatten")}[kind]()


@MODELS.register("cnn")
def build_cnn(input_shape, num_classes: int, *, blocks=DEFAULT_BLOCKS, head: str = "dense",
              global_pool: str = "avg", dense_units=(), dropout: float = 0.0, bn_momentum: float = 0.9,
              backbone=None, name: str = "cnn", **unknown) -> keras.Model:
    """Image [H, W, C] -> class logits [num_classes] (float32).

    `bn_momentum` 0.9 rather than Keras's 0.99: runs here are a few hundred steps, and with 0.99 the
    moving statistics still hold a third of their initial values after 100 steps, so inference
    (which uses them) scores near chance while training accuracy is high.
    """
    if unknown:
        raise ValueError(f"cnn: unknown parameter(s) {sorted(unknown)}. Expected: blocks, head, global_pool, "
                         f"dense_units, dropout, bn_momentum, backbone, name.")
    check = _Checker("")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or any(s is not None and (not isinstance(s, int) or s < 1) for s in input_shape):
        check.fail("input_shape", input_shape, "(height, width, channels) of positive ints (height/width may be None)")
    check.positive_int("num_classes", num_classes)
    check.choice("head", head, HEADS)
    check.choice("global_pool", global_pool, GLOBAL_POOLS)
    if not isinstance(dense_units, (list, tuple)):
        check.fail("dense_units", dense_units, "a list of strictly positive ints")
    dense_units = [check.positive_int(f"dense_units[{k}]", u) for k, u in enumerate(dense_units)]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        check.fail("dropout", dropout, "a float in [0, 1)")
    if isinstance(bn_momentum, bool) or not isinstance(bn_momentum, (int, float)) or not 0 <= bn_momentum < 1:
        check.fail("bn_momentum", bn_momentum, "a float in [0, 1)")
    spec = backbones.parse_spec(backbone, "cnn")
    if spec is not None:
        if blocks is not DEFAULT_BLOCKS:
            check.fail("blocks", blocks, "no blocks with a backbone (the backbone replaces them)")
        return _build_on_backbone(spec, input_shape, num_classes, head, global_pool, dense_units, float(dropout),
                                  name)
    if not isinstance(blocks, (list, tuple)) or not blocks:
        check.fail("blocks", blocks, "a non-empty list of block dicts")
    parsed = [parse_block(i, raw) for i, raw in enumerate(blocks)]
    final = check_sizes(input_shape, parsed)
    if global_pool == "flatten":
        if None in final.size:
            check.fail("global_pool", global_pool, "'avg' or 'max' when the input height/width are unknown")
        if head == "conv1x1" and final.size != (1, 1):
            check.fail("global_pool", global_pool, f"'avg' or 'max' with head='conv1x1' (the last block gives "
                                                   f"{final.size[0]}x{final.size[1]}, flatten needs 1x1)")

    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for n, block in enumerate(parsed, start=1):
        x = conv_block(x, n, block, float(bn_momentum))
    outputs = classifier_head(x, num_classes, head, global_pool, dense_units, float(dropout))
    return keras.Model(inputs, outputs, name=name)


def _build_on_backbone(spec, input_shape, num_classes: int, head: str, global_pool: str, dense_units: list[int],
                       dropout: float, name: str) -> keras.Model:
    """image -> backbone (its last feature map, stride 32) -> the classifier head -> logits."""
    features = backbones.build(spec, input_shape, "cnn", taps=False)
    inputs = keras.Input(input_shape, name="image")
    outputs = classifier_head(features(inputs), num_classes, head, global_pool, dense_units, dropout)
    return keras.Model(inputs, outputs, name=name)
