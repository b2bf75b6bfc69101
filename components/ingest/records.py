"""What an ingested record must look like, and how one becomes a checked, serialized Example.

Pure functions of a record and the ingest's rules; the Beam job (components/ingest/beam_job.py)
runs them on its workers. Every record is encoded, decoded again and checked before it is
written: a corrupt record inside a shard would cost the rest of that shard at read time
(tf.data's `ignore_errors`). The split is a hash of the example id, so a rerun puts every
example in the same split.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

import numpy as np

from components import examples as ex
from components.ingest import stats as stats_lib


@dataclass(frozen=True)
class RecordRules:
    """What a record must look like for this ingest (task, label ranges, size), and how to split."""
    task: str
    num_classes: int
    num_mask_classes: int
    ignore_value: Optional[int]
    image_size: Optional[tuple[int, int]]
    image_format: str
    split_bounds: tuple[float, float]
    """Cumulative fractions: hash < bounds[0] -> train, < bounds[1] -> eval, else test."""


def split_of(example_id: str, bounds: tuple[float, float]) -> str:
    """A stable split from the id alone: the first 8 bytes of its SHA-256 as a fraction of 2**64."""
    fraction = int.from_bytes(hashlib.sha256(example_id.encode()).digest()[:8], "big") / 2.0 ** 64
    return "train" if fraction < bounds[0] else "eval" if fraction < bounds[1] else "test"


def _resize(pixels: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    from PIL import Image

    if pixels.shape[:2] == tuple(size):
        return pixels
    squeeze = pixels.ndim == 3 and pixels.shape[-1] == 1
    image = Image.fromarray(pixels[..., 0] if squeeze else pixels)
    resized = np.asarray(image.resize((size[1], size[0]), Image.NEAREST if nearest else Image.BILINEAR))
    return resized[..., None] if squeeze else resized


def resize_record(record: dict, size: tuple[int, int]) -> dict:
    """Pixels to `size` (bilinear), masks by nearest neighbour (no new class ids); normalised boxes stay."""
    record = dict(record)
    if "frames" in record:
        record["frames"] = np.stack([_resize(np.asarray(f), size) for f in record["frames"]])
    if "image" in record:
        record["image"] = _resize(np.asarray(record["image"]), size)
    if "mask" in record:
        record["mask"] = _resize(np.asarray(record["mask"], np.uint8), size, nearest=True)
    return record


_REQUIRED = {
    "classification": ("image", "label"),
    "segmentation": ("image", "mask"),
    "detection": ("image", "boxes"),
    "multitask": ("image",),
    "video": ("frames", "label"),
}


def check_record(record: dict, rules: RecordRules) -> None:
    """Raise RecordError naming the field when a decoded record breaks the task's rules."""
    name = record.get("id", "?")
    for key in _REQUIRED[rules.task]:
        if key not in record:
            raise ex.RecordError(f"{name}: task {rules.task} needs '{key}', the record has {sorted(record)}")
    if "label" in record and not 0 <= record["label"] < rules.num_classes:
        raise ex.RecordError(f"{name}: label expected in [0, {rules.num_classes}), got {record['label']}")
    if "boxes" in record:
        boxes = np.asarray(record["boxes"], np.float32).reshape(-1, 4)
        bad = ~np.isfinite(boxes).all(axis=1) | (boxes < 0).any(axis=1) | (boxes > 1).any(axis=1) \
            | (boxes[:, 0] >= boxes[:, 2]) | (boxes[:, 1] >= boxes[:, 3])
        if bad.any():
            raise ex.RecordError(f"{name}: box {int(np.argmax(bad))} expected xmin<xmax, ymin<ymax inside [0, 1], "
                                 f"got {boxes[np.argmax(bad)].tolist()}")
        labels = np.asarray(record["box_labels"])
        if len(labels) and not ((labels >= 0) & (labels < rules.num_classes)).all():
            raise ex.RecordError(f"{name}: box labels expected in [0, {rules.num_classes}), got {labels.tolist()}")
    if "mask" in record:
        values = np.unique(record["mask"])
        outside = [int(v) for v in values if v >= rules.num_mask_classes and v != rules.ignore_value]
        if outside:
            raise ex.RecordError(f"{name}: mask ids expected in [0, {rules.num_mask_classes})"
                                 f"{'' if rules.ignore_value is None else f' or {rules.ignore_value}'}, got {outside}")
    pixels = record["frames"] if "frames" in record else record["image"]
    if rules.image_size is not None and tuple(pixels.shape[-3:-1]) != tuple(rules.image_size):
        raise ex.RecordError(f"{name}: size expected {list(rules.image_size)}, got {list(pixels.shape[-3:-1])}")


def prepare(record: dict, rules: RecordRules) -> tuple[str, bytes, dict]:
    """record -> (split, serialized Example, summary for stats), after a full decode round trip."""
    if rules.image_size is not None:
        record = resize_record(record, rules.image_size)
    serialized = ex.encode_example(record, rules.image_format)
    decoded = ex.decode_example(serialized)
    if decoded["id"] != str(record["id"]):
        raise ex.RecordError(f"{record['id']}: id did not survive encoding (decoded {decoded['id']!r})")
    original = record["frames"] if "frames" in record else record["image"]
    original = np.asarray(original)
    if original.ndim == len(decoded.get("frames", decoded.get("image")).shape) - 1:
        original = original[..., None]
    pixels = decoded["frames"] if "frames" in decoded else decoded["image"]
    if pixels.shape != original.shape:
        raise ex.RecordError(f"{record['id']}: decoded pixels have shape {pixels.shape}, expected {original.shape}")
    if rules.image_format == "png" and not np.array_equal(pixels, original):
        raise ex.RecordError(f"{record['id']}: PNG round trip changed the pixels")
    check_record(decoded, rules)
    import tensorflow as tf

    features = list(tf.train.Example.FromString(serialized).features.feature.keys())
    split = split_of(decoded["id"], rules.split_bounds)
    return split, serialized, stats_lib.summarize(decoded, split, features)


def prepare_in_order(numbered: tuple, rules: RecordRules) -> tuple:
    """(place, record) -> (place, (split, serialized, summary)): `prepare`, keeping the record's place."""
    place, record = numbered
    return place, prepare(record, rules)
