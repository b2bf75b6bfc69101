"""input_headroom: can the Examples reader keep the trainer fed?

Sides, alternated after a warm-up, one epoch each:
  reader          the stage's reader alone (components/training/train_input: gzip shards -> parse
                  -> decode once into an in-memory cache when `train.cache` allows, then every
                  epoch a seeded shuffle -> batch -> prefetch), drained as fast as it goes; after
                  the warm-up it serves the cache
  trainer         the stage's compiled train step over the same batches held in memory: the rate
                  at which training consumes batches when input costs nothing
  records_only,   the reader's first steps alone, to show where its time goes: gzip shards read
  parsed          and interleaved (records_only), then parsed into features (parsed), no decoding
  reader_cached   a probe: a plain tf.data parse and decode followed by
                  `cache()` (the split fits in memory), then shuffle, batch, prefetch; from the
                  second epoch on it serves decoded images from memory
  training_epoch  a real epoch as the loop runs it (components/training/loop.py `train_steps`: on
                  one device the step takes its batch from the reader's iterator inside the
                  compiled function), against `trainer`: the input wait is the share of the epoch
                  that the reader adds, 1 - trainer time / training_epoch time
  python_next     the same epoch with each batch handed over through Python (`next()`, then the
                  step), as a distributed or streamed dataset still is: the time in `next()` as a
                  share of next + step
The reader has no online transforms to apply: augmentation is an offline Beam stage (augment).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks import data, timing
from benchmarks.report import Result

NAME = "input_headroom"
DESCRIPTION = "Examples reader alone vs the trainer's consumption; input wait during an epoch"

SIZES = {
    "tiny": {"num_examples": 40, "image_size": 8, "batch_size": 8, "rounds": 2},
    "quick": {"num_examples": 640, "image_size": 32, "batch_size": 32, "rounds": 4},
    "full": {"num_examples": 1400, "image_size": 32, "batch_size": 32, "rounds": 7},
}


def _sums(values: dict) -> dict:
    return {k: float(v) for k, v in values.items()}


def run(size: str) -> Result:
    import tensorflow as tf

    from benchmarks.trainer import PipelineTrainer
    from components import examples as ex

    s = SIZES[size]
    result = Result(NAME, DESCRIPTION, settings={"size": size, **s, "model": "cnn (default blocks)"})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="convpipe-bench-") as tmp:
        root = Path(tmp)
        config = data.pipeline_config(root, num_examples=s["num_examples"], image_size=s["image_size"],
                                      batch_size=s["batch_size"])
        examples = data.ingest(config, root)
        schema = ex.read_schema(examples)
        x, y = data.split_arrays(examples)
        images = len(x)
        memory = data.in_memory_dataset(x, y, s["batch_size"])
        trainer = PipelineTrainer(config, examples, root / "work", sample_images=False)
        steps = trainer.steps
        result.settings.update({"train_images": images, "shuffle_buffer": config.train.shuffle_buffer,
                                "shards": config.ingest.num_shards})
        epoch = iter(range(1, 10 ** 6))

        def reader():
            count = 0
            for batch_x, _ in trainer.train_data(next(epoch)):
                count += int(batch_x.shape[0])
            if count != images:
                raise RuntimeError(f"reader: expected {images} train images an epoch, read {count}")

        files = ex.shard_files(examples, "train")
        spec = ex.feature_spec(schema["task"])

        def records():
            return tf.data.Dataset.from_tensor_slices(files).interleave(
                lambda path: tf.data.TFRecordDataset(path, compression_type="GZIP"),
                cycle_length=min(len(files), 8), num_parallel_calls=tf.data.AUTOTUNE)

        def drain(dataset):
            for _ in dataset.batch(s["batch_size"]).prefetch(tf.data.AUTOTUNE):
                pass

        def records_only():
            drain(records())

        def parsed():
            drain(records().map(lambda serialized: tf.io.parse_single_example(serialized, spec),
                                num_parallel_calls=tf.data.AUTOTUNE))

        cached = records().map(lambda serialized: ex.parse_example(serialized, schema)[:2],
                               num_parallel_calls=tf.data.AUTOTUNE).cache().shuffle(
            config.train.shuffle_buffer, seed=0, reshuffle_each_iteration=True).batch(s["batch_size"]).prefetch(
            tf.data.AUTOTUNE)

        def reader_cached():
            for _ in cached:
                pass

        def trainer_consumption():
            for train_step in steps.train_steps(memory):
                _sums(train_step())

        def training_epoch():
            for train_step in steps.train_steps(trainer.train_data(next(epoch))):
                _sums(train_step())

        waits = []

        def python_next():
            wait = first = step = 0.0
            iterator = iter(steps.distribute(trainer.train_data(next(epoch))))
            while True:
                t0 = time.perf_counter()
                try:
                    batch = next(iterator)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                _sums(steps.train_step(batch))
                t2 = time.perf_counter()
                first = first or t1 - t0
                wait += t1 - t0
                step += t2 - t1
            waits.append((wait, step, first))

        seconds = timing.alternate({"reader": reader, "records_only": records_only, "parsed": parsed,
                                    "reader_cached": reader_cached, "trainer": trainer_consumption,
                                    "training_epoch": training_epoch, "python_next": python_next},
                                   rounds=s["rounds"], warmup=1)
        trainer.close()

    waits = waits[1:]
    for name, values in seconds.items():
        result.sample(name, values)
    reader_rate = result.figure("reader_images_per_s", timing.rate(images, seconds["reader"]), "images/s")
    result.figure("reader_records_only_images_per_s", timing.rate(images, seconds["records_only"]), "images/s",
                  "gzip shards read and interleaved, nothing parsed")
    result.figure("reader_parsed_images_per_s", timing.rate(images, seconds["parsed"]), "images/s",
                  "read and parsed, images not decoded")
    cached_rate = result.figure("reader_cached_images_per_s", timing.rate(images, seconds["reader_cached"]),
                                "images/s", "probe: decoded images cached in memory after the first epoch")
    trainer_rate = result.figure("trainer_images_per_s", timing.rate(images, seconds["trainer"]), "images/s",
                                 "train steps on in-memory batches")
    result.figure("training_epoch_images_per_s", timing.rate(images, seconds["training_epoch"]), "images/s")
    share = result.figure("input_wait_share",
                          max(0.0, 1.0 - timing.median(seconds["trainer"]) / timing.median(seconds["training_epoch"])),
                          "of the epoch", "1 - (steps on in-memory batches) / (the loop's epoch on the reader), "
                          "medians of alternated epochs")
    shares = [wait / (wait + step) for wait, step, _ in waits]
    result.figure("python_next_wait_share", timing.median(shares), "of step time",
                  "batches handed over through Python: time in next() / (next() + the train step), median epoch")
    later = [(wait - first) / (wait - first + step) for wait, step, first in waits]
    result.figure("python_next_wait_share_after_first_batch", timing.median(later), "of step time",
                  "the same without the first batch (filling the shuffle buffer)")
    result.figure("first_batch_wait_seconds", timing.median([first for _, _, first in waits]), "s")
    headroom = result.ratio("reader_over_trainer", timing.ratio(reader_rate, trainer_rate),
                            "reader alone vs the rate the trainer consumes batches")
    result.ratio("reader_cached_over_trainer", timing.ratio(cached_rate, trainer_rate), "probe: with cache()")
    result.target("reader / trainer", headroom, ">=", 3.0)
    result.target("input wait share", share, "<", 0.02)
    result.seconds = time.perf_counter() - started
    return result
