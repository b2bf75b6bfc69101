"""Sliding-window detector: the classic baseline the learned detectors are measured against.

A small classifier of `window` x `window` crops into K + 1 classes (0 = background, class k ->
k + 1) is built from 'valid' 3x3 convs and 2x2 pools ending in a conv as large as what is left,
so its receptive field is exactly one window and it runs fully convolutionally: on a larger image
each output cell scores the window at (stride * column, stride * row). Run on an image pyramid
(`scales`), every cell is a square box of side window / scale; cells whose best object class
passes the score threshold become detections, merged by per-class NMS.

Training (`compute_loss(batch)`) needs no separate data: from every image it crops the
ground-truth boxes made square, jittered copies of them, and random squares over the pyramid's
range of sizes, labels each by its best IoU with a box (>= `positive_iou`: that box's class;
< `negative_iou`: background; between: not used), resizes each crop to the window with the same
half-pixel sampling RoIAlign uses, and applies softmax cross-entropy.
"""
from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf
from keras import ops

from models.detection import anchors as anchor_ops
from models.detection import boxes as box_ops
from models.detection import nms
from models.detection.one_stage import _number_list, _positive_int
from models.detection.roi_align import crop_coordinates


@keras.saving.register_keras_serializable(package="convpipe")
class SlidingWindowDetector(keras.Model):
    def __init__(self, image_shape, num_classes: int, window: int = 16, filters=(32,), hidden: int = 64,
                 scales=(1.0, 0.75, 0.5), positive_iou: float = 0.5, negative_iou: float = 0.3,
                 random_windows: int = 16, jitter: float = 0.1, seed: int = 0,
                 name: str = "sliding_window_detector", **kwargs):
        super().__init__(name=name, **kwargs)
        where = "detector(stage=sliding_window)"
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = _positive_int("num_classes", num_classes, where)
        self.window = _positive_int("window", window, where)
        self.filters = [_positive_int(f"filters[{i}]", f, where) for i, f in enumerate(filters)]
        self.hidden = _positive_int("hidden", hidden, where)
        self.scales = _number_list("scales", scales, where)
        if not 0.0 <= negative_iou <= positive_iou <= 1.0:
            raise ValueError(f"{where}: expected 0 <= negative_iou <= positive_iou <= 1, "
                             f"received negative_iou={negative_iou}, positive_iou={positive_iou}")
        self.positive_iou, self.negative_iou = float(positive_iou), float(negative_iou)
        self.random_windows = _positive_int("random_windows", random_windows, where)
        if not 0.0 <= jitter < 0.5:
            raise ValueError(f"{where}: invalid jitter={jitter!r}. Expected a number in [0, 0.5).")
        self.jitter = float(jitter)
        self.seed = int(seed)

        size, layers = self.window, []
        for i, f in enumerate(self.filters):
            if size - 2 < 2 or (size - 2) % 2:
                raise ValueError(
                    f"{where}: window={self.window} with {len(self.filters)} conv/pool blocks leaves {size} pixels "
                    f"before block {i}. Expected an even size >= 4 at every block (each takes 2 by a valid 3x3 "
                    f"conv, then halves), so the receptive field stays exactly one window.")
            layers += [keras.layers.Conv2D(f, 3, activation="relu", name=f"window_conv{i}"),
                       keras.layers.MaxPooling2D(2, name=f"window_pool{i}")]
            size = (size - 2) // 2
        self.stride = 2 ** len(self.filters)
        layers += [keras.layers.Conv2D(self.hidden, size, activation="relu", name="window_fc"),
                   keras.layers.Conv2D(self.num_classes + 1, 1, dtype="float32", name="window_logits")]
        self.classifier = keras.Sequential([keras.layers.Input((None, None, self.image_shape[2])), *layers],
                                           name="window_classifier")
        self.pyramid = []
        for scale in self.scales:
            height, width = round(self.image_shape[0] * scale), round(self.image_shape[1] * scale)
            if min(height, width) < self.window:
                raise ValueError(f"{where}: scale {scale} makes the {self.image_shape[0]}x{self.image_shape[1]} image "
                                 f"{height}x{width}, smaller than the {self.window}-pixel window. Expected larger scales.")
            self.pyramid.append((height, width))
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    # --------------------------------------------------------------------------------------------
    def window_boxes(self, height: int, width: int):
        """rel_xyxy boxes [h' * w', 4] of the classifier's output cells on a height x width image."""
        rows = (height - self.window) // self.stride + 1
        cols = (width - self.window) // self.stride + 1
        y0, x0 = tf.meshgrid(tf.range(rows, dtype=tf.float32) * self.stride,
                             tf.range(cols, dtype=tf.float32) * self.stride, indexing="ij")
        pixels = tf.stack([x0, y0, x0 + self.window, y0 + self.window], -1)
        return tf.reshape(box_ops.convert(pixels, "xyxy", "rel_xyxy", (height, width)), [-1, 4])

    def call(self, images, training=False):
        """Every window of every scale: {"boxes" [B, W, 4] rel_xyxy, "class_logits" [B, W, K + 1]}."""
        all_boxes, all_logits = [], []
        batch = ops.shape(images)[0]
        for height, width in self.pyramid:
            # Plain bilinear at half-pixel centres: the sampling the training crops use.
            scaled = images if (height, width) == self.image_shape[:2] else tf.image.resize(images, (height, width))
            logits = self.classifier(scaled, training=training)
            all_logits.append(ops.reshape(logits, (batch, -1, self.num_classes + 1)))
            boxes = self.window_boxes(height, width)
            all_boxes.append(ops.broadcast_to(boxes[None], (batch, boxes.shape[0], 4)))
        return {"boxes": ops.concatenate(all_boxes, 1), "class_logits": ops.cast(ops.concatenate(all_logits, 1), "float32")}

    def detect(self, images, *, score_threshold: float = 0.05, iou_threshold: float = 0.5,
               max_detections: int = 100, max_per_class: Optional[int] = None) -> dict:
        outputs = self(images, training=False)
        scores = ops.softmax(outputs["class_logits"], axis=-1)[..., 1:]
        return nms.batched_nms(outputs["boxes"], scores, max_detections=max_detections, max_per_class=max_per_class,
                               iou_threshold=iou_threshold, score_threshold=score_threshold)

    # --------------------------------------------------------------------------------------------
    def _training_windows(self, gt_boxes, gt_valid):
        """Square windows [B, 2M + R, 4] rel_xyxy: the boxes, jittered boxes, random squares."""
        height, width = float(self.image_shape[0]), float(self.image_shape[1])
        cx, cy, w, h = ops.split(box_ops.convert(gt_boxes, "rel_xyxy", "cxcywh", self.image_shape), 4, -1)
        side = ops.maximum(w, h)
        square = ops.concatenate([cx, cy, side, side], -1)
        noise = keras.random.uniform(ops.shape(square), -self.jitter, self.jitter, seed=self.seed_generator)
        jittered = square + noise * ops.concatenate([side, side, side, side], -1)
        batch = ops.shape(gt_boxes)[0]
        low, high = self.window / max(self.scales), self.window / min(self.scales)
        sides = keras.random.uniform((batch, self.random_windows, 1), low, high, seed=self.seed_generator)
        centres = keras.random.uniform((batch, self.random_windows, 2), 0.0, 1.0, seed=self.seed_generator)
        centres = centres * ops.convert_to_tensor([width, height])
        random = ops.concatenate([centres, sides, sides], -1)
        windows = ops.concatenate([square, jittered, random], 1)
        valid = ops.concatenate([gt_valid, gt_valid, ops.ones((batch, self.random_windows), "bool")], 1)
        return box_ops.convert(windows, "cxcywh", "rel_xyxy", self.image_shape), valid

    def compute_loss(self, batch, training: bool = True) -> dict:
        """Loss terms of one batch `(images, targets[, meta])`: {"loss", "accuracy", "windows", "positives"}."""
        images, targets = batch[0], batch[1]
        gt_labels = ops.cast(targets["labels"], "int32")
        gt_valid = gt_labels >= 0
        gt_boxes = ops.cast(targets["boxes"], "float32")
        windows, valid = self._training_windows(gt_boxes, gt_valid)
        matched, state, _ = anchor_ops.match(windows, gt_boxes, gt_valid, self.positive_iou, self.negative_iou,
                                             force_best=False)
        labels = ops.where(state == anchor_ops.POSITIVE, ops.take_along_axis(gt_labels, matched, axis=1) + 1, 0)
        weights = ops.cast(valid & (state != anchor_ops.IGNORE), "float32")
        shape = tf.shape(windows)
        flat = tf.reshape(windows, [-1, 4])
        crops = tf.image.crop_and_resize(
            tf.cast(images, tf.float32),
            crop_coordinates(flat, self.image_shape[0], self.image_shape[1], self.window, self.window),
            tf.repeat(tf.range(shape[0]), shape[1]), [self.window, self.window])
        logits = ops.reshape(self.classifier(crops, training=training), (shape[0], shape[1], self.num_classes + 1))
        log_probs = ops.log_softmax(logits, -1)
        true_log_prob = ops.squeeze(ops.take_along_axis(log_probs, labels[..., None], axis=-1), -1)
        count = ops.maximum(ops.sum(weights), 1.0)
        correct = ops.cast(ops.argmax(logits, -1) == labels, "float32")
        return {"loss": -ops.sum(true_log_prob * weights) / count, "accuracy": ops.sum(correct * weights) / count,
                "windows": ops.sum(weights), "positives": ops.sum(weights * ops.cast(labels > 0, "float32"))}

    def get_config(self) -> dict:
        return {"name": self.name, "image_shape": list(self.image_shape), "num_classes": self.num_classes,
                "window": self.window, "filters": self.filters, "hidden": self.hidden, "scales": self.scales,
                "positive_iou": self.positive_iou, "negative_iou": self.negative_iou,
                "random_windows": self.random_windows, "jitter": self.jitter, "seed": self.seed}
