"""beam_remote_writes: ingest + augment on an S3 root, the Beam workers writing the bucket vs the runner uploading.

On a remote root the Beam stages' workers write their shards and text files straight under the
execution's URL (pipeline/beam_files.py), and the runner then downloads them once into the local
working copy, to fingerprint them (the fingerprint hashes every file's bytes) and for the later
stages that read local files, and writes the marker (RemoteRoot.receive + publish(uploaded=True)).
Before, they wrote the working copy and the runner uploaded every file (RemoteRoot.publish). Sides,
alternated after a warm-up, each one ingest of the synthetic source then one augment of it, as the
runner would do them, moto's S3 server on this machine (loopback: a real bucket adds round trips
per object, and moto spends this machine's CPU on every byte):
  local          both stages on local directories, fingerprinted there: a local root (the baseline)
  upload         the same, then each execution uploaded file by file, marker last (the old way)
  workers_write  the stages write the bucket and augment reads ingest's shards from it; each
                 execution is then downloaded once, fingerprinted, and its marker written
Every side must write the same Examples (the fingerprints are compared: a difference fails the run).
Ratios: workers_write / upload and workers_write / local.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from itertools import count
from pathlib import Path

from benchmarks import data, timing
from benchmarks.remote_root import CREDENTIALS, _free_port, _start_moto
from benchmarks.report import Result

NAME = "beam_remote_writes"
DESCRIPTION = "ingest + augment on an S3 root (moto on loopback): Beam workers writing the bucket vs uploading after"

SIZES = {
    "tiny": {"num_examples": 40, "image_size": 8, "rounds": 1},
    "quick": {"num_examples": 2000, "image_size": 32, "rounds": 3},
    "full": {"num_examples": 10000, "image_size": 32, "rounds": 3},
}


def run(size: str) -> Result:
    import boto3

    from components.augment import stage as augment
    from components.ingest import stage as ingest
    from pipeline.artifacts import fingerprint_dir
    from pipeline.filesystem import RemoteRoot
    from pipeline.stage import Artifact

    s = SIZES[size]
    result = Result(NAME, DESCRIPTION, settings={"size": size, **s, "server": "moto_server on 127.0.0.1",
                                                 "runner": "DirectRunner"})
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
            config = data.pipeline_config(root, num_examples=s["num_examples"], image_size=s["image_size"],
                                          overrides=["augment.enabled=true", "augment.copies=1"])
            remote = RemoteRoot("s3://bench/root")
            remote.check()
            ids = count(1)
            written: dict[str, set] = {"local": set(), "upload": set(), "workers_write": set()}
            megabytes: list[float] = []

            def stages(side: str, remote_io: bool) -> float:
                """ingest, then augment of its output; each execution fingerprinted (and published) as the runner
                does. Returns the seconds of that, leaving out the clean-up (local copies, objects on the bucket)."""
                upstream = None
                prints, rels = [], []
                began = time.perf_counter()
                for stage in (ingest.STAGE, augment.STAGE):
                    execution = next(ids)
                    rel = f"{stage.name}/{execution}"
                    rels.append(rel)
                    inputs = {} if upstream is None else {"examples": upstream}
                    ctx = data.context(config, remote.local / stage.name, stage, inputs=inputs,
                                       name=str(execution), execution_id=execution)
                    if remote_io:
                        ctx.output_urls = {"examples": remote.url_of(f"{rel}/examples")}
                        if upstream is not None:
                            ctx.input_urls = {"examples": remote.artifact_url(upstream)}
                    stage.executor(ctx)
                    local = remote.local / rel
                    if remote_io:
                        megabytes.append(remote.receive(f"{rel}/examples", local / "examples") / 2 ** 20)
                    fingerprint = fingerprint_dir(local / "examples")
                    if side != "local":
                        remote.publish(local, rel, {"examples": fingerprint}, uploaded=remote_io)
                    prints.append(fingerprint)
                    upstream = Artifact(execution, "Examples", local / "examples", fingerprint)
                seconds = time.perf_counter() - began
                written[side].add(tuple(prints))
                for rel in rels:
                    shutil.rmtree(remote.local / rel, ignore_errors=True)
                    remote.remove(rel)
                return seconds

            seconds = timing.alternate({"local": lambda: stages("local", False),
                                        "upload": lambda: stages("upload", False),
                                        "workers_write": lambda: stages("workers_write", True)}, rounds=s["rounds"])
            if len({prints for side in written.values() for prints in side}) != 1:
                raise RuntimeError(f"the sides wrote different Examples: {written}")
            for name, values in seconds.items():
                result.sample(name, values)
            medians = {name: timing.median(values) for name, values in seconds.items()}
            result.settings["megabytes_ingest_plus_augment"] = round(sum(megabytes[:2]), 2)
            for name, value in medians.items():
                result.figure(f"{name}_seconds", value, "s", f"ingest + augment, {name}")
            result.ratio("workers_write_vs_upload", medians["workers_write"] / medians["upload"],
                         "the Beam workers writing the bucket (plus one download) vs uploading after the stage")
            result.ratio("workers_write_vs_local", medians["workers_write"] / medians["local"],
                         "an S3 root, the workers writing it, vs a local root")
            result.seconds = time.perf_counter() - started
            result.note("every side wrote the same Examples fingerprints: "
                        + ", ".join(p[:16] for p in next(iter(written["local"]))))
    finally:
        server.kill()
        server.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return result
