"""ingest and augment on an s3:// root: the Beam workers write the shards to S3 themselves.

On real servers from setup.py's test extras: moto's S3 server (tests/servers.py) and, for the
cluster case, a 2-worker `distributed.LocalCluster` started after the AWS variables point at
that server (its worker processes inherit them, as a real cluster's workers need them). Each
stage's executor is wrapped to look at the root the moment it returns, before the runner
publishes: its local output directory is still empty, the shards are on the bucket, and there is
no `_COMPLETE.json` yet. The Examples fingerprints equal a local root's on the DirectRunner.
"""
import dataclasses
import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from PIL import Image

from components.augment import stage as augment
from components.ingest import stage as ingest
from pipeline import metadata as md
from pipeline.config import parse_config
from pipeline.filesystem import MARKER
from pipeline.runner import Runner

ROOT = "s3://convpipe/team"
REPO = Path(__file__).resolve().parents[3]
SYNTHETIC = {"ingest": {"task": "classification", "num_shards": 2,
                        "source": {"name": "synthetic", "num_examples": 40, "image_size": 12, "num_classes": 3},
                        "splits": {"train": 0.6, "eval": 0.2, "test": 0.2}},
             "augment": {"enabled": True, "copies": 1, "horizontal_flip": True, "brightness": 0.1}}
SEEN: dict[str, dict] = {}
"""Stage name -> what the root held when its executor returned (filled by `_looking`)."""


def listing(endpoint: str, prefix: str) -> dict[str, int]:
    client = boto3.client("s3", endpoint_url=endpoint)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="convpipe", Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def _looking(stage):
    """The stage, with an executor that records the root's state right after the real one returns."""
    def executor(ctx):
        stage.executor(ctx)
        if not ctx.output_urls:
            return
        url = ctx.output_urls["examples"]
        SEEN[stage.name] = {
            "url": url,
            "local_files": [p for p in ctx.outputs["examples"].rglob("*") if p.is_file()],
            "remote": listing(os.environ["AWS_ENDPOINT_URL"], url.removeprefix("s3://convpipe/").rsplit("/", 1)[0] + "/"),
        }
    return dataclasses.replace(stage, executor=executor)


STAGES = [_looking(ingest.STAGE), _looking(augment.STAGE)]


def _config(tmp_path, beam=None, **changes):
    data = {**SYNTHETIC, "pipeline": {"metadata": f"sqlite:///{tmp_path / 'lineage.sqlite'}"}}
    if beam:
        data["beam"] = beam
    for section, values in changes.items():
        data[section] = {**data.get(section, {}), **values}
    return parse_config(data)


def fingerprints(result, store_runner) -> dict[str, str]:
    with store_runner.open_store() as store:
        return {o.stage: next(iter(store.outputs(o.execution_id).values())).fingerprint for o in result.outcomes}


@pytest.fixture(scope="module")
def on_a_local_root(tmp_path_factory):
    """The DirectRunner's ingest and augment of SYNTHETIC on a local root: the fingerprints to match."""
    tmp = tmp_path_factory.mktemp("local-root")
    config = parse_config(SYNTHETIC)
    runner = Runner(config, STAGES, tmp / "root")
    result = runner.run()
    assert result.ok, result.error
    return fingerprints(result, runner)


def _check_written_by_the_workers(stage: str) -> None:
    seen = SEEN[stage]
    keys = [k for k in seen["remote"] if k.startswith(seen["url"].removeprefix("s3://convpipe/"))]
    assert seen["local_files"] == [], f"{stage} wrote into the local working copy: {seen['local_files']}"
    assert sum(k.endswith(".tfrecord.gz") for k in keys) == 6  # 2 shards x 3 splits, on the bucket
    assert any(k.endswith("/schema.json") for k in keys) and any(k.endswith("/dead_letter.jsonl") for k in keys)
    assert not any(k.endswith(MARKER) for k in seen["remote"])  # not an artifact until the runner says so


def test_the_workers_write_shards_to_s3_with_a_local_roots_fingerprints(s3_server, remote_cache, tmp_path,
                                                                       on_a_local_root, monkeypatch):
    s3_server.make_bucket("convpipe")
    SEEN.clear()
    runner = Runner(_config(tmp_path), STAGES, ROOT)
    result = runner.run()
    assert result.ok, result.error
    assert fingerprints(result, runner) == on_a_local_root
    for stage in ("ingest", "augment"):
        _check_written_by_the_workers(stage)
    keys = listing(s3_server.endpoint, "team/")
    assert {"team/ingest/1/" + MARKER, "team/augment/2/" + MARKER} <= set(keys)
    assert not [k for k in keys if k.endswith(".writing")]
    local = runner.root / "augment" / "2"  # the one download that fingerprinted it is train's local copy
    assert (local / MARKER).is_file() and len(list(local.glob("examples/*/data-*.tfrecord.gz"))) == 6

    # Another machine (an empty working copy) reruns augment: it reads ingest's shards from the bucket
    # through Beam's filesystems and never downloads ingest's execution.
    monkeypatch.setenv("CONVPIPE_CACHE", str(tmp_path / "other-machine"))
    SEEN.clear()
    again = Runner(_config(tmp_path), STAGES, ROOT)
    forced = again.run(from_stage="augment", force=True)
    assert forced.ok, forced.error
    assert [o.state for o in forced.outcomes] == [md.COMPLETE]
    assert fingerprints(forced, again)["augment"] == on_a_local_root["augment"]
    assert SEEN["augment"]["local_files"] == []
    assert not (again.root / "ingest").exists()


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_stage_that_fails_after_its_workers_wrote_leaves_nothing_on_the_bucket(s3_server, remote_cache, tmp_path):
    """ingest writes every file, then fails on the share of bad records: the runner removes its prefix."""
    s3_server.make_bucket("convpipe")
    images = tmp_path / "images"
    for name, colour in (("cat", (200, 10, 10)), ("dog", (10, 200, 10))):
        (images / name).mkdir(parents=True)
        (images / name / "0.png").write_bytes(_png(colour))
        (images / name / "broken.png").write_text("not an image\n")
    SEEN.clear()
    config = _config(tmp_path, ingest={"task": "classification", "num_shards": 1, "max_bad_fraction": 0.0,
                                       "source": {"name": "image_folder", "path": str(images)}})
    result = Runner(config, STAGES, ROOT).run(to_stage="ingest")
    assert not result.ok and "more than ingest.max_bad_fraction=0" in result.error
    assert "ingest" not in SEEN  # it failed inside the executor, after the Beam job had written the files
    assert listing(s3_server.endpoint, "team/ingest/") == {}


@pytest.fixture
def cluster(s3_server):
    """2 worker processes started with the AWS variables of this test's S3 server in their environment."""
    try:
        import distributed

        local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                         dashboard_address=None, silence_logs=logging.ERROR)
    except Exception as exc:
        reason = f"dask LocalCluster could not start: {type(exc).__name__}: {exc}"
        print(f"\nSKIPPING: {reason}", file=sys.stderr)
        pytest.skip(reason)
    with local:
        yield local


@pytest.mark.slow  # two worker processes import TensorFlow: 20 to 60 s here
def test_on_a_2_worker_dask_cluster_the_workers_write_s3_with_the_same_fingerprints(
        s3_server, cluster, remote_cache, tmp_path, on_a_local_root):
    s3_server.make_bucket("convpipe")
    SEEN.clear()
    config = _config(tmp_path, beam={"runner": "dask", "dask": {"address": cluster.scheduler_address}})
    runner = Runner(config, STAGES, ROOT)
    result = runner.run()
    assert result.ok, result.error
    assert fingerprints(result, runner) == on_a_local_root
    for stage in ("ingest", "augment"):
        _check_written_by_the_workers(stage)
    assert len(cluster.scheduler_info["workers"]) == 2


@pytest.mark.slow  # two CLI runs of a small ingest
def test_a_killed_ingest_leaves_no_marker_and_the_next_run_removes_what_its_workers_wrote(s3_server, remote_cache,
                                                                                        tmp_path):
    s3_server.make_bucket("convpipe")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CONVPIPE_PROGRESS": "plain"}  # the AWS variables of the server
    command = [sys.executable, "-m", "convpipe.cli", "run", "--root", ROOT, "--to", "ingest",
               "--metadata", f"sqlite:///{tmp_path / 'lineage.sqlite'}",
               "--set", "ingest.source.num_examples=300", "--set", "ingest.num_shards=30"]  # 90 shards: a long window
    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not any(k.endswith(".tfrecord.gz") for k in listing(s3_server.endpoint, "team/ingest/1/")):
            assert run.poll() is None, "ingest ended before any shard reached the bucket"
            assert time.monotonic() < deadline, "no shard reached the bucket"
            time.sleep(0.05)
    finally:
        run.kill()
        run.wait()
    written = listing(s3_server.endpoint, "team/ingest/1/")
    assert written and f"team/ingest/1/{MARKER}" not in written  # shards on the bucket, not an artifact

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "execution 1 (ingest) of run 1 was left RUNNING by a process that died" in again.stdout + again.stderr
    assert listing(s3_server.endpoint, "team/ingest/1/") == {}
    assert f"team/ingest/2/{MARKER}" in listing(s3_server.endpoint, "team/ingest/2/")
