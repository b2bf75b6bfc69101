"""The one place that knows the Example feature keys: encode, parse, decode, and the tf.data reader.

Every stage that reads or writes Examples goes through this module, so the data contract of
DESIGN.md (TF Object Detection API keys, gzip TFRecord shards per split, `schema.json`) lives in
one file. A record, before encoding and after decoding, is a plain dict:

    id: str, source: str,
    image: uint8 [H, W, C]                      (all tasks but video)
    label: int                                  (classification, video)
    mask: uint8 [H, W] class ids                (segmentation)
    boxes: float32 [N, 4] xmin, ymin, xmax, ymax normalised to [0, 1]; box_labels: int64 [N]
    crowd_boxes: float32 [C, 4]; crowd_labels: int64 [C]   (detection, optional: COCO `iscrowd`
                                                regions, never training targets, matched as
                                                "ignore" by the evaluation)
    frames: uint8 [T, H, W, C]                  (video)
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

SPLITS = ("train", "eval", "test")
SHARD_SUFFIX = ".tfrecord.gz"
SCHEMA_FILE = "schema.json"
STATS_FILE = "stats.json"
DEAD_LETTER_FILE = "dead_letter.jsonl"

ID = "example/id"
SOURCE = "example/source"
IMAGE = "image/encoded"
IMAGE_FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
CHANNELS = "image/channels"
LABEL = "image/class/label"
MASK = "image/segmentation/class/encoded"
BOX_KEYS = ("image/object/bbox/xmin", "image/object/bbox/ymin", "image/object/bbox/xmax", "image/object/bbox/ymax")
BOX_LABEL = "image/object/class/label"
BOX_CROWD = "image/object/is_crowd"
"""int64 per box, 1 for a crowd region (TF Object Detection API key). Crowd boxes are stored after
the others in the same bbox/label lists; the key is written only when a record has crowd boxes."""
VIDEO = "video/encoded"
NUM_FRAMES = "video/num_frames"
VIDEO_LABEL = "video/class/label"

MAX_BOXES = 32
"""Boxes per image after padding in the reader (detection targets have a static shape)."""


class RecordError(ValueError):
    """A record that cannot become a valid Example; the message says which field and why."""


# ------------------------------------------------------------------------------------------------
# image bytes (PIL on the Beam side: no TF graph per record)
# ------------------------------------------------------------------------------------------------
def encode_image(pixels: np.ndarray, image_format: str = "png") -> bytes:
    from PIL import Image

    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise RecordError(f"image: expected uint8 pixels, got {pixels.dtype}")
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    buffer = io.BytesIO()
    if image_format == "png":
        Image.fromarray(pixels).save(buffer, format="PNG")
    elif image_format == "jpeg":
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    else:
        raise RecordError(f"image/format: expected 'png' or 'jpeg', got {image_format!r}")
    return buffer.getvalue()


def decode_image(data: bytes, channels: Optional[int] = None) -> np.ndarray:
    """Decode PNG/JPEG/GIF/BMP bytes fully (a truncated file raises instead of returning grey)."""
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if channels == 1:
                image = image.convert("L")
            elif channels == 3 or (channels is None and image.mode not in ("L",)):
                image = image.convert("RGB")
            pixels = np.asarray(image, dtype=np.uint8)
    except Exception as exc:  # PIL raises many types for bad bytes
        raise RecordError(f"image cannot be decoded: {exc}") from None
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return pixels


def decode_mask(data: bytes) -> np.ndarray:
    """A PNG of class ids (palette PNGs keep their indices) -> uint8 [H, W]."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode not in ("L", "P"):
                raise RecordError(f"mask: expected a single-channel or palette PNG, got mode {image.mode}")
            return np.asarray(image, dtype=np.uint8)
    except RecordError:
        raise
    except Exception as exc:
        raise RecordError(f"mask cannot be decoded: {exc}") from None


# ------------------------------------------------------------------------------------------------
# record <-> tf.train.Example
# ------------------------------------------------------------------------------------------------
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
    return record


# ------------------------------------------------------------------------------------------------
# the artifact on disk
# ------------------------------------------------------------------------------------------------
def shard_pattern(examples_dir: str | Path, split: str) -> str:
    return str(Path(examples_dir) / split / f"data-*{SHARD_SUFFIX}")


def shard_files(examples_dir: str | Path, split: str) -> list[str]:
    return sorted(str(p) for p in (Path(examples_dir) / split).glob(f"data-*{SHARD_SUFFIX}"))


def read_schema(examples_dir: str | Path) -> dict:
    path = Path(examples_dir) / SCHEMA_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: Examples artifact has no {SCHEMA_FILE}") from None


def iter_records(examples_dir: str | Path, split: str):
    """Yields decoded record dicts of one split (eager, for validation, tests and small reports)."""
    import tensorflow as tf

    for path in shard_files(examples_dir, split):
        for serialized in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            yield decode_example(serialized)


# ------------------------------------------------------------------------------------------------
# tf.data: parse and decode in the graph
# ------------------------------------------------------------------------------------------------
def feature_spec(task: str) -> dict:
    import tensorflow as tf

    spec = {
        ID: tf.io.FixedLenFeature([], tf.string),
        SOURCE: tf.io.FixedLenFeature([], tf.string, default_value=""),
        HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        WIDTH: tf.io.FixedLenFeature([], tf.int64),
        CHANNELS: tf.io.FixedLenFeature([], tf.int64),
    }
    if task == "video":
        spec[VIDEO] = tf.io.VarLenFeature(tf.string)
        spec[NUM_FRAMES] = tf.io.FixedLenFeature([], tf.int64)
        spec[VIDEO_LABEL] = tf.io.FixedLenFeature([], tf.int64, default_value=-1)
        return spec
    spec[IMAGE] = tf.io.FixedLenFeature([], tf.string)
    spec[LABEL] = tf.io.FixedLenFeature([], tf.int64, default_value=-1)
    if task in ("segmentation", "multitask"):
        spec[MASK] = tf.io.FixedLenFeature([], tf.string, default_value="")
    if task in ("detection", "multitask"):
        for key in BOX_KEYS:
            spec[key] = tf.io.VarLenFeature(tf.float32)
        spec[BOX_LABEL] = tf.io.VarLenFeature(tf.int64)
        spec[BOX_CROWD] = tf.io.VarLenFeature(tf.int64)
    return spec


def decode_image_tensor(encoded, channels: int, image_size=None):
    """Encoded bytes (PNG/JPEG/GIF/BMP) -> float32 [H, W, C] in [0, 1], resized when asked."""
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    image = tf.image.convert_image_dtype(image, tf.float32)
    if image_size is not None:
        image = tf.image.resize(image, image_size)
    return image


def parse_example(serialized, schema: dict):
    """Serialized Example -> (inputs, targets, meta) tensors for the schema's task.

    inputs: image float32 [H, W, C] (video: frames [T, H, W, C]).
    targets: classification/video one-hot [num_classes]; segmentation int32 mask [H, W];
    detection {"boxes": [MAX_BOXES, 4] xyxy normalised, "labels": [MAX_BOXES]} padded with -1, plus
    "crowd_labels" [MAX_BOXES]: the class of a crowd box at its position, -1 elsewhere. A crowd
    box's entry in "labels" is -1, so every loss (they all treat labels < 0 as absent) ignores it
    while the evaluation still matches it as "ignore" (multitask gets no "crowd_labels");
    multitask a dict of every target present.
    meta: {"id", "source"} strings, for predictions and reports.
    """
    inputs, targets, meta = decode_compact(serialized, schema)
    inputs, targets = expand_compact(inputs, targets, schema)
    return inputs, targets, meta


def decode_compact(serialized, schema: dict):
    """Serialized Example -> (inputs, targets, meta) as `parse_example` gives them, but with pixels
    and masks still uint8 and class labels still ids: what the reader caches and batches (a quarter
    of float32's bytes); `expand_compact` on the batch makes the model's tensors."""
    import tensorflow as tf

    task = schema["task"]
    height, width, channels = schema["image_size"]
    parsed = tf.io.parse_single_example(serialized, feature_spec(task))
    meta = {"id": parsed[ID], "source": parsed[SOURCE]}

    if task == "video":
        encoded = tf.sparse.to_dense(parsed[VIDEO], default_value="")
        frames = tf.map_fn(lambda e: tf.io.decode_image(e, channels=channels, expand_animations=False), encoded,
                           fn_output_signature=tf.TensorSpec([None, None, channels], tf.uint8))
        frames = tf.ensure_shape(frames, [schema["num_frames"], height, width, channels])
        return frames, parsed[VIDEO_LABEL], meta

    image = tf.io.decode_image(parsed[IMAGE], channels=channels, expand_animations=False)
    image = tf.ensure_shape(image, [height, width, channels])
    targets = {}
    if task in ("classification", "multitask"):
        targets["class"] = parsed[LABEL]
    if task in ("segmentation", "multitask"):
        mask = tf.io.decode_png(parsed[MASK], channels=1)[..., 0]
        targets["mask"] = tf.ensure_shape(mask, [height, width])
    if task in ("detection", "multitask"):
        columns = [tf.sparse.to_dense(parsed[key]) for key in BOX_KEYS]
        boxes = tf.stack(columns, axis=-1)
        labels = tf.cast(tf.sparse.to_dense(parsed[BOX_LABEL]), tf.int32)
        crowd = tf.sparse.to_dense(parsed[BOX_CROWD])
        crowd = tf.concat([crowd, tf.zeros_like(labels, tf.int64)], 0)[:tf.shape(labels)[0]] > 0  # absent: none
        order = tf.argsort(tf.cast(crowd, tf.int32), stable=True)[:MAX_BOXES]  # crowd boxes are cut first
        boxes, labels, crowd = tf.gather(boxes, order), tf.gather(labels, order), tf.gather(crowd, order)
        pad = MAX_BOXES - tf.shape(boxes)[0]
        targets["boxes"] = tf.ensure_shape(tf.pad(boxes, [[0, pad], [0, 0]], constant_values=-1.0), [MAX_BOXES, 4])
        targets["labels"] = tf.ensure_shape(tf.pad(tf.where(crowd, -1, labels), [[0, pad]], constant_values=-1),
                                            [MAX_BOXES])
        if task == "detection":
            targets["crowd_labels"] = tf.ensure_shape(
                tf.pad(tf.where(crowd, labels, -1), [[0, pad]], constant_values=-1), [MAX_BOXES])
    if task == "classification":
        targets = targets["class"]
    elif task == "segmentation":
        targets = targets["mask"]
    return image, targets, meta


def expand_compact(inputs, targets, schema: dict):
    """`decode_compact`'s (inputs, targets) -> the model's: pixels float32 in [0, 1], class labels
    one-hot, masks int32. Elementwise, so one example or a batch (one-hot adds the last axis)."""
    import tensorflow as tf

    task = schema["task"]
    num_classes = len(schema["class_names"])
    inputs = tf.image.convert_image_dtype(inputs, tf.float32)
    if task in ("classification", "video"):
        return inputs, tf.one_hot(targets, num_classes)
    if task == "segmentation":
        return inputs, tf.cast(targets, tf.int32)
    if task == "multitask":
        targets = dict(targets)
        if "class" in targets:
            targets["class"] = tf.one_hot(targets["class"], num_classes)
        if "mask" in targets:
            targets["mask"] = tf.cast(targets["mask"], tf.int32)
    return inputs, targets


def _split_files(examples_dir, split: str) -> list[str]:
    files = shard_files(examples_dir, split)
    if not files:
        raise FileNotFoundError(
            f"{examples_dir}: no shards for split '{split}' (expected {shard_pattern(examples_dir, split)})")
    return files


def _records(files: list[str], input_context=None, shuffle_seed: Optional[int] = None):
    """Serialized records of the shards, interleaved in a fixed order (the files' order, or one
    seeded by `shuffle_seed`): `deterministic=True` keeps the round-robin order while the reads
    run in parallel."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.interleave(lambda path: tf.data.TFRecordDataset(path, compression_type="GZIP"),
                              cycle_length=min(len(files), 8), num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=True)


def decoded_split(examples_dir: str | Path, split: str, *, cache: bool = False, input_context=None):
    """One split's examples, decoded compact (`decode_compact`: uint8 pixels, label ids, meta),
    unbatched, in the fixed order of the shards. With `cache=True` the first pass keeps them in
    memory: build it once and pass it to every epoch's `make_dataset(decoded=...)`, so that the
    shards are read and decoded once per trial. Every dataset derived from this one object shares
    its cache (tf.data keeps the cache in the dataset, and its graph rewrites, e.g. a strategy's
    auto-sharding, look the same cache up); a new `decoded_split` call starts an empty one."""
    import tensorflow as tf

    schema = read_schema(examples_dir)
    dataset = _records(_split_files(examples_dir, split), input_context).map(
        lambda serialized: decode_compact(serialized, schema), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.cache() if cache else dataset


def make_dataset(
    examples_dir: str | Path,
    split: str,
    batch_size: int,
    *,
    shuffle: bool = False,
    repeat: bool = False,
    seed: int = 0,
    shuffle_buffer: int = 1024,
    drop_remainder: bool = False,
    with_meta: bool = False,
    input_context=None,
    decoded=None,
):
    """The tf.data reader: gzip shards interleaved -> parallel parse/decode -> shuffle -> batch -> prefetch.

    Yields `(inputs, targets)` batches, or `(inputs, targets, meta)` with `with_meta=True`.
    The order is a pure function of the shard files and `seed`: the interleave and the decode keep
    their input's order (tf.data's `deterministic=True`) and every shuffle is seeded, so a dataset
    built again after a kill yields the same batches, and `skip(k)` on it yields exactly the ones
    the killed run had not trained on. The shuffle buffer is capped at the split's size (from
    schema.json): a larger one only costs memory and start-up. When the buffer holds less than the
    split, the shard order is shuffled too (seeded), to mix more than the buffer's reach.
    `decoded`: `decoded_split(examples_dir, split, cache=True)`, built once: the dataset shuffles
    its in-memory examples instead of reading and decoding the shards again, and yields the same
    batches as without it whenever the buffer holds the split (the shard order is then fixed).
    `input_context` (from `strategy.distribute_datasets_from_function`) shards by worker; a
    `decoded` split must have been built with the same one.
    """
    import tensorflow as tf

    schema = read_schema(examples_dir)
    autotune = tf.data.AUTOTUNE
    count = schema.get("split_counts", {}).get(split)
    buffer = max(1, min(shuffle_buffer, int(count))) if count is not None else shuffle_buffer
    if decoded is None:
        shuffle_files = shuffle and (count is None or count > shuffle_buffer)
        dataset = _records(_split_files(examples_dir, split), input_context, seed if shuffle_files else None)
    else:
        dataset = decoded
    if shuffle:  # serialized records when not decoded yet: the same order, and a lighter buffer
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    if decoded is None:
        dataset = dataset.map(lambda serialized: decode_compact(serialized, schema), num_parallel_calls=autotune,
                              deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)

    def expand(inputs, targets, meta):
        inputs, targets = expand_compact(inputs, targets, schema)
        return (inputs, targets, meta) if with_meta else (inputs, targets)

    return dataset.map(expand, num_parallel_calls=autotune, deterministic=True).prefetch(autotune)
