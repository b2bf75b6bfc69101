"""A record dict <-> a serialized tf.train.Example, checked field by field on the way in, so a
bad record fails at ingest (to the dead letter) instead of at read time."""
from __future__ import annotations

from typing import Any

import numpy as np

from components.examples.images import decode_image, decode_mask, encode_image
from components.examples.keys import (BOX_CROWD, BOX_FLAGS, BOX_KEYS, BOX_LABEL, CHANNELS, HEIGHT, ID, IMAGE, IMAGE_FORMAT, LABEL,
                                       MASK, NUM_FRAMES, RecordError, SOURCE, VIDEO, VIDEO_LABEL, WIDTH)


def _bytes(values):
    import tensorflow as tf
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(values):
    import tensorflow as tf
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values):
    import tensorflow as tf
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def encode_example(record: dict, image_format: str = "png") -> bytes:
    """A record dict -> serialized tf.train.Example. Raises RecordError naming the bad field."""
    import tensorflow as tf

    if not record.get("id"):
        raise RecordError("example/id: expected a non-empty string")
    feature = {ID: _bytes([str(record["id"]).encode()]), SOURCE: _bytes([str(record.get("source", "")).encode()])}
    if "frames" in record:
        frames = np.asarray(record["frames"])
        if frames.ndim != 4:
            raise RecordError(f"frames: expected [T, H, W, C], got shape {frames.shape}")
        feature[VIDEO] = _bytes([encode_image(f, image_format) for f in frames])
        feature[NUM_FRAMES] = _ints([frames.shape[0]])
        feature[HEIGHT], feature[WIDTH], feature[CHANNELS] = (_ints([d]) for d in frames.shape[1:])
        feature[IMAGE_FORMAT] = _bytes([image_format.encode()])
        if "label" in record:
            feature[VIDEO_LABEL] = _ints([record["label"]])
    else:
        image = np.asarray(record["image"])
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3:
            raise RecordError(f"image: expected [H, W, C], got shape {image.shape}")
        feature[IMAGE] = _bytes([encode_image(image, image_format)])
        feature[IMAGE_FORMAT] = _bytes([image_format.encode()])
        feature[HEIGHT], feature[WIDTH], feature[CHANNELS] = (_ints([d]) for d in image.shape)
        if "label" in record:
            feature[LABEL] = _ints([record["label"]])
        if "mask" in record:
            mask = np.asarray(record["mask"], dtype=np.uint8)
            if mask.shape[:2] != image.shape[:2]:
                raise RecordError(f"mask: expected size {image.shape[:2]} like the image, got {mask.shape[:2]}")
            feature[MASK] = _bytes([encode_image(mask, "png")])
        if "boxes" in record:
            boxes = np.asarray(record["boxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(record.get("box_labels", []), dtype=np.int64).reshape(-1)
            if len(labels) != len(boxes):
                raise RecordError(f"box_labels: expected {len(boxes)} labels, one per box, got {len(labels)}")
            crowd = _crowd_part(record)
            if crowd is not None:
                boxes, labels = np.concatenate([boxes, crowd[0]]), np.concatenate([labels, crowd[1]])
                feature[BOX_CROWD] = _ints([0] * (len(boxes) - len(crowd[1])) + [1] * len(crowd[1]))
            for key, column in zip(BOX_KEYS, boxes.T):
                feature[key] = _floats(column)
            feature[BOX_LABEL] = _ints(labels)
            for name, values in record.get("box_flags", {}).items():
                values = np.asarray(values, dtype=np.int64).reshape(-1)
                if name not in BOX_FLAGS or len(values) != len(boxes):
                    raise RecordError(f"box_flags.{name}: expected one of {sorted(BOX_FLAGS)} with {len(boxes)} "
                                      f"values (boxes, then crowd boxes), got {len(values)}")
                feature[BOX_FLAGS[name]] = _ints(values)
    # deterministic=True: a map's entries in key order, so the same record is the same bytes in
    # every process (the default order follows Python's per-process hash seed), and the shards,
    # written in the order of these bytes' digests (ordered_shards.py), are the same files.
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def _crowd_part(record: dict):
    """(boxes [C, 4], labels [C]) of the record's crowd regions, checked; None when it has none."""
    if "crowd_boxes" not in record:
        return None
    boxes = np.asarray(record["crowd_boxes"], dtype=np.float32).reshape(-1, 4)
    if "crowd_labels" not in record:
        raise RecordError(f"crowd_labels: expected one class label per crowd box ({len(boxes)}), the record has none")
    labels = np.asarray(record["crowd_labels"], dtype=np.int64).reshape(-1)
    if len(labels) != len(boxes):
        raise RecordError(f"crowd_labels: expected {len(boxes)} labels, one per crowd box, got {len(labels)}")
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes < 0).any(axis=1) | (boxes > 1).any(axis=1) \
        | (boxes[:, 0] >= boxes[:, 2]) | (boxes[:, 1] >= boxes[:, 3])
    if bad.any():
        raise RecordError(f"crowd_boxes: box {int(np.argmax(bad))} expected xmin<xmax, ymin<ymax inside [0, 1], "
                          f"got {boxes[np.argmax(bad)].tolist()}")
    return (boxes, labels) if len(boxes) else None


def decode_example(serialized: bytes) -> dict:
    """Serialized Example -> record dict with decoded pixels (numpy; used by Beam stages and tests)."""
    import tensorflow as tf

    example = tf.train.Example.FromString(serialized)
    f = example.features.feature

    def one(key, kind="int64_list"):
        values = getattr(f[key], kind).value
        return values[0] if values else None

    record: dict[str, Any] = {"id": one(ID, "bytes_list").decode(), "source": one(SOURCE, "bytes_list").decode()}
    channels = one(CHANNELS)
    if VIDEO in f:
        record["frames"] = np.stack([decode_image(b, channels) for b in f[VIDEO].bytes_list.value])
        if VIDEO_LABEL in f:
            record["label"] = int(one(VIDEO_LABEL))
        return record
    record["image"] = decode_image(one(IMAGE, "bytes_list"), channels)
    if LABEL in f:
        record["label"] = int(one(LABEL))
    if MASK in f:
        record["mask"] = decode_mask(one(MASK, "bytes_list"))
    if BOX_LABEL in f:
        columns = [np.asarray(f[k].float_list.value, dtype=np.float32) for k in BOX_KEYS]
        boxes = np.stack(columns, axis=-1).reshape(-1, 4)
        labels = np.asarray(f[BOX_LABEL].int64_list.value, dtype=np.int64)
        crowd = np.asarray(f[BOX_CROWD].int64_list.value, dtype=bool) if BOX_CROWD in f else np.zeros(len(labels), bool)
        if len(crowd) != len(labels):
            raise RecordError(f"{record['id']}: {BOX_CROWD} expected {len(labels)} flags, one per box, got {len(crowd)}")
        record["boxes"], record["box_labels"] = boxes[~crowd], labels[~crowd]
        if crowd.any():
            record["crowd_boxes"], record["crowd_labels"] = boxes[crowd], labels[crowd]
        flags = {name: np.asarray(f[key].int64_list.value, dtype=np.int64) for name, key in BOX_FLAGS.items() if key in f}
        if flags:
            record["box_flags"] = flags
    return record
