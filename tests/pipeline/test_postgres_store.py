"""The metadata store and run lock on a real Postgres (pgserver): lineage, revisions, advisory lock.

The same store code as SQLite's; what differs is tested here: Alembic brings an empty database to
the newest revision, a revision this convpipe does not know is refused, roots sharing one store
see only their own runs, the run lock is a session advisory lock that names its holder and dies
with it, and an unreachable server is one line naming the URL.
"""
import os
import signal
import subprocess
import textwrap
import time

import pytest
from sqlalchemy import create_engine, text

from pipeline import metadata as md
from pipeline.database import DatabaseError
from pipeline.lock import AdvisoryLock, LockHeld, run_lock
from pipeline.metadata import MetadataStore, NewArtifact
from tests.pipeline.conftest import PYTHON


def test_lineage_round_trips_and_the_schema_is_at_the_newest_revision(tmp_path, postgres_url):
    store = MetadataStore(tmp_path, url=postgres_url, root_label="s3://b/one")
    run_id = store.start_run({"a": 1}, ["convpipe", "run"])
    producer = store.start_execution(run_id, "s", params={"p": 1}, cache_key="k", code_version="v", inputs={},
                                     external_fingerprint=None, reason={})
    (tmp_path / "s" / str(producer) / "out").mkdir(parents=True)
    artifact = store.complete_execution(producer, {"out": NewArtifact("T", tmp_path / "s" / str(producer) / "out",
                                                                      "fp")})["out"]
    consumer = store.start_execution(run_id, "t", params={}, cache_key="k2", code_version="v",
                                     inputs={"in": artifact}, external_fingerprint=None, reason={})
    assert store.producer(artifact.id).id == producer and store.inputs(consumer)["in"].id == artifact.id
    assert store.find_complete("s", "k").id == producer
    with create_engine(postgres_url).connect() as db:
        assert db.execute(text("SELECT version_num FROM alembic_version")).scalar() == md.SCHEMA_VERSION
    store.close()


def test_two_roots_in_one_store_see_only_their_own_runs(tmp_path, postgres_url):
    one = MetadataStore(tmp_path / "one", url=postgres_url, root_label="s3://b/one")
    two = MetadataStore(tmp_path / "two", url=postgres_url, root_label="s3://b/two")
    run = one.start_run({}, [])
    one.start_execution(run, "s", params={}, cache_key="k", code_version="v", inputs={},
                        external_fingerprint=None, reason={})
    assert two.abandon_unfinished() == [] and two.runs() == [] and two.latest_run_id() is None
    assert [e.stage for e in one.abandon_unfinished()] == ["s"]


def test_a_store_from_a_newer_convpipe_is_refused(tmp_path, postgres_url):
    MetadataStore(tmp_path, url=postgres_url).close()
    with create_engine(postgres_url).begin() as db:
        db.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(DatabaseError, match="revision 9999 was written by a newer convpipe"):
        MetadataStore(tmp_path, url=postgres_url)


def test_an_unreachable_database_is_one_line_naming_the_url(tmp_path):
    url = "postgresql+psycopg://convpipe:secret@127.0.0.1:9/lineage"
    with pytest.raises(DatabaseError) as raised:
        MetadataStore(tmp_path, url=url)
    message = str(raised.value)
    assert "\n" not in message and "postgresql+psycopg://convpipe:***@127.0.0.1:9/lineage" in message
    assert "secret" not in message


HOLDER = textwrap.dedent("""
    import sys, time
    from pipeline.lock import AdvisoryLock
    with AdvisoryLock(sys.argv[1], "s3://b/root"):
        print("held", flush=True)
        time.sleep(120)
""")


def test_the_advisory_lock_names_its_holder_and_dies_with_it(postgres_url, subprocess_env):
    holder = subprocess.Popen([PYTHON, "-c", HOLDER, postgres_url], env=subprocess_env, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=f"holds the lock on s3://b/root: pid {holder.pid}"):
            AdvisoryLock(postgres_url, "s3://b/root").acquire()
        with AdvisoryLock(postgres_url, "s3://b/other"):  # another root of the same store is free
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        with run_lock("unused", postgres_url, "s3://b/root", wait=True, timeout=30) as lock:
            assert isinstance(lock, AdvisoryLock)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
