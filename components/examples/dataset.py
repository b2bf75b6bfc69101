"""The tf.data reader: parse and decode in the graph, compact decoded splits, and `make_dataset`,
whose batch order is a pure function of the shard files and the seed (see its docstring)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from components.examples.files import read_schema, shard_files, shard_pattern
from components.examples.keys import (BOX_CROWD, BOX_KEYS, BOX_LABEL, CHANNELS, HEIGHT, ID, IMAGE, LABEL, MASK, MAX_BOXES,
                                      NUM_FRAMES, SOURCE, VIDEO, VIDEO_LABEL, WIDTH)


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
