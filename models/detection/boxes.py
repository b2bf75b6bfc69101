"""The one module that owns box formats: names, conversion, area, clipping, IoU and GIoU.

After detectron2's `BoxMode`: a format is a name, `convert(boxes, from_format, to_format)` is the
only converter, and the pairwise overlaps live beside it. Conversion is Keras's own
`keras.utils.bounding_boxes.convert_format`; this module adds our names for its formats, keeps the
input's float dtype (the COCO metrics compute in float64, as pycocotools does), and adds what
Keras lacks: GIoU, crowd IoU (intersection over the detection's area, COCO's rule for `iscrowd`
regions) and aligned (element-wise) overlaps for losses.

Formats (last axis of 4; any leading axes):
    xyxy     left, top, right, bottom          yxyx     top, left, bottom, right (tf.image)
    xywh     left, top, width, height (COCO)   cxcywh   centre x, centre y, width, height
and `rel_` versions of each, normalised by the image width (x) and height (y). Data on disk is
`rel_xyxy` (DESIGN.md). Converting between absolute and relative needs `image_shape` (H, W[, C]).

Round trips are exact wherever the arithmetic is: integer pixel boxes, and coordinates that are
multiples of a power of two (and image sides that are powers of two for absolute <-> relative);
elsewhere they agree to float rounding (one or two ulps).
"""
from __future__ import annotations

import numpy as np
from keras import ops
from keras.utils import bounding_boxes as keras_boxes

FORMATS = ("xyxy", "xywh", "cxcywh", "yxyx", "rel_xyxy", "rel_xywh", "rel_cxcywh", "rel_yxyx")
_KERAS_NAMES = {
    "xyxy": "xyxy", "xywh": "xywh", "cxcywh": "center_xywh", "yxyx": "yxyx",
    "rel_xyxy": "rel_xyxy", "rel_xywh": "rel_xywh", "rel_cxcywh": "rel_center_xywh", "rel_yxyx": "rel_yxyx",
}
_EPSILON = 1e-9


def _check_format(name: str, argument: str) -> str:
    if name not in _KERAS_NAMES:
        raise ValueError(f"Invalid value for argument `{argument}`. Expected one of {FORMATS}. Received {argument}={name!r}")
    return name


def _float_dtype(boxes) -> str:
    dtype = getattr(boxes, "dtype", None)
    name = getattr(dtype, "name", str(dtype)) if dtype is not None else "float32"
    return name if name in ("float16", "bfloat16", "float32", "float64") else "float32"


def _height_width(image_shape, from_format: str, to_format: str):
    relative = from_format.startswith("rel_") != to_format.startswith("rel_")
    if image_shape is None:
        if relative:
            raise ValueError(
                f"convert from {from_format!r} to {to_format!r}: expected image_shape (height, width[, channels]) "
                "to move between absolute and relative boxes, received image_shape=None")
        return None, None
    if len(image_shape) not in (2, 3):
        raise ValueError(f"image_shape: expected (height, width) or (height, width, channels), received {tuple(image_shape)}")
    return image_shape[0], image_shape[1]


def convert(boxes, from_format: str, to_format: str, image_shape=None):
    """Boxes [..., 4] from one format to another (a tensor of the input's float dtype)."""
    _check_format(from_format, "from_format")
    _check_format(to_format, "to_format")
    height, width = _height_width(image_shape, from_format, to_format)
    source, target = _KERAS_NAMES[from_format], _KERAS_NAMES[to_format]
    if from_format.startswith("rel_") and to_format.startswith("rel_"):
        # Same space: Keras would still ask for a height and width it does not use.
        source, target, height, width = _KERAS_NAMES[from_format[4:]], _KERAS_NAMES[to_format[4:]], None, None
    return keras_boxes.convert_format(boxes, source, target, height=height, width=width, dtype=_float_dtype(boxes))


def _corners(boxes, box_format: str, image_shape=None):
    """x1, y1, x2, y2 each [..., 1], in the space of `box_format` (relative stays relative)."""
    target = "rel_xyxy" if box_format.startswith("rel_") else "xyxy"
    xyxy = convert(boxes, box_format, target, image_shape)
    return ops.split(xyxy, 4, axis=-1)


def area(boxes, box_format: str = "xyxy", image_shape=None):
    """Area [...] of each box (0 for empty or inverted boxes), in the units of `box_format`."""
    x1, y1, x2, y2 = _corners(boxes, _check_format(box_format, "box_format"), image_shape)
    return ops.squeeze(ops.maximum(x2 - x1, 0.0) * ops.maximum(y2 - y1, 0.0), -1)


def clip(boxes, box_format: str = "rel_xyxy", image_shape=None):
    """Boxes clipped to the image: [0, 1] for relative formats, [0, W] x [0, H] for absolute ones."""
    _check_format(box_format, "box_format")
    target = "rel_xyxy" if box_format.startswith("rel_") else "xyxy"
    x1, y1, x2, y2 = ops.split(convert(boxes, box_format, target, image_shape), 4, axis=-1)
    if target == "rel_xyxy":
        high_x = high_y = 1.0
    elif image_shape is None:
        raise ValueError(f"clip: expected image_shape for absolute format {box_format!r}, received None")
    else:
        high_y, high_x = float(image_shape[0]), float(image_shape[1])
    clipped = ops.concatenate(
        [ops.clip(x1, 0.0, high_x), ops.clip(y1, 0.0, high_y), ops.clip(x2, 0.0, high_x), ops.clip(y2, 0.0, high_y)], -1)
    return convert(clipped, target, box_format, image_shape)


def _overlaps(a, b, giou: bool, crowd=None):
    """IoU (or GIoU) of broadcastable corner tuples a and b, each (x1, y1, x2, y2) of [..., 1]."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    area_a = ops.maximum(ax2 - ax1, 0.0) * ops.maximum(ay2 - ay1, 0.0)
    area_b = ops.maximum(bx2 - bx1, 0.0) * ops.maximum(by2 - by1, 0.0)
    inter_w = ops.maximum(ops.minimum(ax2, bx2) - ops.maximum(ax1, bx1), 0.0)
    inter_h = ops.maximum(ops.minimum(ay2, by2) - ops.maximum(ay1, by1), 0.0)
    inter = inter_w * inter_h
    union = area_a + area_b - inter
    if crowd is not None:
        union = ops.where(crowd, area_a + ops.zeros_like(union), union)
    iou = ops.where(inter > 0.0, inter / ops.maximum(union, _EPSILON), ops.zeros_like(inter))
    if not giou:
        return iou
    hull = (ops.maximum(ax2, bx2) - ops.minimum(ax1, bx1)) * (ops.maximum(ay2, by2) - ops.minimum(ay1, by1))
    return iou - ops.where(hull > 0.0, (hull - union) / ops.maximum(hull, _EPSILON), ops.zeros_like(hull))


def _pairwise(boxes1, boxes2, box_format, image_shape, giou, crowd=None):
    _check_format(box_format, "box_format")
    a = [ops.expand_dims(c[..., 0], -1) for c in _corners(boxes1, box_format, image_shape)]  # [..., N, 1]
    b = [ops.expand_dims(c[..., 0], -2) for c in _corners(boxes2, box_format, image_shape)]  # [..., 1, M]
    if crowd is not None:
        crowd = ops.expand_dims(ops.cast(crowd, "bool"), -2)
    return _overlaps(a, b, giou, crowd)


def pairwise_iou(boxes1, boxes2, box_format: str = "xyxy", image_shape=None, crowd=None):
    """IoU matrix [..., N, M] between boxes1 [..., N, 4] and boxes2 [..., M, 4].

    `crowd` [..., M] (bool) marks columns of boxes2 that are crowd regions: for those the overlap
    is the intersection over the area of the boxes1 box, as COCO scores a detection in a crowd.
    Leading axes broadcast, so anchors [N, 4] against a batch of boxes [B, M, 4] give [B, N, M].
    """
    return _pairwise(boxes1, boxes2, box_format, image_shape, giou=False, crowd=crowd)


def pairwise_giou(boxes1, boxes2, box_format: str = "xyxy", image_shape=None):
    """Generalised IoU matrix [..., N, M] (Rezatofighi et al. 2019): IoU - (hull - union) / hull, in [-1, 1]."""
    return _pairwise(boxes1, boxes2, box_format, image_shape, giou=True)


def aligned_iou(boxes1, boxes2, box_format: str = "xyxy", image_shape=None):
    """IoU [...] of matching pairs: boxes1[..., i, :] with boxes2[..., i, :]."""
    _check_format(box_format, "box_format")
    return ops.squeeze(_overlaps(_corners(boxes1, box_format, image_shape), _corners(boxes2, box_format, image_shape), False), -1)


def aligned_giou(boxes1, boxes2, box_format: str = "xyxy", image_shape=None):
    """GIoU [...] of matching pairs (the GIoU loss is 1 - this)."""
    _check_format(box_format, "box_format")
    return ops.squeeze(_overlaps(_corners(boxes1, box_format, image_shape), _corners(boxes2, box_format, image_shape), True), -1)


def to_numpy(boxes) -> np.ndarray:
    """A tensor from this module as a numpy array (for Beam, metrics and reports)."""
    return np.asarray(ops.convert_to_numpy(boxes))
