"""The train and eval splits as the loop reads them: decoded once per trial, the train split
reshuffled every epoch.

Augmentation is offline (the augment stage), so the decoded training examples are the same every
epoch, and decoding them again each epoch is the reader's cost: on 2 cores gzip records come at
7600 images/s, decoded ones at 2063, a memory cache at ~58 000 (benchmarks/input_headroom).
When the decoded split fits, `TrainInput` decodes it once into memory, and every epoch's dataset
gathers its batches from there in the order of the epoch's seed; the batches are the ones the
uncached reader yields for the same seed (components/examples.make_dataset), so the cache changes
speed, never what is trained on.

`train.cache` chooses: true, false, or "auto", which caches when the decoded split, estimated
from schema.json (image size, frames, split count), is at most `CACHE_LIMIT_BYTES`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

CACHE_LIMIT_BYTES = 512 * 2 ** 20
"""The "auto" limit per trial: about 135 000 32x32 RGB examples or 3 500 224x224 ones (uint8 pixels
and their bookkeeping), the default config's 1 260 train images take 5 MiB. At most it doubles a
trainer process (650 MB resident for the default CNN, measured on this machine), and four trials
caching at once (`train.parallel_trials`) stay under 10% of its 23.5 GiB. Larger splits stream:
epoch after epoch decode costs them time, while memory beyond the limit could cost the run."""

TENSOR_OVERHEAD_BYTES = 192
"""Memory a cached tensor costs beyond its payload: measured 190 bytes (TF 2.21: the process grew
by 750-790 bytes per cached classification example of 4 small tensors, beyond the pixels)."""

META_STRING_BYTES = 64
"""Allowance for each of the example's id and source strings."""


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: every epoch a different order, the same on every run."""
    return seed * 10007 + epoch


def cached_bytes(schema: dict, count: int) -> int:
    """Estimated memory of `count` examples as the reader caches them (`examples.decode_compact`:
    uint8 pixels and masks, label ids, padded boxes, id and source strings)."""
    from components.examples import MAX_BOXES

    task = schema["task"]
    height, width, channels = (int(v) for v in schema["image_size"])
    frames = int(schema.get("num_frames") or 1) if task == "video" else 1
    payload, tensors = frames * height * width * channels + 2 * META_STRING_BYTES, 3  # inputs, id, source
    if task in ("classification", "video", "multitask"):
        payload, tensors = payload + 8, tensors + 1
    if task in ("segmentation", "multitask"):
        payload, tensors = payload + height * width, tensors + 1
    if task in ("detection", "multitask"):
        labels = 2 if task == "detection" else 1  # labels, and detection's crowd_labels
        payload, tensors = payload + MAX_BOXES * (16 + 4 * labels), tensors + 1 + labels
    return int(count) * (payload + tensors * TENSOR_OVERHEAD_BYTES)


def should_cache(setting: Union[bool, str], schema: dict, count: int) -> bool:
    """`train.cache`: true and false as given; "auto" when `cached_bytes` is within the limit."""
    if setting == "auto":
        return cached_bytes(schema, count) <= CACHE_LIMIT_BYTES
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"train.cache: expected true, false or 'auto', got {setting!r}")


class TrainInput:
    """`train_input(epoch)`: the train split's global batches for one epoch, in the order fixed by
    the shard files and `epoch_seed(train.seed, epoch)`.

    Cached, the split is decoded once (on the first call) into one tensor per field, and an epoch
    is a seeded shuffle of the example *indices*, batched, then one gather per batch: tf.data's
    shuffle picks buffer positions from its seed alone, never from the values, so shuffling
    indices with the reader's seed and buffer gives the reader's order exactly (checked in
    tests/components/test_train_input.py), while each batch costs one gather instead of 32
    elements through a shuffle buffer, so the next batch is ready before the step asks for it
    (benchmarks/input_headroom: the input wait)."""

    def __init__(self, examples_dir: str | Path, batch_size: int, train, schema: dict, count: int):
        """`train`: the TrainSection (seed, shuffle_buffer, cache); `count`: examples in the split."""
        self.examples_dir, self.batch_size, self.seed, self.shuffle_buffer = examples_dir, batch_size, train.seed, \
            train.shuffle_buffer
        self.schema, self.count = schema, int(count)
        self.estimated_bytes = cached_bytes(schema, count)
        self.cached = should_cache(train.cache, schema, count)
        self.setting = train.cache
        self._arrays = self._gather = None

    def describe(self) -> str:
        size = f"{self.estimated_bytes / 2 ** 20:.1f} MiB decoded"
        if self.cached:
            return f"train split decoded once and cached in memory ({size}; train.cache={self.setting})"
        return (f"train split read and decoded every epoch ({size}, limit {CACHE_LIMIT_BYTES / 2 ** 20:.0f} MiB; "
                f"train.cache={self.setting})")

    def arrays(self):
        """The decoded split as (inputs, targets) tensors with the examples on the first axis, in
        the shards' fixed order (decoded on the first call)."""
        import tensorflow as tf

        from components import examples as ex

        if self._arrays is None:
            decoded = ex.decoded_split(self.examples_dir, "train").map(lambda inputs, targets, meta: (inputs, targets))
            whole = decoded.batch(max(1, self.count) + 1).get_single_element()  # one batch: every example
            self._arrays = tf.nest.map_structure(tf.identity, whole)
        return self._arrays

    def __call__(self, epoch: int):
        from components import examples as ex

        seed = epoch_seed(self.seed, epoch)
        if not self.cached:
            return ex.make_dataset(self.examples_dir, "train", self.batch_size, shuffle=True, seed=seed,
                                   shuffle_buffer=self.shuffle_buffer)
        if self._gather is None:
            self._gather = batch_gather(self.arrays(), self.schema)
        return gathered_epoch(self.arrays(), self.schema, self.batch_size, seed, self.shuffle_buffer, self._gather)


EPOCH_LIMIT_BYTES = 256 * 2 ** 20
"""The most memory one epoch's model tensors may take to be built at once (`gathered_epoch`): the
default config's 1 260 train images take 15 MiB as float32. Larger epochs gather batch by batch."""


def epoch_bytes(arrays, schema: dict) -> int:
    """About the memory of one epoch as the model's tensors: 4 bytes a value (float32 pixels, float32
    or int32 targets), a class label counted as its one-hot row."""
    import tensorflow as tf

    inputs, targets = arrays
    values = int(np.prod(inputs.shape)) + sum(int(np.prod(t.shape)) for t in tf.nest.flatten(targets))
    if schema["task"] in ("classification", "video"):
        values += int(inputs.shape[0]) * len(schema["class_names"])
    return 4 * values


def gathered_epoch(arrays, schema: dict, batch_size: int, seed: int, shuffle_buffer: int, gather=None,
                   limit_bytes: Optional[int] = None):
    """One epoch of `arrays` ((inputs, targets), examples first) as the reader would batch it with
    `shuffle=True, seed=seed`: indices shuffled as `make_dataset` shuffles examples (the same buffer,
    capped at the split's size), gathered and expanded to the model's tensors, then batched.

    An epoch within `limit_bytes` is gathered in one call and served as ready batches: gathering
    32 examples at a time cost ~1.7 ms a batch in tf.data's threads, which on 2 cores took that
    time from the training step (an input wait of 5% of the step, benchmarks/input_headroom); one
    gather for the epoch costs a few ms. Larger epochs gather batch by batch. Both give the same
    batches, bit for bit: the order is the shuffled indices' and every value is elementwise.
    `gather`: `batch_gather(arrays, schema)`, built once and shared by every epoch (else built here)."""
    import tensorflow as tf

    count = int(tf.nest.flatten(arrays)[0].shape[0])
    buffer = max(1, min(shuffle_buffer, count))
    indices = tf.data.Dataset.range(count).shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    gather = batch_gather(arrays, schema) if gather is None else gather
    if count and epoch_bytes(arrays, schema) <= (EPOCH_LIMIT_BYTES if limit_bytes is None else limit_bytes):
        epoch = gather(indices.batch(count).get_single_element())
        return tf.data.Dataset.from_tensor_slices(epoch).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return indices.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE,
                                         deterministic=True).prefetch(tf.data.AUTOTUNE)


def batch_gather(arrays, schema: dict):
    """index batch -> the model's (inputs, targets) of those examples, as one function traced once
    (a dataset built each epoch around a new Python function traced and converted it again)."""
    import tensorflow as tf

    from components import examples as ex

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)], autograph=False)
    def gather(index):
        inputs, targets = tf.nest.map_structure(lambda t: tf.gather(t, index), arrays)
        return ex.expand_compact(inputs, targets, schema)

    return gather


class EvalInput:
    """`eval_input()`: the eval split's batches in their fixed order, every epoch; decoded once per
    trial under the same `train.cache` rule as the train split. The dataset is built once and
    iterated again each epoch: building it anew traced its functions again, ~0.2 s an epoch."""

    def __init__(self, examples_dir: str | Path, batch_size: int, train, schema: dict, count: int):
        from components import examples as ex

        self.examples_dir, self.batch_size = examples_dir, batch_size
        self.decoded = (ex.decoded_split(examples_dir, "eval", cache=True)
                        if should_cache(train.cache, schema, count) else None)
        self.dataset = None

    def __call__(self):
        from components import examples as ex

        if self.dataset is None:
            self.dataset = ex.make_dataset(self.examples_dir, "eval", self.batch_size, decoded=self.decoded)
        return self.dataset
