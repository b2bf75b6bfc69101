"""The augment Beam job: it writes `augment.copies` augmented copies of every train example.

Inputs: ingest's Examples. Output: Examples with the same layout, where
- train holds every original record, byte for byte, plus copies named `<id>#aug<k>` (k = 1..copies),
  each seeded from its own id and k, so a rerun or another runner writes the same copies;
- eval and test shards are copied unchanged (augmenting what we measure on would bias it);
- schema.json gets the new split counts and an "augmentation" entry (the config that made the
  copies); stats.json and dead_letter.jsonl are copied: they describe the ingested records.

The pixel work is components/augment/augmentations.py; this file is only the pipeline around it, built
from the transforms every runner here runs alike, DaskRunner included (pipeline/beam_portable.py):
train shards are read as one work item each (`ReadShards`), the count is a GroupByKey sum, and
schema.json is written by `WriteTextFiles`.

Where: `ctx.input_location` / `ctx.output_location`, local directories or, on a remote root, the
executions' URLs. The workers then read ingest's shards from the object store and write the new
ones there themselves (pipeline/beam_files.py); eval, test and the text files are copied on the
store, server-side.
"""
from __future__ import annotations

import json
import os

import apache_beam as beam

from components.augment.augmentations import augment_record, copy_id, copy_seed
from components.examples.locations import join, read_schema, shard_paths
from components.examples.ordered_shards import ReadShards, WriteOrderedShards
from components.examples import (
    DEAD_LETTER_FILE, IMAGE_FORMAT, SCHEMA_FILE, SHARD_SUFFIX, SPLITS, STATS_FILE, decode_example, encode_example)
from pipeline import beam as beam_runs
from pipeline import beam_files
from pipeline.beam_portable import Join, WriteTextFiles
from pipeline.stage import ExecutionContext


# ------------------------------------------------------------------------------------------------
# one record -> the original and its copies
# ------------------------------------------------------------------------------------------------
def _image_format(serialized: bytes) -> str:
    import tensorflow as tf

    values = tf.train.Example.FromString(serialized).features.feature[IMAGE_FORMAT].bytes_list.value
    return values[0].decode() if values else "png"


def with_copies(serialized: bytes, cfg):
    """The original record unchanged, then `cfg.copies` augmented copies in its image format."""
    yield serialized
    record = decode_example(serialized)
    image_format = _image_format(serialized)
    for k in range(1, cfg.copies + 1):
        try:
            copy = augment_record(record, cfg, copy_seed(record["id"], k))
            copy["id"] = copy_id(record["id"], k)
            encoded = encode_example(copy, image_format)
        except Exception as exc:
            raise RuntimeError(f"augment: record {record['id']!r}, copy {k}: {exc}") from exc
        yield encoded


def _count(key_and_ones) -> int:
    """(0, [1, 1, ..., None]) -> the number of ones (the `None` only makes the group exist)."""
    return sum(1 for one in key_and_ones[1] if one is not None)


def augmented_schema(schema: dict, train_count: int, cfg) -> str:
    """schema.json of the output: the input's, with train's new count and how it was made."""
    schema = dict(schema)
    counts = dict(schema.get("split_counts", {}))
    originals = counts.get("train", 0)
    counts["train"] = int(train_count)
    schema["split_counts"] = counts
    schema["augmentation"] = {
        "copies": cfg.copies,
        "original_train_count": originals,
        "id_format": "<id>#aug<k>, k = 1..copies",
        "config": cfg.model_dump(mode="json"),
    }
    return json.dumps(schema, indent=2, sort_keys=True)


# ------------------------------------------------------------------------------------------------
# the executor
# ------------------------------------------------------------------------------------------------
def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def run_augment(ctx: ExecutionContext) -> None:
    cfg = ctx.config.augment
    source = ctx.input_location("examples")
    target = ctx.output_location("examples")
    schema = read_schema(source)
    train_shards = shard_paths(source, "train")
    if not train_shards:
        raise FileNotFoundError(f"{source}: no train shards to augment (expected "
                                f"{join(source, 'train', 'data-*' + SHARD_SUFFIX)})")

    pipeline = beam_runs.make_pipeline(ctx.config, job_name=f"augment-{ctx.execution_id}",
                                       parallelism=len(train_shards))
    train = (
        pipeline
        | "Read train" >> ReadShards(train_shards)
        | "Add copies" >> beam.FlatMap(with_copies, cfg=cfg)
    )
    shards = train | "Write train" >> WriteOrderedShards(join(target, "train", "data"), len(train_shards))
    schema_file = join(target, SCHEMA_FILE)
    once = pipeline | "Once" >> beam.Create([(0, None)], reshuffle=False)
    schemas = (
        ((train | "One each" >> beam.Map(lambda _: (0, 1)), once) | "With once" >> beam.Flatten())
        | "Gather ones" >> beam.GroupByKey()
        | "Count train" >> beam.Map(_count)
        | "Schema" >> beam.Map(lambda count: (schema_file, 0, augmented_schema(schema, count, cfg)))
        | "Write schema" >> WriteTextFiles([schema_file])
    )
    _ = (shards, schemas) | "Done" >> Join()
    beam_runs.run(pipeline, "augment", ctx.log)

    for split in SPLITS:
        if split == "train":
            continue
        shards = shard_paths(source, split)
        if shards and not beam_files.is_url(target):
            os.makedirs(join(target, split), exist_ok=True)
        beam_files.copy(shards, [join(target, split, _name(s)) for s in shards])
    extras = [name for name in (STATS_FILE, DEAD_LETTER_FILE) if beam_files.exists(join(source, name))]
    beam_files.copy([join(source, n) for n in extras], [join(target, n) for n in extras])

    counts = read_schema(target)["split_counts"]
    ctx.properties["examples"] = {"split_counts": counts, "copies": cfg.copies}
    ctx.log.info("augment: train %d -> %d records (%d copies each); eval and test copied",
                 schema.get("split_counts", {}).get("train", 0), counts["train"], cfg.copies)
