"""Write serialized Examples as gzip TFRecord shards whose bytes depend only on the records.

Beam's `WriteToTFRecord(num_shards=N)` puts each record in a shard and at a position that depend
on how the runner bundled the work, so two ingests of the same source write different shards:
the same records, but a different reading order, hence a different training run for the same
seed and a different artifact fingerprint. Here a record's shard and its place in the shard come
from a digest of its bytes: the same records give the same files on any runner, with any number
of workers, and the digest order mixes classes as well as any other fixed order would (the
reader shuffles with the seed on top of it).

Every one of the N shard files is written, empty or not, as `WriteToTFRecord` does, so the
layout `<prefix>-SSSSS-of-NNNNN.tfrecord.gz` always has N files. A shard is held in memory while
it is sorted and written, so one larger than `MAX_SHARD_BYTES` fails with a message that asks
for more shards, rather than a worker dying of memory.
"""
from __future__ import annotations

import hashlib

import apache_beam as beam

from components.examples import SHARD_SUFFIX


MAX_SHARD_BYTES = 1 << 30
"""The most record bytes one shard may hold (sorted in one worker's memory): 1 GiB."""


class ShardTooLarge(ValueError):
    pass


def record_digest(serialized: bytes) -> bytes:
    return hashlib.blake2b(serialized, digest_size=16).digest()


def shard_path(prefix: str, shard: int, num_shards: int) -> str:
    return f"{prefix}-{shard:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def _keyed(serialized: bytes, num_shards: int):
    digest = record_digest(serialized)
    return int.from_bytes(digest[:8], "big") % num_shards, (digest, serialized)


def write_shard(shard_and_records, prefix: str, num_shards: int) -> str:
    """One shard's records, in digest order, into its file (the sentinel `None` only makes the shard exist)."""
    import tensorflow as tf

    shard, keyed = shard_and_records
    path = shard_path(prefix, shard, num_shards)
    records, size = [], 0
    for pair in keyed:
        if pair is None:
            continue
        size += len(pair[1])
        if size > MAX_SHARD_BYTES:
            raise ShardTooLarge(f"{path}: more than {MAX_SHARD_BYTES / 2 ** 20:.0f} MiB of records for one shard "
                                f"(each shard is sorted in memory); expected more shards: raise ingest.num_shards "
                                f"(now {num_shards} per split)")
        records.append(pair)
    records.sort()
    tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
    with tf.io.TFRecordWriter(path, options=tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for _, serialized in records:
            writer.write(serialized)
    return path


class WriteOrderedShards(beam.PTransform):
    """PCollection of serialized Examples -> `num_shards` gzip TFRecord files at `prefix`; yields their paths."""

    def __init__(self, prefix: str, num_shards: int):
        super().__init__()
        if num_shards < 1:
            raise ValueError(f"WriteOrderedShards: expected num_shards >= 1, got {num_shards}")
        self.prefix, self.num_shards = str(prefix), num_shards

    def expand(self, records):
        n = self.num_shards
        keyed = records | "KeyByDigest" >> beam.Map(_keyed, n)
        every_shard = (records.pipeline
                       | "EveryShard" >> beam.Create([(shard, None) for shard in range(n)], reshuffle=False))
        return ((keyed, every_shard)
                | "WithEveryShard" >> beam.Flatten()
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteShard" >> beam.Map(write_shard, self.prefix, n))
