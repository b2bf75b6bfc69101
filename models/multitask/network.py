"""One shared conv backbone, several task heads, one named output per head (Caruana, 1997).

    model = build_model("multitask", (32, 32, 3), 3, heads=["classification", "segmentation"])
    outputs = model(images)      # {"classification": [B, K], "segmentation": [B, H, W, K + 1]}

Heads (any non-empty subset, named in `heads`), all reading the same backbone features, all
returning float32 logits or raw values:

- `classification`: global average pool of the last block -> dense -> logits [B, num_classes].
- `segmentation`: an FCN-8s-style decoder: 1x1-conv class scores of the last block, upsampled by
  transposed convolutions and summed with the scores of each earlier block (skip connections), up
  to the input size: per-pixel logits [B, H, W, segmentation_classes] (background is class 0, so
  the default is num_classes + 1).
- `detection`: a one-stage anchor head on one backbone level: per anchor the box deltas against
  the anchor (models/detection/anchors.py encoding) and the class logits, concatenated as in keras-io's
  RetinaNet: [B, N, 4 + num_classes], N = rows * cols * anchors per location; the class biases
  start at the focal-loss prior. `split_detection` separates the two, `one_stage_outputs` gives
  the one-stage detector's dict for its decoder, and `MultitaskModel.anchors()` the [N, 4]
  rel_xyxy anchors in the same order.
- `regression`: global average pool -> dense -> `regression_outputs` values (by default one: the
  number of objects in the image, `regression_target="count"`).

The backbone is the `cnn` builder's blocks (same dicts, same checks, same layer names), so a
single-task baseline and the multitask model share their feature extractor exactly.

The returned `MultitaskModel` holds the functional network (`model.network`) and the task
weighting layer (`model.task_weighting`, models/multitask/task_weighting.py): with `weighting="uncertainty"`
the per-task log-variances s_i are trainable variables of the model, trained by the same optimizer
step and saved in its `.keras` file. The trainer passes `train.multitask.weighting` and `weights`
as the builder's `weighting` and `task_weights`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import keras
from keras import ops

from models.detection import anchors as anchor_ops
from models.classification.cnn import check_sizes, conv_block, parse_block
from models.registry import MODELS
from models.multitask.task_weighting import TaskWeighting, kind_of_head

HEADS = ("classification", "segmentation", "detection", "regression")
REGRESSION_TARGETS = ("count", "mean_box_area")
DEFAULT_BLOCKS = (
    {"filters": 16, "batch_norm": True, "pool": "max"},
    {"filters": 32, "batch_norm": True, "pool": "max"},
    {"filters": 64, "batch_norm": True, "pool": "max"},
)
FOCAL_PRIOR = 0.01
"""Initial foreground probability of every detection class logit (RetinaNet), so the many
background anchors do not swamp the first steps."""


# ------------------------------------------------------------------------------------------------
# the model: a functional network plus the task weighting that trains with it
# ------------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="convpipe")
class MultitaskModel(keras.Model):
    """`network(images)` -> {head: output}, plus the `task_weighting` layer whose s_i train with it.

    `head_config` records what the heads mean (classes per head, anchors, regression target), so a
    trainer, evaluator or exporter can read them from a loaded model.
    """

    def __init__(self, network: keras.Model, task_weighting: TaskWeighting, head_config: Mapping[str, Any],
                 **kwargs):
        super().__init__(**kwargs)
        heads = list(head_config.get("heads", ()))
        if sorted(network.output.keys() if isinstance(network.output, dict) else ()) != sorted(heads):
            raise ValueError(f"MultitaskModel: expected a network with one dict output per head {heads}. "
                             f"Received outputs {network.output!r}")
        if list(task_weighting.tasks) != heads:
            raise ValueError(f"MultitaskModel: expected task weighting over the heads {heads}. "
                             f"Received tasks {list(task_weighting.tasks)}")
        self.network = network
        self.task_weighting = task_weighting
        self.head_config = dict(head_config)
        self.built = True

    @property
    def heads(self) -> list[str]:
        return list(self.head_config["heads"])

    def call(self, inputs, training=None):
        return self.network(inputs, training=training)

    def compute_output_spec(self, inputs, training=None):
        return self.network.compute_output_spec(inputs)

    def anchors(self):
        """The detection head's anchors [N, 4] rel_xyxy (numpy), in the order of its output rows."""
        if "detection" not in self.head_config:
            raise ValueError(f"MultitaskModel: no detection head (heads: {self.heads})")
        return detection_anchors(self.head_config["detection"])

    def get_config(self):
        return {**super().get_config(),
                "network": keras.saving.serialize_keras_object(self.network),
                "task_weighting": keras.saving.serialize_keras_object(self.task_weighting),
                "head_config": self.head_config}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(config.pop("network"), custom_objects=custom_objects)
        weighting = keras.saving.deserialize_keras_object(config.pop("task_weighting"), custom_objects=custom_objects)
        return cls(network=network, task_weighting=weighting, **config)


def detection_anchors(detection_config: Mapping[str, Any]):
    """Anchors [N, 4] rel_xyxy for a detection head config (image_shape, feature_shape, sizes...)."""
    return anchor_ops.generate_anchors(detection_config["image_shape"], [detection_config["feature_shape"]],
                                       [detection_config["anchor_size"]], detection_config["anchor_scales"],
                                       detection_config["anchor_aspect_ratios"])


def split_detection(output, num_box_values: int = 4):
    """[..., N, 4 + K] detection output -> (box deltas [..., N, 4], class logits [..., N, K])."""
    return output[..., :num_box_values], output[..., num_box_values:]


def one_stage_outputs(output) -> dict:
    """The detection output as the one-stage detector's dict {"box_deltas", "class_logits"}, so
    that `detection.one_stage.decode_detections(one_stage_outputs(out), anchors=model.anchors())`
    decodes it (boxes, sigmoid scores, per-class NMS) exactly as it decodes the detector's own."""
    deltas, logits = split_detection(output)
    return {"box_deltas": deltas, "class_logits": logits}


# ------------------------------------------------------------------------------------------------
# heads
# ------------------------------------------------------------------------------------------------
def _classification_head(features, num_classes: int, dense_units: int, dropout: float):
    x = keras.layers.GlobalAveragePooling2D(name="classification_pool")(features)
    x = keras.layers.Dense(dense_units, activation="relu", name="classification_dense")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="classification_dropout")(x)
    return keras.layers.Dense(num_classes, dtype="float32", name="classification_logits")(x)


def _upsample_factor(small: Sequence[int], large: Sequence[int], where: str) -> tuple[int, int]:
    factors = []
    for axis, (s, l) in enumerate(zip(small, large)):
        if l % s:
            raise ValueError(f"multitask: segmentation decoder cannot upsample {tuple(small)} to {tuple(large)} "
                             f"({where}): expected each backbone block to divide its input size by an integer. "
                             f"Use input sizes divisible by the backbone's total stride.")
        factors.append(l // s)
    return tuple(factors)


def _segmentation_head(image_size, taps, num_classes: int, filters: int):
    """FCN-8s style: scores of the deepest features, upsampled (transposed conv, kernel 2 x factor)
    and summed with 1x1-conv scores of every shallower block, then up to the input size. With
    `filters` > 0 each block's features first pass a 3x3 conv of its own (task-specific capacity
    between the shared features and the scores)."""
    def score(features, level):
        if filters:
            features = keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                                           name=f"segmentation_conv{level}")(features)
        return keras.layers.Conv2D(num_classes, 1, name=f"segmentation_score{level}")(features)

    deepest = len(taps)
    x = score(taps[-1], deepest)
    for level in range(deepest - 1, 0, -1):
        skip = taps[level - 1]
        factor = _upsample_factor(x.shape[1:3], skip.shape[1:3], f"block{level + 1} -> block{level}")
        if factor != (1, 1):
            x = keras.layers.Conv2DTranspose(num_classes, tuple(2 * f for f in factor), strides=factor,
                                             padding="same", name=f"segmentation_up{level + 1}")(x)
        score_map = score(skip, level)
        x = keras.layers.Add(name=f"segmentation_fuse{level}")([x, score_map])
    factor = _upsample_factor(x.shape[1:3], image_size, "block1 -> input")
    if factor != (1, 1):
        x = keras.layers.Conv2DTranspose(num_classes, tuple(2 * f for f in factor), strides=factor,
                                         padding="same", name="segmentation_up1")(x)
    return keras.layers.Activation("linear", dtype="float32", name="segmentation_logits")(x)


def _detection_head(features, num_classes: int, anchors_per_location: int, filters: int, convs: int):
    rows, cols = features.shape[1], features.shape[2]
    count = rows * cols * anchors_per_location
    x = features
    for k in range(1, convs + 1):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                                name="detection_conv" if k == 1 else f"detection_conv{k}")(x)
    boxes = keras.layers.Conv2D(anchors_per_location * 4, 1, name="detection_box_conv")(x)
    prior = -math.log((1.0 - FOCAL_PRIOR) / FOCAL_PRIOR)
    classes = keras.layers.Conv2D(anchors_per_location * num_classes, 1, name="detection_class_conv",
                                  bias_initializer=keras.initializers.Constant(prior))(x)
    boxes = keras.layers.Reshape((count, 4), name="detection_box_deltas")(boxes)
    classes = keras.layers.Reshape((count, num_classes), name="detection_class_logits")(classes)
    merged = keras.layers.Concatenate(axis=-1, name="detection_merge")([boxes, classes])
    return keras.layers.Activation("linear", dtype="float32", name="detection_outputs")(merged)


def _regression_head(features, outputs: int, dense_units: int):
    x = keras.layers.GlobalAveragePooling2D(name="regression_pool")(features)
    x = keras.layers.Dense(dense_units, activation="relu", name="regression_dense")(x)
    return keras.layers.Dense(outputs, dtype="float32", name="regression_values")(x)


# ------------------------------------------------------------------------------------------------
# the builder
# ------------------------------------------------------------------------------------------------
def _fail(argument: str, value, expected: str):
    raise ValueError(f"multitask: invalid value for argument `{argument}`. Expected {expected}. "
                     f"Received {argument}={value!r}")


def _positive_int(argument: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        _fail(argument, value, "a strictly positive integer")
    return value


def _positive_numbers(argument: str, values) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in values):
        _fail(argument, values, "a non-empty list of positive numbers")
    return [float(v) for v in values]


def _check_heads(heads) -> list[str]:
    if isinstance(heads, str):
        heads = [heads]
    if not isinstance(heads, Sequence) or not heads:
        _fail("heads", heads, f"a non-empty list drawn from {list(HEADS)}")
    unknown = [h for h in heads if h not in HEADS]
    if unknown or len(set(heads)) != len(heads):
        _fail("heads", list(heads), f"distinct names drawn from {list(HEADS)}")
    return list(heads)


@MODELS.register("multitask")
def build_multitask(input_shape, num_classes: int, *, heads=("classification",), blocks=DEFAULT_BLOCKS,
                    dense_units: int = 64, dropout: float = 0.0, segmentation_classes: Optional[int] = None,
                    detection_block: Optional[int] = None, detection_filters: int = 64,
                    detection_convs: int = 1, segmentation_filters: int = 0, anchor_size: Optional[float] = None,
                    anchor_scales=(0.75, 1.0, 1.5), anchor_aspect_ratios=(1.0,), regression_outputs: int = 1,
                    regression_target: str = "count", weighting: str = "static",
                    task_weights: Optional[Mapping[str, float]] = None, initial_log_variance=0.0,
                    name: str = "multitask", **unknown) -> MultitaskModel:
    """Image [H, W, C] -> {head: float32 output} for every head in `heads`.

    `detection_convs` 3x3 convs of `detection_filters` precede the detection outputs;
    `segmentation_filters` > 0 adds a 3x3 conv per block in the decoder. `anchor_size` is the
    detection anchors' base side in pixels (default 0.4 x the shorter image
    side), multiplied by each of `anchor_scales`; `detection_block` picks the backbone block the
    detection head reads (Python indexing; default the second to last, or the only one).
    """
    if unknown:
        _fail(sorted(unknown)[0], unknown[sorted(unknown)[0]],
              "one of: heads, blocks, dense_units, dropout, segmentation_classes, detection_block, "
              "detection_filters, detection_convs, segmentation_filters, anchor_size, anchor_scales, anchor_aspect_ratios, regression_outputs, "
              "regression_target, weighting, task_weights, initial_log_variance, name")
    heads = _check_heads(heads)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in input_shape):
        _fail("input_shape", input_shape, "(height, width, channels) of positive ints (the decoder and anchors "
                                          "need a known size)")
    _positive_int("num_classes", num_classes)
    _positive_int("dense_units", dense_units)
    _positive_int("detection_filters", detection_filters)
    _positive_int("detection_convs", detection_convs)
    if isinstance(segmentation_filters, bool) or not isinstance(segmentation_filters, int) or segmentation_filters < 0:
        _fail("segmentation_filters", segmentation_filters, "an integer >= 0 (0: 1x1 scores straight from the backbone)")
    _positive_int("regression_outputs", regression_outputs)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        _fail("dropout", dropout, "a float in [0, 1)")
    if regression_target not in REGRESSION_TARGETS:
        _fail("regression_target", regression_target, f"one of {list(REGRESSION_TARGETS)}")
    segmentation_classes = num_classes + 1 if segmentation_classes is None else _positive_int(
        "segmentation_classes", segmentation_classes)
    if not isinstance(blocks, (list, tuple)) or not blocks:
        _fail("blocks", blocks, "a non-empty list of cnn block dicts")
    parsed = [parse_block(i, raw) for i, raw in enumerate(blocks)]
    check_sizes(input_shape, parsed)

    images = keras.Input(input_shape, name="image")
    taps, x = [], images
    for n, block in enumerate(parsed, start=1):
        x = conv_block(x, n, block)
        taps.append(x)

    outputs, head_config = {}, {"heads": heads, "image_shape": list(input_shape)}
    for head in heads:
        if head == "classification":
            outputs[head] = _classification_head(taps[-1], num_classes, dense_units, float(dropout))
            head_config[head] = {"num_classes": num_classes}
        elif head == "segmentation":
            outputs[head] = _segmentation_head(input_shape[:2], taps, segmentation_classes, segmentation_filters)
            head_config[head] = {"num_classes": segmentation_classes}
        elif head == "detection":
            level = (-2 if len(taps) > 1 else -1) if detection_block is None else detection_block
            if isinstance(level, bool) or not isinstance(level, int) or not -len(taps) <= level < len(taps):
                _fail("detection_block", detection_block, f"an index into the {len(taps)} backbone blocks")
            features = taps[level]
            scales = _positive_numbers("anchor_scales", anchor_scales)
            ratios = _positive_numbers("anchor_aspect_ratios", anchor_aspect_ratios)
            size = 0.4 * min(input_shape[:2]) if anchor_size is None else _positive_numbers(
                "anchor_size", [anchor_size])[0]
            per_location = anchor_ops.anchors_per_location(scales, ratios)
            outputs[head] = _detection_head(features, num_classes, per_location, detection_filters, detection_convs)
            head_config[head] = {"num_classes": num_classes, "image_shape": list(input_shape[:2]),
                                 "feature_shape": [int(features.shape[1]), int(features.shape[2])],
                                 "anchor_size": size, "anchor_scales": scales, "anchor_aspect_ratios": ratios,
                                 "anchors_per_location": per_location}
        else:
            outputs[head] = _regression_head(taps[-1], regression_outputs, dense_units)
            head_config[head] = {"outputs": regression_outputs, "target": regression_target}

    network = keras.Model(images, outputs, name=f"{name}_network")
    weighting_layer = TaskWeighting({head: kind_of_head(head) for head in heads}, mode=weighting,
                                    weights=task_weights, initial_log_variance=initial_log_variance,
                                    dtype="float32", name="task_weighting")
    return MultitaskModel(network, weighting_layer, head_config, name=name)
