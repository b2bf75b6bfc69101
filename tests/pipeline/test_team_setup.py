"""The team set-up end to end, on real servers: artifacts on S3 (moto's server), lineage in Postgres.

`convpipe run --root s3://convpipe/team --metadata postgresql+psycopg://...` on a small real
pipeline (synthetic data, two epochs), in a child process as a user runs it:
    - it exports a SavedModel under s3://convpipe/team/serving/convpipe/1/ that loads in a fresh
      process, and a rerun from an empty local copy (another machine) reports every stage cached;
    - killing the S3 server while train runs leaves nothing a later stage or TF Serving picks up
      (no execution COMPLETE past ingest's, no served version); after a restart the rerun resumes
      train from its backups and finishes.
moto keeps its objects in memory, so a restarted server is empty: the rerun redoes ingest, validate
and augment (the same Examples fingerprints: they are deterministic), finds train's cache key
unchanged and resumes it from the backups kept in the local work directory.
"""
import subprocess
import textwrap
import time

import pytest
from sqlalchemy import create_engine, text

from tests.pipeline.conftest import PYTHON

pytestmark = pytest.mark.slow
CLI = ["-m", "convpipe.cli"]
SMALL = ["--set", "ingest.source.num_examples=120", "--set", "ingest.num_shards=1", "--set", "train.epochs=3",
         "--set", "evaluate.thresholds={}", "--set", "export.serving_root=s3://convpipe/team/serving"]


def convpipe(url, env, *extra, wait=True):
    process = subprocess.Popen([PYTHON, *CLI, "run", "--root", "s3://convpipe/team", "--metadata", url, *SMALL,
                                *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process.communicate(timeout=600) + (process.returncode,) if wait else process


def states(out: str) -> dict:
    return {line.split()[0]: line.split()[1] for line in out.splitlines() if line and not line.startswith(("run ", " "))}


def child_env(subprocess_env, server, cache):
    return {**subprocess_env, **server.env(), "CONVPIPE_CACHE": str(cache)}


LOAD = textwrap.dedent("""
    import sys
    import tensorflow as tf
    from pipeline.filesystem import remote_versions, sync_served
    assert remote_versions(sys.argv[1]) == [1], remote_versions(sys.argv[1])
    model = tf.saved_model.load(str(sync_served(sys.argv[1]) / "1"))
    print(sorted(model.signatures))
""")


def test_killed_s3_leaves_nothing_then_the_rerun_resumes_exports_and_reruns_cached(
        s3_server, postgres_url, remote_cache, subprocess_env, tmp_path):
    """One pipeline for both Done-when items (a real run costs a minute on CI): kill, resume, export, cache."""
    s3_server.make_bucket("convpipe")
    env = child_env(subprocess_env, s3_server, remote_cache)
    run = convpipe(postgres_url, env, wait=False)
    try:
        deadline = time.monotonic() + 400
        while not any(remote_cache.glob("*/train/.work/*/backups/*")):  # train has finished an epoch
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "train never wrote a backup"
            time.sleep(0.02)
        s3_server.kill()
        out, err = run.communicate(timeout=400)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 1, out + err
    assert states(out)["train"] == "FAILED" and "export" not in states(out), out
    with create_engine(postgres_url).connect() as db:
        complete = db.execute(text("SELECT stage FROM executions WHERE state = 'COMPLETE' ORDER BY id")).scalars().all()
    assert complete == ["ingest", "validate", "augment"]  # published before the kill; nothing after it

    s3_server.start()
    s3_server.make_bucket("convpipe")
    out, err, code = convpipe(postgres_url, env)
    assert code == 0, out + err
    assert set(states(out).values()) == {"COMPLETE"}, out
    assert "retrying after execution 4 failed" in out
    assert "resuming from epoch" in err, err  # train's own line: it went on from the backup

    fresh = {**env, "CONVPIPE_CACHE": str(tmp_path / "other-machine")}
    out, err, code = convpipe(postgres_url, fresh)
    assert code == 0 and set(states(out).values()) == {"CACHED"}, out + err
    loaded = subprocess.run([PYTHON, "-c", LOAD, "s3://convpipe/team/serving/convpipe"],
                            env={**fresh, "CONVPIPE_CACHE": str(tmp_path / "loader")}, capture_output=True,
                            text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    assert "serving_default" in loaded.stdout
