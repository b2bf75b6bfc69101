"""Two-stage detector (Faster R-CNN in spirit, Ren et al. 2015, with FPN and RoIAlign), at the
scale of a 64 x 64 image.

1. CNN blocks, or a keras.applications `backbone` at strides 8/16/32 (models/backbones/), ->
   feature pyramid (models/detection/feature_pyramid.py).
2. Region proposal network: a 3x3 conv shared by every level, then per anchor one objectness
   logit and four box deltas. Proposals: decoded anchors, NMS at `proposal_iou`, the best
   `proposals_train` (training) or `proposals_test` (inference) kept.
3. RoIAlign (models/detection/roi_align.py) of each region from its FPN level, then a small dense head:
   K + 1 logits (0 = background, class k -> k + 1) and class-agnostic deltas refining the region.

Training is joint (approximate joint training: proposals are constants for the second stage).
The RPN learns from a sample of `rpn_samples` anchors per image (at most half positive; positive
at IoU >= 0.7, negative < 0.3, the best anchor of every box positive). The second stage learns
from `roi_samples` regions per image drawn from the proposals plus the ground-truth boxes (at
most `roi_positive_fraction` of them with IoU >= 0.5). `compute_loss(batch)` runs both stages
and returns every term; there is no `train_step`: a custom loop differentiates "loss".
"""
from __future__ import annotations

from typing import Optional

import keras
from keras import ops

from models.detection import anchors as anchor_ops
from models.detection import feature_pyramid
from models.detection import nms
from models.detection.losses import sigmoid_cross_entropy, smooth_l1
from models.detection.one_stage import _number_list, _positive_int
from models.detection.roi_align import multilevel_roi_align

ROI_VARIANCES = (0.1, 0.1, 0.2, 0.2)
"""Faster R-CNN's box weights (10, 10, 5, 5) for the second stage's deltas."""


@keras.saving.register_keras_serializable(package="convpipe")
class TwoStageDetector(keras.Model):
    def __init__(self, image_shape, num_classes: int, blocks=feature_pyramid.DEFAULT_BLOCKS,
                 levels: Optional[int] = None, fpn_filters: int = 64, anchor_sizes=None, anchor_scales=(1.0, 1.5),
                 aspect_ratios=(0.5, 1.0, 2.0),
                 rpn_positive_iou: float = 0.7, rpn_negative_iou: float = 0.3, rpn_samples: int = 128,
                 proposal_iou: float = 0.7, proposals_train: int = 64, proposals_test: int = 32,
                 roi_size: int = 7, roi_samples: int = 32, roi_positive_fraction: float = 0.25,
                 roi_positive_iou: float = 0.5, head_units: int = 128, seed: int = 0, backbone=None,
                 name: str = "two_stage_detector", **kwargs):
        super().__init__(name=name, **kwargs)
        where = "detector(stage=two)"
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = _positive_int("num_classes", num_classes, where)
        self.backbone = feature_pyramid.backbone_spec(backbone, blocks, where)
        self.blocks = [dict(b) for b in blocks]
        self.levels = feature_pyramid.default_levels(self.backbone) if levels is None else levels
        self.fpn_filters = _positive_int("fpn_filters", fpn_filters, where)
        strides = feature_pyramid.pyramid_strides(self.image_shape, self.blocks, self.levels, self.backbone, where)
        self.anchor_sizes = _number_list("anchor_sizes", anchor_sizes or [4 * s for s in strides], where)
        if len(self.anchor_sizes) != self.levels:
            raise ValueError(f"{where}: invalid anchor_sizes={self.anchor_sizes}. Expected one size per level "
                             f"({self.levels}).")
        self.anchor_scales = _number_list("anchor_scales", anchor_scales, where)
        self.aspect_ratios = _number_list("aspect_ratios", aspect_ratios, where)
        for key, value in (("rpn_positive_iou", rpn_positive_iou), ("rpn_negative_iou", rpn_negative_iou),
                           ("proposal_iou", proposal_iou), ("roi_positive_fraction", roi_positive_fraction),
                           ("roi_positive_iou", roi_positive_iou)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise ValueError(f"{where}: invalid {key}={value!r}. Expected a number in (0, 1].")
        if rpn_negative_iou > rpn_positive_iou:
            raise ValueError(f"{where}: expected rpn_negative_iou <= rpn_positive_iou, "
                             f"received {rpn_negative_iou} > {rpn_positive_iou}")
        self.rpn_positive_iou, self.rpn_negative_iou = float(rpn_positive_iou), float(rpn_negative_iou)
        self.rpn_samples = _positive_int("rpn_samples", rpn_samples, where)
        self.proposal_iou = float(proposal_iou)
        self.proposals_train = _positive_int("proposals_train", proposals_train, where)
        self.proposals_test = _positive_int("proposals_test", proposals_test, where)
        self.roi_size = _positive_int("roi_size", roi_size, where)
        self.roi_samples = _positive_int("roi_samples", roi_samples, where)
        self.roi_positive_fraction = float(roi_positive_fraction)
        self.roi_positive_iou = float(roi_positive_iou)
        self.head_units = _positive_int("head_units", head_units, where)
        self.seed = int(seed)
        self.canonical_size = 4.0 * strides[0]

        self.features = feature_pyramid.feature_network(self.image_shape, self.blocks, self.levels, self.fpn_filters,
                                                        backbone=self.backbone)
        per_location = anchor_ops.anchors_per_location(self.anchor_scales, self.aspect_ratios)
        small = keras.initializers.RandomNormal(stddev=0.01)
        self.rpn_conv = keras.layers.Conv2D(self.fpn_filters, 3, padding="same", activation="relu", name="rpn_conv")
        self.rpn_objectness = keras.layers.Conv2D(per_location, 1, kernel_initializer=small, name="rpn_objectness")
        self.rpn_deltas = keras.layers.Conv2D(per_location * 4, 1, kernel_initializer=small, name="rpn_deltas")
        self.box_head = keras.Sequential([
            keras.layers.Input((self.roi_size, self.roi_size, self.fpn_filters)),
            keras.layers.Flatten(name="roi_flatten"),
            keras.layers.Dense(self.head_units, activation="relu", name="roi_fc1"),
            keras.layers.Dense(self.head_units, activation="relu", name="roi_fc2"),
        ], name="roi_head")
        self.roi_class = keras.layers.Dense(self.num_classes + 1, kernel_initializer=small, dtype="float32",
                                            name="roi_class_logits")
        self.roi_deltas = keras.layers.Dense(4, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
                                             dtype="float32", name="roi_box_deltas")
        shapes = [tuple(out.shape[1:3]) for out in self.features.outputs]
        self.anchors = anchor_ops.generate_anchors(
            self.image_shape, shapes, self.anchor_sizes, self.anchor_scales, self.aspect_ratios)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    # --------------------------------------------------------------------------------------------
    # the two stages
    # --------------------------------------------------------------------------------------------
    def _rpn(self, feature_maps):
        logits, deltas = [], []
        for feature in feature_maps:
            hidden = self.rpn_conv(feature)
            batch = ops.shape(feature)[0]
            logits.append(ops.reshape(self.rpn_objectness(hidden), (batch, -1)))
            deltas.append(ops.reshape(self.rpn_deltas(hidden), (batch, -1, 4)))
        return ops.cast(ops.concatenate(logits, 1), "float32"), ops.cast(ops.concatenate(deltas, 1), "float32")

    def _proposals(self, rpn_logits, rpn_deltas, count: int):
        """Best `count` proposals after NMS: boxes [B, count, 4] rel_xyxy, valid [B, count] bool."""
        boxes = anchor_ops.decode(rpn_deltas, self.anchors)
        result = nms.class_agnostic_nms(ops.stop_gradient(boxes), ops.stop_gradient(ops.sigmoid(rpn_logits)),
                                        max_output=count, iou_threshold=self.proposal_iou)
        valid = ops.arange(count)[None, :] < result["num_detections"][:, None]
        return result["boxes"], valid

    def _second_stage(self, feature_maps, regions, training=False):
        pooled = multilevel_roi_align(feature_maps, regions, self.image_shape, self.roi_size, self.canonical_size)
        batch, count = ops.shape(regions)[0], ops.shape(regions)[1]
        flat = ops.reshape(pooled, (-1, self.roi_size, self.roi_size, self.fpn_filters))
        hidden = self.box_head(flat, training=training)
        logits = ops.reshape(self.roi_class(hidden), (batch, count, self.num_classes + 1))
        deltas = ops.reshape(self.roi_deltas(hidden), (batch, count, 4))
        return logits, deltas

    def call(self, images, training=False):
        """Inference outputs: {"rpn_logits" [B, N], "rpn_deltas" [B, N, 4], "anchors" [B, N, 4],
        "proposals" [B, P, 4], "proposal_valid" [B, P], "class_logits" [B, P, K + 1] (0 = background),
        "box_deltas" [B, P, 4] against the proposals (ROI_VARIANCES)}."""
        feature_maps = self.features(images, training=training)
        rpn_logits, rpn_deltas = self._rpn(feature_maps)
        count = self.proposals_train if training else self.proposals_test
        proposals, valid = self._proposals(rpn_logits, rpn_deltas, count)
        class_logits, box_deltas = self._second_stage(feature_maps, proposals, training)
        batch = ops.shape(rpn_logits)[0]
        anchors = ops.broadcast_to(ops.convert_to_tensor(self.anchors)[None], (batch, self.anchors.shape[0], 4))
        return {"rpn_logits": rpn_logits, "rpn_deltas": rpn_deltas, "anchors": anchors, "proposals": proposals,
                "proposal_valid": valid, "class_logits": class_logits, "box_deltas": box_deltas}

    # --------------------------------------------------------------------------------------------
    # training
    # --------------------------------------------------------------------------------------------
    def _rpn_loss(self, rpn_logits, rpn_deltas, gt_boxes, gt_labels):
        targets = anchor_ops.anchor_targets(self.anchors, gt_boxes, gt_labels, 1, self.rpn_positive_iou,
                                            self.rpn_negative_iou, None, force_best=True)
        positive = targets["state"] == anchor_ops.POSITIVE
        negative = targets["state"] == anchor_ops.NEGATIVE
        sampled = anchor_ops.sample_balanced(positive, negative, self.rpn_samples, 0.5, self.seed_generator)
        weight = ops.cast(sampled, "float32")
        count = ops.maximum(ops.sum(weight), 1.0)
        objectness = ops.sum(sigmoid_cross_entropy(ops.cast(positive, "float32"), rpn_logits) * weight) / count
        per_anchor = ops.sum(smooth_l1(targets["box_targets"], rpn_deltas, 1.0 / 9.0), -1)
        box = ops.sum(per_anchor * weight * ops.cast(positive, "float32")) / count
        return objectness, box

    def _sample_regions(self, proposals, proposal_valid, gt_boxes, gt_labels):
        """Regions [B, R, 4] for the second stage with their labels [B, R] (0 = background),
        matched boxes [B, R, 4] and weights [B, R] (0 for padding when too few candidates)."""
        gt_labels = ops.cast(gt_labels, "int32")
        gt_valid = gt_labels >= 0
        candidates = ops.concatenate([proposals, ops.cast(gt_boxes, "float32")], 1)
        candidate_valid = ops.concatenate([proposal_valid, gt_valid], 1)
        matched, state, _ = anchor_ops.match(candidates, gt_boxes, gt_valid, self.roi_positive_iou,
                                             self.roi_positive_iou, force_best=False)
        positive = (state == anchor_ops.POSITIVE) & candidate_valid
        negative = (state == anchor_ops.NEGATIVE) & candidate_valid
        sampled = anchor_ops.sample_balanced(positive, negative, self.roi_samples, self.roi_positive_fraction,
                                             self.seed_generator)
        count = min(self.roi_samples, int(candidates.shape[1]))
        # The sampled candidates first (at most `count` of them), in a fixed-size tensor.
        order = ops.top_k(ops.cast(sampled, "float32") + ops.cast(positive, "float32") * 0.5, count)[1]
        regions = ops.take_along_axis(candidates, order[..., None], axis=1)
        weights = ops.cast(ops.take_along_axis(sampled, order, axis=1), "float32")
        is_positive = ops.take_along_axis(positive, order, axis=1)
        matched = ops.take_along_axis(matched, order, axis=1)
        labels = ops.where(is_positive, ops.take_along_axis(gt_labels, matched, axis=1) + 1, 0)
        matched_boxes = anchor_ops.gather_boxes(ops.cast(gt_boxes, "float32"), matched)
        return ops.stop_gradient(regions), labels, matched_boxes, weights

    def compute_loss(self, batch, training: bool = True) -> dict:
        """Loss terms of one batch `(images, targets[, meta])`: {"loss", "rpn_objectness", "rpn_box",
        "roi_class", "roi_box", "roi_positives"}; "loss" is their sum, the one to differentiate."""
        images, targets = batch[0], batch[1]
        gt_boxes, gt_labels = targets["boxes"], targets["labels"]
        feature_maps = self.features(images, training=training)
        rpn_logits, rpn_deltas = self._rpn(feature_maps)
        rpn_objectness, rpn_box = self._rpn_loss(rpn_logits, rpn_deltas, gt_boxes, gt_labels)

        proposals, valid = self._proposals(rpn_logits, rpn_deltas, self.proposals_train)
        regions, labels, matched_boxes, weights = self._sample_regions(proposals, valid, gt_boxes, gt_labels)
        class_logits, box_deltas = self._second_stage(feature_maps, regions, training)
        count = ops.maximum(ops.sum(weights), 1.0)
        log_probs = ops.log_softmax(class_logits, axis=-1)
        class_loss = -ops.sum(ops.squeeze(ops.take_along_axis(log_probs, labels[..., None], axis=-1), -1) * weights) / count
        box_targets = ops.stop_gradient(anchor_ops.encode(matched_boxes, regions, ROI_VARIANCES))
        positive = ops.cast(labels > 0, "float32") * weights
        box_loss = ops.sum(ops.sum(smooth_l1(box_targets, box_deltas, 1.0), -1) * positive) / count
        total = rpn_objectness + rpn_box + class_loss + box_loss
        return {"loss": total, "rpn_objectness": rpn_objectness, "rpn_box": rpn_box, "roi_class": class_loss,
                "roi_box": box_loss, "roi_positives": ops.sum(positive)}

    # --------------------------------------------------------------------------------------------
    # inference
    # --------------------------------------------------------------------------------------------
    def detect(self, images, *, score_threshold: float = 0.05, iou_threshold: float = 0.5,
               max_detections: int = 100, max_per_class: Optional[int] = None) -> dict:
        """Boxes refined from the proposals, scored by the softmax of their class (background
        dropped), per-class NMS: {"boxes" rel_xyxy, "scores", "classes", "num_detections"}."""
        outputs = self(images, training=False)
        boxes = anchor_ops.decode(outputs["box_deltas"], outputs["proposals"], ROI_VARIANCES)
        scores = ops.softmax(outputs["class_logits"], axis=-1)[..., 1:]
        scores = scores * ops.cast(outputs["proposal_valid"], "float32")[..., None]
        return nms.batched_nms(boxes, scores, max_detections=max_detections, max_per_class=max_per_class,
                               iou_threshold=iou_threshold, score_threshold=score_threshold)

    def get_config(self) -> dict:
        return feature_pyramid.with_backbone(self.backbone, {
                "name": self.name, "image_shape": list(self.image_shape), "num_classes": self.num_classes,
                "blocks": self.blocks, "levels": self.levels, "fpn_filters": self.fpn_filters,
                "anchor_sizes": self.anchor_sizes, "anchor_scales": self.anchor_scales,
                "aspect_ratios": self.aspect_ratios, "rpn_positive_iou": self.rpn_positive_iou,
                "rpn_negative_iou": self.rpn_negative_iou, "rpn_samples": self.rpn_samples,
                "proposal_iou": self.proposal_iou, "proposals_train": self.proposals_train,
                "proposals_test": self.proposals_test, "roi_size": self.roi_size, "roi_samples": self.roi_samples,
                "roi_positive_fraction": self.roi_positive_fraction, "roi_positive_iou": self.roi_positive_iou,
                "head_units": self.head_units, "seed": self.seed})
