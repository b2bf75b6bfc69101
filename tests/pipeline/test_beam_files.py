"""pipeline/beam_files.py against a real S3 endpoint (moto's server, tests/servers.py) and a local directory.

What the data stages' workers need from it on a remote root: whole files written as objects (an
empty one too, which Beam's own S3 writer cannot make), shards streamed up from a scratch file,
globs, copies on the store, gzip reads; the endpoint and keys from the AWS environment only.
"""
import gzip

import boto3
import pytest
from apache_beam.io.filesystem import CompressionTypes

from pipeline import beam_files

BUCKET = "s3://convpipe"


def keys(server, prefix=""):
    client = boto3.client("s3", endpoint_url=server.endpoint)
    return {o["Key"]: o["Size"] for o in client.list_objects_v2(Bucket="convpipe", Prefix=prefix).get("Contents", [])}


def test_files_on_s3_are_whole_objects_empty_ones_included(s3_server, tmp_path):
    s3_server.make_bucket("convpipe")
    beam_files.write_bytes(f"{BUCKET}/x/stats.json", b'{"a": 1}\n', mime_type="text/plain")
    beam_files.write_bytes(f"{BUCKET}/x/dead_letter.jsonl", b"")  # S3 refuses Beam's multipart upload of no parts
    shard = tmp_path / "shard.gz"
    shard.write_bytes(gzip.compress(b"records" * 1000))
    beam_files.upload_file(str(shard), f"{BUCKET}/x/train/data-00000-of-00001.tfrecord.gz")
    assert keys(s3_server, "x/") == {"x/stats.json": 9, "x/dead_letter.jsonl": 0,
                                     "x/train/data-00000-of-00001.tfrecord.gz": shard.stat().st_size}  # no .writing

    assert beam_files.read_text(f"{BUCKET}/x/stats.json") == '{"a": 1}\n'
    assert beam_files.read_bytes(f"{BUCKET}/x/dead_letter.jsonl") == b""
    with beam_files.open_read(f"{BUCKET}/x/train/data-00000-of-00001.tfrecord.gz", CompressionTypes.GZIP) as f:
        assert f.read() == b"records" * 1000
    assert beam_files.match(f"{BUCKET}/x/train/data-*.tfrecord.gz") == [f"{BUCKET}/x/train/data-00000-of-00001.tfrecord.gz"]
    assert beam_files.match(f"{BUCKET}/nothing/data-*") == []
    assert beam_files.exists(f"{BUCKET}/x/stats.json") and not beam_files.exists(f"{BUCKET}/x/missing.json")

    beam_files.copy([f"{BUCKET}/x/stats.json", f"{BUCKET}/x/dead_letter.jsonl"],
                    [f"{BUCKET}/y/stats.json", f"{BUCKET}/y/dead_letter.jsonl"])
    assert keys(s3_server, "y/") == {"y/stats.json": 9, "y/dead_letter.jsonl": 0}


def test_the_endpoint_comes_from_the_environment_and_a_new_one_is_followed(s3_server, monkeypatch):
    s3_server.make_bucket("convpipe")
    beam_files.write_bytes(f"{BUCKET}/a.txt", b"one")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(Exception, match="127.0.0.1:9|Could not connect|Connect"):
        beam_files.write_bytes(f"{BUCKET}/b.txt", b"two")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    assert beam_files.read_text(f"{BUCKET}/a.txt") == "one"


def test_a_local_file_is_written_under_a_temporary_name_then_renamed(tmp_path):
    path = tmp_path / "out" / "schema.json"
    beam_files.write_bytes(str(path), b"{}\n")
    assert path.read_bytes() == b"{}\n" and sorted(p.name for p in path.parent.iterdir()) == ["schema.json"]
    assert beam_files.join(str(tmp_path), "train", "data") == str(tmp_path / "train" / "data")
    assert beam_files.join("s3://b/p/", "train", "data") == "s3://b/p/train/data"
    assert not beam_files.is_url(str(tmp_path)) and beam_files.is_url("s3://b/p")
    with pytest.raises(ValueError, match="expected a URL"):
        beam_files.upload_file(str(path), str(tmp_path / "copy"))
