"""Shards whose bytes depend only on the records: any input order, the same files; every shard written."""
import tensorflow as tf

from components.examples.ordered_shards import WriteOrderedShards, record_digest
from pipeline import beam as beam_runs
from pipeline.config import load_config


def write(records, out, num_shards):
    config = load_config(None, [])
    pipeline = beam_runs.make_pipeline(config, job_name="ordered-shards-test")
    import apache_beam as beam

    _ = (pipeline | beam.Create(records, reshuffle=False) | WriteOrderedShards(str(out / "data"), num_shards))
    pipeline.run().wait_until_finish()
    return sorted(out.glob("data-*.tfrecord.gz"))


def read(path):
    return list(tf.data.TFRecordDataset(str(path), compression_type="GZIP").as_numpy_iterator())


def test_any_input_order_gives_the_same_files_in_digest_order(tmp_path):
    records = [f"record {i}".encode() * (i + 1) for i in range(23)]
    first = write(records, tmp_path / "a", 3)
    second = write(records[::-1], tmp_path / "b", 3)
    assert [p.name for p in first] == [f"data-0000{k}-of-00003.tfrecord.gz" for k in range(3)]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    shards = [read(p) for p in first]
    assert sorted(r for shard in shards for r in shard) == sorted(records)  # each record once
    for k, shard in enumerate(shards):
        digests = [record_digest(r) for r in shard]
        assert digests == sorted(digests)
        assert all(int.from_bytes(d[:8], "big") % 3 == k for d in digests)


def test_every_shard_is_written_even_when_empty(tmp_path):
    files = write([b"only one"], tmp_path / "out", 4)
    assert len(files) == 4 and sorted(len(read(p)) for p in files) == [0, 0, 0, 1]


def test_the_same_record_serializes_to_the_same_bytes_in_any_process():
    """Map fields in key order (SerializeToString(deterministic=True)): the digest is stable."""
    import subprocess
    import sys

    code = ("import numpy as np; from components.examples import encode_example; import hashlib; "
            "print(hashlib.sha256(encode_example({'id': 'x', 'source': 's', 'label': 1, "
            "'image': np.full((4, 4, 3), 7, np.uint8)})).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={"PYTHONHASHSEED": str(seed), "TF_CPP_MIN_LOG_LEVEL": "3",
                                   "PATH": "/usr/bin:/bin"}).stdout.strip() for seed in (1, 2, 3)}
    assert len(digests) == 1 and len(next(iter(digests))) == 64


def test_a_shard_larger_than_the_limit_fails_naming_the_shard_and_the_key(tmp_path, monkeypatch):
    import pytest

    from components.examples import ordered_shards

    monkeypatch.setattr(ordered_shards, "MAX_SHARD_BYTES", 100)
    with pytest.raises(Exception, match=r"data-00000-of-00001\.tfrecord\.gz: more than 0 MiB .* raise "
                                         r"ingest\.num_shards \(now 1 per split\)"):
        write([b"x" * 60, b"y" * 60], tmp_path / "big", 1)
