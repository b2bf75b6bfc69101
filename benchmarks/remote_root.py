"""remote_root: what a root on S3 costs a stage's inputs and outputs, against the same files on local disk.

A remote root (pipeline/filesystem.py) keeps stages on local files: an input is downloaded once into
the local working copy through fsspec (s3fs), an output uploaded once with its marker last. Sides,
alternated after a warm-up, on one Examples artifact from the ingest stage (gzip TFRecord shards,
schema.json, stats.json) and moto's S3 server on this machine (loopback, no network latency: a real
bucket adds round trips per object):
  read_local   one pass of tf.data over the artifact's train shards (read, gunzip, parse): what a
               training epoch's input costs whatever the root is (the baseline)
  fetch        RemoteRoot.fetch of the whole execution directory into an empty local copy: the
               extra cost of the first epoch of a stage on another machine than the producer's
  publish      RemoteRoot.publish of the same directory (every file, then the marker)
  copy_local   shutil.copytree of the same directory: publishing to a local root is one rename, so
               this is the upper bound of what a local root would spend moving the same bytes
Ratios: fetch / read_local (how many epochs' input reading one fetch is worth) and publish /
copy_local.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import data, timing
from benchmarks.report import Result

NAME = "remote_root"
DESCRIPTION = "an S3 root (moto on loopback): fetching and publishing an Examples artifact vs reading it locally"

SIZES = {
    "tiny": {"num_examples": 40, "image_size": 8, "rounds": 2},
    "quick": {"num_examples": 2000, "image_size": 32, "rounds": 4},
    "full": {"num_examples": 10000, "image_size": 32, "rounds": 5},
}
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto(port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"moto_server did not start on port {port} (pip install 'moto[server]')")
            time.sleep(0.1)


def run(size: str) -> Result:
    import boto3
    import tensorflow as tf

    from components import examples as ex
    from pipeline.filesystem import RemoteRoot

    s = SIZES[size]
    result = Result(NAME, DESCRIPTION, settings={"size": size, **s, "server": "moto_server on 127.0.0.1"})
    port = _free_port()
    saved = {key: os.environ.get(key) for key in [*CREDENTIALS, "AWS_ENDPOINT_URL", "CONVPIPE_CACHE"]}
    started = time.perf_counter()
    server = _start_moto(port)
    try:
        with tempfile.TemporaryDirectory(prefix="convpipe-bench-") as tmp:
            root = Path(tmp)
            os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
                              CONVPIPE_CACHE=str(root / "cache"))
            boto3.client("s3").create_bucket(Bucket="bench")
            config = data.pipeline_config(root, num_examples=s["num_examples"], image_size=s["image_size"])
            examples = data.ingest(config, root)
            execution_dir = examples.parent  # <stage>/<execution_id>/: what publish and fetch move
            files = [p for p in execution_dir.rglob("*") if p.is_file()]
            megabytes = sum(p.stat().st_size for p in files) / 2 ** 20
            result.settings.update({"files": len(files), "megabytes": round(megabytes, 2)})
            remote = RemoteRoot("s3://bench/root")
            remote.check()
            shards = ex.shard_files(examples, "train")
            spec = ex.feature_spec(ex.read_schema(examples)["task"])
            rounds = iter(range(10 ** 6))

            def read_local():
                dataset = tf.data.TFRecordDataset(shards, compression_type="GZIP").map(
                    lambda record: tf.io.parse_single_example(record, spec))
                for _ in dataset:
                    pass

            def publish():
                remote.publish(execution_dir, f"ingest/{next(rounds)}", {"examples": "bench"})

            def fetch():
                remote._complete.clear()
                shutil.rmtree(remote.local, ignore_errors=True)
                remote.fetch("ingest/0")

            def copy_local():
                target = root / "copies" / str(next(rounds))
                shutil.copytree(execution_dir, target)

            publish()  # ingest/0: what fetch reads
            seconds = timing.alternate({"read_local": read_local, "fetch": fetch, "publish": publish,
                                        "copy_local": copy_local}, rounds=s["rounds"])
            for name, values in seconds.items():
                result.sample(name, values)
            medians = {name: timing.median(values) for name, values in seconds.items()}
            result.figure("fetch_megabytes_per_second", megabytes / medians["fetch"], "MiB/s",
                          "downloading the artifact into an empty local copy")
            result.figure("publish_megabytes_per_second", megabytes / medians["publish"], "MiB/s",
                          "uploading it, marker last")
            result.ratio("fetch_vs_read_local", medians["fetch"] / medians["read_local"],
                         "one fetch, in epochs of reading the train shards locally")
            result.ratio("publish_vs_copy_local", medians["publish"] / medians["copy_local"],
                         "publishing to S3 vs copying the same files on local disk")
            result.seconds = time.perf_counter() - started
            result.note("a fetch is paid once per machine and artifact; every later epoch and stage reads the local copy")
    finally:
        server.kill()
        server.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return result
