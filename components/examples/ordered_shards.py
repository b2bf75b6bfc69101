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

Reading them back (`ReadShards`) and writing them use only Create, Map/FlatMap, GroupByKey and
Flatten, the part of Beam that every runner here translates the same way, DaskRunner included
(pipeline/beam_portable.py).

A prefix may be a local path or a URL (`s3://bucket/root/ingest/7/examples/train/data`): the
worker that writes a shard writes it there itself, and `ReadShards` reads through Beam's
filesystems (pipeline/beam_files.py). TensorFlow 2.21 cannot open s3://, so for a URL the shard is
written by the same TFRecordWriter into a scratch file on the worker and streamed to the object:
the bytes, and so the Examples fingerprint, are the same on a local root and on a remote one.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.tfrecordio import _TFRecordUtil  # the record framing and CRC checks (Beam 2.77 is pinned)

from components.examples import SHARD_SUFFIX
from pipeline import beam_files


MAX_SHARD_BYTES = 1 << 30
"""The most record bytes one shard may hold (sorted in one worker's memory): 1 GiB."""


class ShardTooLarge(ValueError):
    pass


def record_digest(serialized: bytes) -> bytes:
    return hashlib.blake2b(serialized, digest_size=16).digest()


def shard_path(prefix: str, shard: int, num_shards: int) -> str:
    return f"{prefix}-{shard:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def _keyed(group_and_serialized, num_shards: int):
    """(group, record) -> (group * num_shards + shard, (digest, record)): one int key per file (see below)."""
    group, serialized = group_and_serialized
    digest = record_digest(serialized)
    return group * num_shards + int.from_bytes(digest[:8], "big") % num_shards, (digest, serialized)


def write_shard(key_and_records, prefixes: Sequence[str], num_shards: int) -> str:
    """One shard's records, in digest order, into its file (the sentinel `None` only makes the shard exist)."""
    key, keyed = key_and_records
    group, shard = divmod(key, num_shards)
    path = shard_path(prefixes[group], shard, num_shards)
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
    if beam_files.is_url(path):
        with tempfile.TemporaryDirectory(prefix="convpipe-shard-") as scratch:
            local = os.path.join(scratch, path.rsplit("/", 1)[-1])
            _write_tfrecords(local, records)
            beam_files.upload_file(local, path)
        return path
    import tensorflow as tf

    tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
    _write_tfrecords(path, records)
    return path


def _write_tfrecords(path: str, records) -> None:
    import tensorflow as tf

    with tf.io.TFRecordWriter(path, options=tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for _, serialized in records:
            writer.write(serialized)


class WriteGroupedShards(beam.PTransform):
    """PCollection of (group, serialized Example) -> `num_shards` files at `prefixes[group]`, for every group.

    One GroupByKey writes every group's shards (ingest writes train, eval and test this way
    instead of through `beam.Partition`, whose outputs the DaskRunner does not keep apart). The
    key of a file is the int `group * num_shards + shard`: dask.bag groups by `hash`, and a str
    or tuple key hashes differently in worker processes that do not share PYTHONHASHSEED.
    Yields the paths written.
    """

    def __init__(self, prefixes: Sequence[str], num_shards: int):
        super().__init__()
        if num_shards < 1:
            raise ValueError(f"WriteOrderedShards: expected num_shards >= 1, got {num_shards}")
        self.prefixes, self.num_shards = [str(p) for p in prefixes], num_shards

    def expand(self, rows):
        n = self.num_shards
        keyed = rows | "KeyByDigest" >> beam.Map(_keyed, n)
        every_shard = (rows.pipeline
                       | "EveryShard" >> beam.Create([(key, None) for key in range(len(self.prefixes) * n)],
                                                     reshuffle=False))
        return ((keyed, every_shard)
                | "WithEveryShard" >> beam.Flatten()
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteShard" >> beam.Map(write_shard, self.prefixes, n))


def _in_group_zero(serialized: bytes):
    return 0, serialized


class WriteOrderedShards(beam.PTransform):
    """PCollection of serialized Examples -> `num_shards` gzip TFRecord files at `prefix`; yields their paths."""

    def __init__(self, prefix: str, num_shards: int):
        super().__init__()
        if num_shards < 1:
            raise ValueError(f"WriteOrderedShards: expected num_shards >= 1, got {num_shards}")
        self.prefix, self.num_shards = str(prefix), num_shards

    def expand(self, records):
        return (records
                | "InOneGroup" >> beam.Map(_in_group_zero)
                | "Shards" >> WriteGroupedShards([self.prefix], self.num_shards))


def _read_shard(path: str):
    with beam_files.open_read(path, CompressionTypes.GZIP) as handle:
        while (record := _TFRecordUtil.read_record(handle)) is not None:
            yield record


class ReadShards(beam.PTransform):
    """Gzip TFRecord shard paths (local or URLs) -> their records, one shard per work item, through Beam's filesystems.

    Instead of `ReadFromTFRecord`, whose `Read` the DaskRunner turns into a no-op. Records come in
    file order; the writers above sort them again, so nothing downstream depends on it.
    """

    def __init__(self, paths: Sequence[str]):
        super().__init__()
        self.paths = [str(p) for p in paths]

    def expand(self, pbegin):
        return (pbegin
                | "Shards" >> beam.Create(self.paths, reshuffle=False)
                | "Records" >> beam.FlatMap(_read_shard))
