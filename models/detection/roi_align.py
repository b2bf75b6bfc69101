"""RoIAlign (He et al. 2017) through `tf.image.crop_and_resize`, with the half-pixel alignment right.

`crop_and_resize` puts normalised coordinate 0 on the first pixel's centre and 1 on the last
one's, and samples `crop_size` points from edge to edge. RoIAlign wants, for a box in image
coordinates, `sampling_ratio` points at the centres of equal sub-bins, read off a feature map whose
cell i covers [i / h, (i + 1) / h] of the image. `crop_coordinates` rewrites a box so that
`crop_and_resize` samples exactly those points; averaging each `sampling_ratio` x
`sampling_ratio` group then gives RoIAlign's bins. Points outside the map read zero (the
extrapolation value), where detectron2 clamps to the edge; at this scale the difference is a
boundary effect only.
"""
from __future__ import annotations

import tensorflow as tf

from models.detection import boxes as box_ops


def crop_coordinates(boxes, map_height, map_width, samples_y: int, samples_x: int):
    """rel_xyxy boxes [..., 4] -> `crop_and_resize` boxes (y1, x1, y2, x2) whose `samples` points
    are the centres of equal sub-bins of each box on a map of the given size."""
    x1, y1, x2, y2 = tf.unstack(tf.cast(boxes, tf.float32), axis=-1)
    map_height = tf.cast(map_height, tf.float32)
    map_width = tf.cast(map_width, tf.float32)

    def axis(low, high, size, samples):
        # first and last sample centres, in feature-map pixel-centre units (cell i centred at i)
        step = (high - low) / samples
        first = (low + 0.5 * step) * size - 0.5
        last = (high - 0.5 * step) * size - 0.5
        scale = tf.maximum(size - 1.0, 1.0)
        return first / scale, last / scale

    cy1, cy2 = axis(y1, y2, map_height, samples_y)
    cx1, cx2 = axis(x1, x2, map_width, samples_x)
    return tf.stack([cy1, cx1, cy2, cx2], axis=-1)


def roi_align(feature_map, boxes, output_size: int, sampling_ratio: int = 2):
    """feature_map [B, h, w, C], boxes [B, R, 4] rel_xyxy -> pooled [B, R, size, size, C]."""
    if output_size < 1 or sampling_ratio < 1:
        raise ValueError(f"roi_align: expected output_size >= 1 and sampling_ratio >= 1, "
                         f"received output_size={output_size}, sampling_ratio={sampling_ratio}")
    shape = tf.shape(boxes)
    batch, rois = shape[0], shape[1]
    samples = output_size * sampling_ratio
    map_shape = tf.shape(feature_map)
    flat = tf.reshape(box_ops.clip(boxes, "rel_xyxy"), [-1, 4])
    crops = tf.image.crop_and_resize(
        feature_map, crop_coordinates(flat, map_shape[1], map_shape[2], samples, samples),
        tf.repeat(tf.range(batch), rois), [samples, samples], method="bilinear")
    if sampling_ratio > 1:
        crops = tf.nn.avg_pool2d(crops, sampling_ratio, sampling_ratio, "VALID")
    channels = feature_map.shape[-1] if feature_map.shape[-1] is not None else map_shape[3]
    return tf.reshape(crops, [batch, rois, output_size, output_size, channels])


def pyramid_level(boxes, image_shape, num_levels: int, canonical_size: float):
    """FPN's level per box (Lin et al. 2017, eq. 1), counted from the finest level: a box of side
    under 2 * `canonical_size` pixels takes level 0, each doubling of the side one level more."""
    area = box_ops.area(boxes, "rel_xyxy") * float(image_shape[0]) * float(image_shape[1])
    side = tf.sqrt(tf.maximum(area, 1e-6))
    level = tf.floor(tf.math.log(side / canonical_size) / tf.math.log(2.0))
    return tf.cast(tf.clip_by_value(level, 0.0, float(num_levels - 1)), tf.int32)


def multilevel_roi_align(feature_maps, boxes, image_shape, output_size: int, canonical_size: float,
                         sampling_ratio: int = 2):
    """RoIAlign from the pyramid level each box is assigned to: [B, R, size, size, C]."""
    level = pyramid_level(boxes, image_shape, len(feature_maps), canonical_size)
    pooled = None
    for k, feature_map in enumerate(feature_maps):
        crops = roi_align(feature_map, boxes, output_size, sampling_ratio)
        pooled = crops if pooled is None else tf.where((level == k)[..., None, None, None], crops, pooled)
    return pooled
