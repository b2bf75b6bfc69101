"""The built-in source: shapes on noisy backgrounds, so every model family has data without a download.

One seed gives every task its data. A record is a pure function of (seed, index): the random
generator is seeded from both, so a record never depends on which worker drew it or in what order.

- classification: one shape; `label` is its class (index % num_classes, so classes are balanced).
- segmentation: 1..max_shapes shapes; `mask` holds 0 for background and k + 1 for shape class k.
- detection: 1..max_shapes shapes; `boxes` (xyxy, normalised) are the exact extent of each shape's
  pixels (pixel edges, so a shape covering columns 3..7 of 32 has xmin 3/32, xmax 8/32);
  `box_labels` their classes. Shapes never overlap, so a box frames exactly one shape's pixels.
- multitask: the detection image with `label` (class of the first, largest shape), `mask`, `boxes`.
- video: `frames` [T, H, W, 3] of one shape moving in one of num_classes directions; `label` is the
  direction. Every clip's middle frame is placed uniformly over the same area whatever the
  direction, and shape and colours are independent of it, so one frame cannot tell the label.

Shape classes differ in geometry only (circle, square, triangle, diamond, plus, ring); colours are
drawn independently of the class, the shape's near the complement of the background's.
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterable, Iterator

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "plus", "ring")
DIRECTIONS = ("right", "left", "down", "up", "down_right", "up_left")
_DIRECTION_VECTORS = {  # (dx, dy) per frame unit, image coordinates (y grows downwards)
    "right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1), "down_right": (1, 1), "up_left": (-1, -1),
}
TASKS = ("classification", "segmentation", "detection", "multitask", "video")
ITEMS_PER_CHUNK = 64
"""Most records per Beam item: enough to amortise per-element overhead, small enough to parallelise."""
MIN_ITEMS = 16
"""Small datasets are cut into at least this many items, so every worker gets some."""

_MIN_SHAPE_PIXELS = 4
_VIDEO_TRAVEL = 0.4
"""Distance a clip's shape travels from first to last frame, as a fraction of the image side."""


# ------------------------------------------------------------------------------------------------
# geometry: a shape is a predicate on pixel centres, in coordinates relative to its bounding square
# ------------------------------------------------------------------------------------------------
def shape_mask(shape: str, center_x: float, center_y: float, size: float, height: int, width: int) -> np.ndarray:
    """Boolean [H, W]: pixels whose centres fall inside `shape` of side `size` centred at (x, y)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    u = (xs - center_x) / (size / 2.0)
    v = (ys - center_y) / (size / 2.0)
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        inside = u * u + v * v <= 1.0
    elif shape == "square":
        inside = (au <= 0.85) & (av <= 0.85)
    elif shape == "triangle":  # apex up, flat base
        inside = (v <= 0.9) & (v >= -1.0) & (au <= (v + 1.0) / 1.9)
    elif shape == "diamond":
        inside = au + av <= 1.0
    elif shape == "plus":
        inside = ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    elif shape == "ring":
        r2 = u * u + v * v
        inside = (r2 <= 1.0) & (r2 >= 0.5 * 0.5)
    else:
        raise ValueError(f"shape: expected one of {SHAPES}, got {shape!r}")
    return inside


def pixel_box(mask: np.ndarray) -> np.ndarray:
    """The exact extent of a boolean mask's pixels, xyxy normalised by the image size (pixel edges)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    return np.array([cols[0] / width, rows[0] / height, (cols[-1] + 1) / width, (rows[-1] + 1) / height], np.float32)


# ------------------------------------------------------------------------------------------------
# drawing
# ------------------------------------------------------------------------------------------------
def _colours(rng: np.random.Generator, count: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A background colour and `count` shape colours near its complement.

    Each background channel is dark (< 0.4) or light (> 0.6) and each shape channel is its opposite
    give or take 0.15, so every channel carries the shape's edge (at least 0.05 apart, usually far
    more) while hue stays random and independent of the class. With colours drawn at random over
    the cube instead, a small CNN sits at chance for hundreds of steps before it finds the shapes.
    """
    background = np.where(rng.random(3) < 0.5, rng.uniform(0.0, 0.4, 3), rng.uniform(0.6, 1.0, 3))
    shapes = [np.clip(1.0 - background + rng.uniform(-0.15, 0.15, 3), 0.0, 1.0) for _ in range(count)]
    return background, shapes


def _render(rng: np.random.Generator, background: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]],
            height: int, width: int, noise: float) -> np.ndarray:
    """Background colour, shapes painted over it, gaussian noise on every pixel -> uint8 [H, W, 3]."""
    image = np.broadcast_to(background, (height, width, 3)).copy()
    for inside, colour in layers:
        image[inside] = colour
    image += rng.normal(0.0, noise, image.shape)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _shape_side(rng: np.random.Generator, source, image_side: int) -> int:
    low = max(_MIN_SHAPE_PIXELS, int(round(source.min_shape_size * image_side)))
    high = max(low, int(round(source.max_shape_size * image_side)))
    return int(rng.integers(low, high + 1))


def _place_shapes(rng: np.random.Generator, source, classes: list[int]) -> list[tuple[int, np.ndarray]]:
    """Non-overlapping shapes (bounding squares one pixel apart), largest first; a shape that
    cannot be placed is shrunk, and dropped only when even the smallest size does not fit."""
    side = source.image_size
    sizes = sorted((_shape_side(rng, source, side) for _ in classes), reverse=True)
    taken = np.zeros((side, side), bool)
    placed = []
    for shape_class, size in zip(classes, sizes):
        while size >= _MIN_SHAPE_PIXELS:
            spot = None
            for _ in range(30):
                x0, y0 = (int(v) for v in rng.integers(0, side - size + 1, 2))
                if not taken[max(0, y0 - 1):y0 + size + 1, max(0, x0 - 1):x0 + size + 1].any():
                    spot = (x0, y0)
                    break
            if spot is not None:
                x0, y0 = spot
                taken[y0:y0 + size, x0:x0 + size] = True
                inside = shape_mask(SHAPES[shape_class], x0 + size / 2, y0 + size / 2, size, side, side)
                placed.append((shape_class, inside))
                break
            size = int(size * 0.8)
    return placed


def _still_record(rng: np.random.Generator, source, task: str, first_class: int) -> dict:
    num_shapes = 1 if task == "classification" else int(rng.integers(1, source.max_shapes + 1))
    classes = [first_class] + [int(c) for c in rng.integers(0, source.num_classes, num_shapes - 1)]
    placed = _place_shapes(rng, source, classes)
    background, colours = _colours(rng, len(placed))
    side = source.image_size
    image = _render(rng, background, [(inside, c) for (_, inside), c in zip(placed, colours)], side, side, source.noise)
    record = {"image": image}
    if task in ("classification", "multitask"):
        record["label"] = placed[0][0]
    if task in ("segmentation", "multitask"):
        mask = np.zeros((side, side), np.uint8)
        for shape_class, inside in placed:
            mask[inside] = shape_class + 1
        record["mask"] = mask
    if task in ("detection", "multitask"):
        record["boxes"] = np.stack([pixel_box(inside) for _, inside in placed]).astype(np.float32)
        record["box_labels"] = np.array([c for c, _ in placed], np.int64)
    return record


def _video_record(rng: np.random.Generator, source, direction: int) -> dict:
    side, frames = source.image_size, source.num_frames
    travel = _VIDEO_TRAVEL * side
    size = min(_shape_side(rng, source, side), max(_MIN_SHAPE_PIXELS, int(side - travel - 2)))
    shape = SHAPES[int(rng.integers(0, source.num_classes))]
    # Frame T//2 (the one a single-frame model sees) is centred uniformly over one square for every
    # direction, so its position says nothing of the motion; for even T a centre between two frames
    # would shift that frame half a step along the motion and give the direction away.
    dx, dy = _DIRECTION_VECTORS[DIRECTIONS[direction]]
    step = travel / max(1, frames - 1)
    margin = size / 2 + (frames // 2) * step
    middle = rng.uniform(margin, max(margin, side - margin), 2)
    background, (colour,) = _colours(rng, 1)
    clip = []
    for t in range(frames):
        offset = (t - frames // 2) * step
        inside = shape_mask(shape, middle[0] + dx * offset, middle[1] + dy * offset, size, side, side)
        clip.append(_render(rng, background, [(inside, colour)], side, side, source.noise))
    return {"frames": np.stack(clip), "label": direction}


def synthetic_record(index: int, source, task: str) -> dict:
    """Record `index` of the synthetic dataset described by `source` (a SyntheticSource) for `task`."""
    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    if not 2 <= source.num_classes <= len(SHAPES):
        raise ValueError(f"num_classes: expected 2..{len(SHAPES)}, got {source.num_classes}")
    rng = np.random.default_rng([int(source.seed) & 0xFFFFFFFF, int(index)])
    first_class = int(index) % source.num_classes
    if task == "video":
        record = _video_record(rng, source, first_class)
    else:
        record = _still_record(rng, source, task, first_class)
    record["id"] = f"synthetic-{index:07d}"
    record["source"] = f"synthetic(seed={source.seed}, index={index})"
    return record


def class_names(num_classes: int, task: str) -> list[str]:
    """Label names per task: directions for video, background + shapes for segmentation, else shapes."""
    if task == "video":
        return list(DIRECTIONS[:num_classes])
    if task == "segmentation":
        return ["background", *SHAPES[:num_classes]]
    return list(SHAPES[:num_classes])


class Reader:
    """The synthetic source as a Reader (components/sources/__init__.py): items are index ranges."""

    def __init__(self, source_config, ingest_config):
        self.source = source_config
        self.task = ingest_config.task

    def class_names(self) -> list[str]:
        return class_names(self.source.num_classes, self.task)

    def list_items(self) -> list[tuple[int, int]]:
        total = self.source.num_examples
        chunk = max(1, min(ITEMS_PER_CHUNK, -(-total // MIN_ITEMS)))
        return [(start, min(start + chunk, total)) for start in range(0, total, chunk)]

    def read(self, item: Iterable[int]) -> Iterator[dict]:
        start, stop = item
        for index in range(start, stop):
            yield synthetic_record(index, self.source, self.task)

    def fingerprint(self) -> str:
        text = json.dumps({"source": self.source.model_dump(mode="json"), "task": self.task}, sort_keys=True)
        return "synthetic:" + hashlib.sha256(text.encode()).hexdigest()[:16]

    def schema_extras(self) -> dict:
        extras = {"shapes": list(SHAPES[:self.source.num_classes])}
        if self.task == "video":
            extras["num_frames"] = self.source.num_frames
            extras["directions"] = list(DIRECTIONS[:self.source.num_classes])
        if self.task == "multitask":
            extras["mask_class_names"] = ["background", *SHAPES[:self.source.num_classes]]
        return extras
