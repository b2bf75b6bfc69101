"""One-stage detector (RetinaNet in spirit, Lin et al. 2017): CNN blocks -> feature pyramid ->
class and box heads shared by every level, one prediction per anchor. With `backbone` (models/
backbones/) a keras.applications network gives the pyramid its maps at strides 8, 16 and 32.

`call(images)` returns the raw heads and the anchors they answer for:
    {"class_logits": [B, N, K] float32, "box_deltas": [B, N, 4] float32, "anchors": [B, N, 4] rel_xyxy}
so that the loss (models/detection/losses.py, "detection") and `decode_detections` need nothing
but this dict. `compute_loss(batch)` and `detect(images)` are the detector interface shared with
the two-stage and sliding-window detectors (models/detection/detector.py).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import keras
from keras import ops

from models.detection import anchors as anchor_ops
from models.detection import feature_pyramid
from models.detection import nms
from models.detection.losses import DetectionLoss

DEFAULT_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)


def decode_detections(outputs: dict, anchors=None, variances: Optional[Sequence[float]] = None, *,
                      score_threshold: float = 0.05, iou_threshold: float = 0.5, max_detections: int = 100,
                      max_per_class: Optional[int] = None) -> dict:
    """Raw one-stage outputs -> {"boxes" [B, D, 4] rel_xyxy, "scores", "classes", "num_detections"}.

    Deltas are decoded against `anchors` (default: outputs["anchors"]), class probabilities are
    sigmoids, and per-class NMS (models/detection/nms.py) keeps at most `max_detections` per image.
    """
    if anchors is None:
        anchors = outputs["anchors"]
    anchors = ops.convert_to_tensor(anchors, "float32")
    if len(anchors.shape) == 3:
        anchors = anchors[0]
    boxes = anchor_ops.decode(ops.cast(outputs["box_deltas"], "float32"), anchors, variances)
    scores = ops.sigmoid(ops.cast(outputs["class_logits"], "float32"))
    return nms.batched_nms(boxes, scores, max_detections=max_detections, max_per_class=max_per_class,
                           iou_threshold=iou_threshold, score_threshold=score_threshold)


def _number_list(name, values, where):
    if not isinstance(values, (list, tuple)) or not values or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in values):
        raise ValueError(f"{where}: invalid {name}={values!r}. Expected a non-empty list of positive numbers.")
    return [float(v) for v in values]


def _positive_int(name, value, where):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: invalid {name}={value!r}. Expected a strictly positive int.")
    return value


@keras.saving.register_keras_serializable(package="convpipe")
class OneStageDetector(keras.Model):
    """Anchors per level: `anchor_sizes` (pixels, one per level; default 4 x stride) times
    `anchor_scales`, at `aspect_ratios` (width / height). Heads: `head_depth` 3x3 convs of
    `fpn_filters` before the output conv; the class output's bias starts at the prior
    probability (RetinaNet's pi = 0.01) so the first steps are not swamped by background."""

    def __init__(self, image_shape, num_classes: int, blocks=feature_pyramid.DEFAULT_BLOCKS,
                 levels: Optional[int] = None, fpn_filters: int = 64, head_depth: int = 2, anchor_sizes=None,
                 anchor_scales=DEFAULT_SCALES, aspect_ratios=DEFAULT_ASPECT_RATIOS, variances=None,
                 prior_probability: float = 0.01, loss: Optional[dict] = None, backbone=None,
                 name: str = "one_stage_detector", **kwargs):
        super().__init__(name=name, **kwargs)
        where = "detector(stage=one)"
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = _positive_int("num_classes", num_classes, where)
        self.backbone = feature_pyramid.backbone_spec(backbone, blocks, where)
        self.blocks = [dict(b) for b in blocks]
        self.levels = feature_pyramid.default_levels(self.backbone) if levels is None else levels
        self.fpn_filters = _positive_int("fpn_filters", fpn_filters, where)
        if isinstance(head_depth, bool) or not isinstance(head_depth, int) or head_depth < 0:
            raise ValueError(f"{where}: invalid head_depth={head_depth!r}. Expected an int >= 0.")
        self.head_depth = head_depth
        strides = feature_pyramid.pyramid_strides(self.image_shape, self.blocks, self.levels, self.backbone, where)
        self.anchor_sizes = _number_list("anchor_sizes", anchor_sizes or [4 * s for s in strides], where)
        if len(self.anchor_sizes) != self.levels:
            raise ValueError(f"{where}: invalid anchor_sizes={self.anchor_sizes}. Expected one size per level "
                             f"({self.levels}).")
        self.anchor_scales = _number_list("anchor_scales", anchor_scales, where)
        self.aspect_ratios = _number_list("aspect_ratios", aspect_ratios, where)
        self.variances = None if variances is None else _number_list("variances", variances, where)
        if not 0.0 < prior_probability < 1.0:
            raise ValueError(f"{where}: invalid prior_probability={prior_probability!r}. Expected a number in (0, 1).")
        self.prior_probability = float(prior_probability)
        self.loss_params = dict(loss or {})
        self.detection_loss = DetectionLoss(**{"variances": self.variances, **self.loss_params})

        self.network = self._build_network()
        shapes = [tuple(out.shape[1:3]) for out in self.features.outputs]
        self.anchors = anchor_ops.generate_anchors(
            self.image_shape, shapes, self.anchor_sizes, self.anchor_scales, self.aspect_ratios)

    def _build_network(self) -> keras.Model:
        self.features = feature_pyramid.feature_network(self.image_shape, self.blocks, self.levels, self.fpn_filters,
                                                         backbone=self.backbone)
        per_location = anchor_ops.anchors_per_location(self.anchor_scales, self.aspect_ratios)
        k = self.num_classes
        prior = -math.log((1.0 - self.prior_probability) / self.prior_probability)
        class_tower = feature_pyramid.conv_tower(self.fpn_filters, self.head_depth, "class_head")
        box_tower = feature_pyramid.conv_tower(self.fpn_filters, self.head_depth, "box_head")
        class_out = keras.layers.Conv2D(per_location * k, 3, padding="same", name="class_head_out",
                                        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                                        bias_initializer=keras.initializers.Constant(prior))
        box_out = keras.layers.Conv2D(per_location * 4, 3, padding="same", name="box_head_out",
                                      kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))
        image = keras.Input(self.image_shape, name="image")
        logits, deltas = [], []
        for level, feature in enumerate(self.features(image)):
            cells = feature.shape[1] * feature.shape[2] * per_location
            logits.append(keras.layers.Reshape((cells, k), name=f"class_level{level}")(
                class_out(feature_pyramid.apply(class_tower, feature))))
            deltas.append(keras.layers.Reshape((cells, 4), name=f"box_level{level}")(
                box_out(feature_pyramid.apply(box_tower, feature))))
        outputs = {
            "class_logits": keras.layers.Activation("linear", dtype="float32", name="class_logits")(
                keras.layers.Concatenate(axis=1, name="class_concat")(logits)),
            "box_deltas": keras.layers.Activation("linear", dtype="float32", name="box_deltas")(
                keras.layers.Concatenate(axis=1, name="box_concat")(deltas)),
        }
        return keras.Model(image, outputs, name="one_stage_network")

    @property
    def num_anchors(self) -> int:
        return int(self.anchors.shape[0])

    def call(self, images, training=False):
        outputs = dict(self.network(images, training=training))
        anchors = ops.convert_to_tensor(self.anchors)
        batch = ops.shape(outputs["class_logits"])[0]
        outputs["anchors"] = ops.broadcast_to(anchors[None], (batch, self.num_anchors, 4))
        return outputs

    def compute_loss(self, batch, training: bool = True) -> dict:
        """Loss terms of one batch `(images, targets[, meta])`: {"loss", "classification", "box",
        "num_positives", "gamma"}; "loss" is what to differentiate."""
        images, targets = batch[0], batch[1]
        return self.detection_loss.components(targets, self(images, training=training))

    def detect(self, images, *, score_threshold: float = 0.05, iou_threshold: float = 0.5,
               max_detections: int = 100, max_per_class: Optional[int] = None) -> dict:
        return decode_detections(self(images, training=False), variances=self.variances,
                                 score_threshold=score_threshold, iou_threshold=iou_threshold,
                                 max_detections=max_detections, max_per_class=max_per_class)

    def get_config(self) -> dict:
        return feature_pyramid.with_backbone(self.backbone, {
                "name": self.name, "image_shape": list(self.image_shape), "num_classes": self.num_classes,
                "blocks": self.blocks, "levels": self.levels, "fpn_filters": self.fpn_filters,
                "head_depth": self.head_depth, "anchor_sizes": self.anchor_sizes, "anchor_scales": self.anchor_scales,
                "aspect_ratios": self.aspect_ratios, "variances": self.variances,
                "prior_probability": self.prior_probability, "loss": self.loss_params})
