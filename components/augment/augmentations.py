"""Augmentation of one record: geometric ops that move masks and boxes with the pixels, then photometric jitter.

Pure numpy over the record dicts of components/examples/, so Beam workers build no TF graph per
record and every op can be checked by hand in tests. An augmentation is split in two steps:
`sample_plan` draws every random choice up front from one seed, and `apply_plan` is a pure
function of the record and that plan. Video clips therefore get one plan, hence the same spatial
transform on every frame, and the same (example id, copy index) always gives the same copy.

Box convention (pixel edges): a box [xmin, xmax] normalised by the width W covers pixel columns
floor(xmin * W) .. ceil(xmax * W) - 1, so a shape covering columns 3..7 of 32 has xmin 3/32 and
xmax 8/32. Flips and quarter turns map that set of columns exactly by formula. The random
resized crop cuts a window of whole pixels and scales it back to the original size by
nearest-neighbour index maps, the same map for image, mask and boxes: a box becomes the range of
output pixels whose source pixel lies inside it, so it still equals the shape's pixel extent.
Nearest resampling also keeps masks free of new class ids (no interpolation, no padding).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

_EDGE_TOLERANCE = 1e-3
"""In pixels: float32 box coordinates times the size land a hair off the pixel edge they mean."""

_LUMA = np.array([0.299, 0.587, 0.114])
"""ITU-R 601 weights: the grey an RGB pixel desaturates towards."""


# ------------------------------------------------------------------------------------------------
# seeds and ids
# ------------------------------------------------------------------------------------------------
def copy_id(example_id: str, copy_index: int) -> str:
    return f"{example_id}#aug{copy_index}"


def copy_seed(example_id: str, copy_index: int) -> int:
    """A seed that depends only on the id and the copy index (sha256, not Python's salted hash())."""
    digest = hashlib.sha256(copy_id(example_id, copy_index).encode()).digest()
    return int.from_bytes(digest[:8], "little")


# ------------------------------------------------------------------------------------------------
# the plan: every random choice of one augmented copy
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    horizontal_flip: bool = False
    vertical_flip: bool = False
    rotate90: int = 0
    """Quarter turns counter-clockwise (as np.rot90); odd only for square images, so sizes stay."""
    crop: Optional[tuple[int, int, int, int]] = None
    """(top, left, height, width) in pixels, taken after flips and turns, resized back to full size."""
    min_visible_fraction: float = 0.0
    """A cropped box keeping less of its pixel area than this is dropped with its label."""
    reverse_time: bool = False
    brightness: float = 0.0
    """Added to pixels in [0, 1]."""
    contrast: float = 1.0
    """Factor on the distance from each channel's mean (per image or frame)."""
    saturation: float = 1.0
    """Factor on the distance from the pixel's grey value (RGB only)."""
    noise_std: float = 0.0
    noise_seed: int = 0

    @property
    def photometric(self) -> bool:
        return (self.brightness != 0.0 or self.contrast != 1.0 or self.saturation != 1.0
                or self.noise_std > 0.0)


def sample_crop(height: int, width: int, scale, ratio, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A window covering `scale` of the area with aspect `ratio` (width / height), as in
    torchvision's RandomResizedCrop: ten tries, then the largest centred window within the ratios."""
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        crop_w = int(round(math.sqrt(target * aspect)))
        crop_h = int(round(math.sqrt(target / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    aspect = width / height
    if aspect < ratio[0]:
        crop_w, crop_h = width, max(1, min(height, int(round(width / ratio[0]))))
    elif aspect > ratio[1]:
        crop_h, crop_w = height, max(1, min(width, int(round(height * ratio[1]))))
    else:
        crop_h, crop_w = height, width
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def sample_plan(height: int, width: int, cfg, rng: np.random.Generator, video: bool = False) -> Plan:
    """Draw every choice of one copy from `rng`, following an AugmentSection `cfg`.

    Flips and time reversal each happen with probability 1/2; quarter turns are uniform over
    0..3 on square images and over {0, 2} otherwise (a quarter turn would change the size)."""
    plan = Plan(min_visible_fraction=float(cfg.min_visible_fraction))
    if cfg.horizontal_flip:
        plan = replace(plan, horizontal_flip=bool(rng.random() < 0.5))
    if cfg.vertical_flip:
        plan = replace(plan, vertical_flip=bool(rng.random() < 0.5))
    if cfg.rotate90:
        turns = int(rng.integers(0, 4)) if height == width else 2 * int(rng.integers(0, 2))
        plan = replace(plan, rotate90=turns)
    crop_cfg = cfg.random_resized_crop
    if crop_cfg.enabled:
        plan = replace(plan, crop=sample_crop(height, width, crop_cfg.scale, crop_cfg.ratio, rng))
    if video and cfg.reverse_time:
        plan = replace(plan, reverse_time=bool(rng.random() < 0.5))
    if cfg.brightness > 0:
        plan = replace(plan, brightness=float(rng.uniform(-cfg.brightness, cfg.brightness)))
    if cfg.contrast > 0:
        plan = replace(plan, contrast=float(rng.uniform(max(0.0, 1.0 - cfg.contrast), 1.0 + cfg.contrast)))
    if cfg.saturation > 0:
        plan = replace(plan, saturation=float(rng.uniform(max(0.0, 1.0 - cfg.saturation), 1.0 + cfg.saturation)))
    if cfg.noise_std > 0:
        plan = replace(plan, noise_std=float(cfg.noise_std), noise_seed=int(rng.integers(0, 2**63)))
    return plan


# ------------------------------------------------------------------------------------------------
# boxes (xyxy normalised, pixel edges)
# ------------------------------------------------------------------------------------------------
def pixel_extent(low: np.ndarray, high: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last pixel index (inclusive) covered by normalised edges [low, high] over `size` pixels."""
    first = np.floor(np.asarray(low, np.float64) * size + _EDGE_TOLERANCE).astype(np.int64)
    last = np.ceil(np.asarray(high, np.float64) * size - _EDGE_TOLERANCE).astype(np.int64) - 1
    return first, np.maximum(last, first)


def flip_boxes_horizontal(boxes: np.ndarray) -> np.ndarray:
    xmin, ymin, xmax, ymax = boxes.T
    return np.stack([1.0 - xmax, ymin, 1.0 - xmin, ymax], axis=-1).astype(np.float32)


def flip_boxes_vertical(boxes: np.ndarray) -> np.ndarray:
    xmin, ymin, xmax, ymax = boxes.T
    return np.stack([xmin, 1.0 - ymax, xmax, 1.0 - ymin], axis=-1).astype(np.float32)


def rotate_boxes90(boxes: np.ndarray, turns: int) -> np.ndarray:
    """Boxes under np.rot90(turns): one counter-clockwise turn sends pixel (row r, col c) of a
    W-wide image to (W - 1 - c, r), hence x' = y and y' = 1 - x."""
    for _ in range(turns % 4):
        xmin, ymin, xmax, ymax = boxes.T
        boxes = np.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)
    return np.asarray(boxes, np.float32)


def nearest_source_index(size_out: int, size_in: int) -> np.ndarray:
    """For each output pixel, the input pixel nearest its centre: floor((i + 1/2) * in / out), in integers."""
    return ((2 * np.arange(size_out, dtype=np.int64) + 1) * size_in) // (2 * size_out)


def _output_range(source_index: np.ndarray, first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Output pixels whose source pixel lies in [first, last] (source_index is non-decreasing)."""
    start = np.searchsorted(source_index, first, side="left")
    stop = np.searchsorted(source_index, last, side="right")
    return start, stop


def crop_boxes(boxes: np.ndarray, labels: np.ndarray, height: int, width: int,
               crop: tuple[int, int, int, int], min_visible_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Boxes after cutting `crop` and resizing it back to (height, width) by nearest neighbour.

    A box is clipped to the window; it is dropped with its label when no pixel of it remains or
    when its visible pixel area is below `min_visible_fraction` of its full pixel area."""
    top, left, crop_h, crop_w = crop
    if len(boxes) == 0:
        return boxes.reshape(0, 4).astype(np.float32), labels
    col0, col1 = pixel_extent(boxes[:, 0], boxes[:, 2], width)
    row0, row1 = pixel_extent(boxes[:, 1], boxes[:, 3], height)
    area = (col1 - col0 + 1) * (row1 - row0 + 1)
    vis_col0, vis_col1 = np.maximum(col0, left), np.minimum(col1, left + crop_w - 1)
    vis_row0, vis_row1 = np.maximum(row0, top), np.minimum(row1, top + crop_h - 1)
    visible = np.clip(vis_col1 - vis_col0 + 1, 0, None) * np.clip(vis_row1 - vis_row0 + 1, 0, None)
    keep = (visible > 0) & (visible >= min_visible_fraction * area)
    x0, x1 = _output_range(nearest_source_index(width, crop_w), vis_col0[keep] - left, vis_col1[keep] - left)
    y0, y1 = _output_range(nearest_source_index(height, crop_h), vis_row0[keep] - top, vis_row1[keep] - top)
    cropped = np.stack([x0 / width, y0 / height, x1 / width, y1 / height], axis=-1).astype(np.float32)
    return cropped.reshape(-1, 4), labels[keep]


# ------------------------------------------------------------------------------------------------
# pixels: image [H, W, C], mask [H, W], frames [T, H, W, C]
# ------------------------------------------------------------------------------------------------
_SPATIAL_AXES = {"image": (0, 1), "mask": (0, 1), "frames": (1, 2)}


def _geometric(array: np.ndarray, axes: tuple[int, int], plan: Plan) -> np.ndarray:
    rows, cols = axes
    if plan.horizontal_flip:
        array = np.flip(array, axis=cols)
    if plan.vertical_flip:
        array = np.flip(array, axis=rows)
    if plan.rotate90:
        array = np.rot90(array, plan.rotate90, axes=axes)
    if plan.crop is not None:
        top, left, crop_h, crop_w = plan.crop
        height, width = array.shape[rows], array.shape[cols]
        array = np.take(array, top + nearest_source_index(height, crop_h), axis=rows)
        array = np.take(array, left + nearest_source_index(width, crop_w), axis=cols)
    return np.ascontiguousarray(array)


def _photometric(pixels: np.ndarray, plan: Plan, spatial_axes: tuple[int, int]) -> np.ndarray:
    x = pixels.astype(np.float64) / 255.0
    x = x + plan.brightness
    if plan.contrast != 1.0:
        mean = x.mean(axis=spatial_axes, keepdims=True)
        x = (x - mean) * plan.contrast + mean
    if plan.saturation != 1.0 and x.shape[-1] == 3:
        grey = (x @ _LUMA)[..., None]
        x = grey + (x - grey) * plan.saturation
    if plan.noise_std > 0:
        x = x + np.random.default_rng(plan.noise_seed).normal(0.0, plan.noise_std, x.shape)
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def apply_plan(record: dict, plan: Plan) -> dict:
    """A new record: `plan` applied to the pixels, the mask and the boxes; other fields kept."""
    out = dict(record)
    pixel_key = "frames" if "frames" in record else "image"
    pixels = np.asarray(record[pixel_key])
    if pixel_key == "image" and pixels.ndim == 2:
        pixels = pixels[..., None]
    axes = _SPATIAL_AXES[pixel_key]
    height, width = pixels.shape[axes[0]], pixels.shape[axes[1]]
    if plan.rotate90 % 2 and height != width:
        raise ValueError(f"record {record.get('id')!r}: a quarter turn needs a square image, got {height}x{width}")

    pixels = _geometric(pixels, axes, plan)
    if plan.reverse_time and pixel_key == "frames":
        pixels = pixels[::-1].copy()
    if plan.photometric:
        pixels = _photometric(pixels, plan, axes)
    out[pixel_key] = pixels

    if "mask" in record:
        out["mask"] = _geometric(np.asarray(record["mask"]), _SPATIAL_AXES["mask"], plan)
    # Ordinary boxes and crowd regions (COCO iscrowd) move alike.
    for box_key, label_key in (("boxes", "box_labels"), ("crowd_boxes", "crowd_labels")):
        if box_key in record:
            out[box_key], out[label_key] = _move_boxes(record[box_key], record.get(label_key), plan, height, width)
    if "box_flags" in record and plan.crop is not None:  # a crop may drop boxes: the per-box flags no longer align
        out.pop("box_flags")
    return out


def _move_boxes(boxes, labels, plan: Plan, height: int, width: int):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels if labels is not None else np.zeros(len(boxes)), np.int64).reshape(-1)
    if plan.horizontal_flip:
        boxes = flip_boxes_horizontal(boxes)
    if plan.vertical_flip:
        boxes = flip_boxes_vertical(boxes)
    if plan.rotate90:
        boxes = rotate_boxes90(boxes, plan.rotate90)
    if plan.crop is not None:
        boxes, labels = crop_boxes(boxes, labels, height, width, plan.crop, plan.min_visible_fraction)
    return boxes, labels


def augment_record(record: dict, cfg, seed: int) -> dict:
    """One augmented copy of `record` under an AugmentSection `cfg`, fully determined by `seed`
    (use `copy_seed(id, k)`). The id is kept; the caller names the copy."""
    pixel_key = "frames" if "frames" in record else "image"
    shape = np.shape(record[pixel_key])
    height, width = (shape[1], shape[2]) if pixel_key == "frames" else (shape[0], shape[1])
    plan = sample_plan(height, width, cfg, np.random.default_rng(seed), video=pixel_key == "frames")
    return apply_plan(record, plan)
