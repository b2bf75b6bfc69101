"""The metadata store: transactions, lineage queries, abandoned executions, two writers."""
import subprocess
import textwrap

import pytest

from pipeline import metadata as md
from pipeline.metadata import MetadataStore, NewArtifact
from tests.pipeline.conftest import PYTHON


def sql(store, statement, *params):
    """Rows of one raw SQL statement on the store's own engine."""
    with store._engine.connect() as db:
        return db.exec_driver_sql(statement, params).fetchall()


def start(store, run_id, stage="s", key="k", inputs=None):
    return store.start_execution(run_id, stage, params={"p": 1}, cache_key=key, code_version="v",
                                 inputs=inputs or {}, external_fingerprint=None, reason={"summary": "test"})


def test_failed_transaction_leaves_nothing(tmp_path):
    store = MetadataStore(tmp_path)
    with pytest.raises(ZeroDivisionError):
        with store.transaction() as db:
            db.exec_driver_sql("INSERT INTO runs (started, state, config, argv) VALUES (1, 'RUNNING', '{}', '[]')")
            1 / 0
    assert store.runs() == []
    assert store.latest_run_id() is None


def test_complete_execution_records_artifacts_and_events_together(tmp_path):
    store = MetadataStore(tmp_path)
    run_id = store.start_run({"a": 1}, ["convpipe", "run"])
    producer = start(store, run_id)
    out_dir = tmp_path / "s" / str(producer) / "out"
    out_dir.mkdir(parents=True)
    published = store.complete_execution(producer, {"out": NewArtifact("T", out_dir, "fp1", {"n": 3})})
    artifact = published["out"]
    assert artifact.uri == out_dir.resolve() and artifact.properties == {"n": 3}
    consumer = start(store, run_id, stage="t", inputs={"in": artifact})
    assert store.inputs(consumer)["in"].id == artifact.id
    assert store.producer(artifact.id).id == producer
    assert store.execution(consumer).inputs == {"in": "fp1"}
    assert store.execution(producer).state == md.COMPLETE
    # stored relative to the root, so a moved root still resolves
    row = sql(store, "SELECT uri FROM artifacts WHERE id=?", artifact.id)[0]
    assert row[0] == f"s/{producer}/out"
    assert store.find_complete("s", "k").id == producer
    assert store.find_complete("s", "other") is None


def test_completing_an_abandoned_execution_is_refused_and_rolled_back(tmp_path):
    store = MetadataStore(tmp_path)
    run_id = store.start_run({}, [])
    execution = start(store, run_id)
    abandoned = store.abandon_unfinished()
    assert [e.id for e in abandoned] == [execution]
    assert store.run(run_id).state == md.ABANDONED
    with pytest.raises(RuntimeError, match="no longer RUNNING"):
        store.complete_execution(execution, {"out": NewArtifact("T", tmp_path / "x", "fp")})
    assert sql(store, "SELECT COUNT(*) FROM artifacts")[0][0] == 0
    assert store.outputs(execution) == {}


def test_cache_lookup_skips_executions_whose_outputs_are_gone(tmp_path):
    store = MetadataStore(tmp_path)
    run_id = store.start_run({}, [])
    old, new = start(store, run_id), start(store, run_id)
    for execution in (old, new):
        (tmp_path / str(execution)).mkdir()
        store.complete_execution(execution, {"o": NewArtifact("T", tmp_path / str(execution), "fp")})
    assert store.find_complete("s", "k").id == new
    (tmp_path / str(new)).rmdir()
    assert store.find_complete("s", "k").id == old


WRITER = textwrap.dedent("""
    import sys
    from pipeline.metadata import MetadataStore
    store = MetadataStore(sys.argv[1])
    for i in range(40):
        run = store.start_run({"writer": sys.argv[2], "i": i}, [])
        store.start_execution(run, "s", params={}, cache_key=sys.argv[2], code_version="v", inputs={},
                              external_fingerprint=None, reason={})
        store.end_run(run, "COMPLETE")
""")


def test_two_processes_write_without_losing_or_corrupting_rows(tmp_path, subprocess_env):
    MetadataStore(tmp_path).close()
    writers = [subprocess.Popen([PYTHON, "-c", WRITER, str(tmp_path), name], env=subprocess_env)
               for name in ("w1", "w2")]
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    store = MetadataStore(tmp_path)
    runs = store.runs()
    assert len(runs) == 80 and {r.state for r in runs} == {md.COMPLETE}
    assert sql(store, "PRAGMA integrity_check")[0][0] == "ok"
    assert sql(store, "PRAGMA journal_mode")[0][0] == "wal"
    counts = dict(sql(store, "SELECT cache_key, COUNT(*) FROM executions GROUP BY cache_key"))
    assert counts == {"w1": 40, "w2": 40}


def test_head_revision_constant_is_alembic_head():
    """A store at HEAD_REVISION opens without Alembic: the constant must move with every new migration."""
    from pipeline import database

    assert database.HEAD_REVISION == database.head_revision()


def test_a_store_opened_twice_is_at_head_and_keeps_its_rows(tmp_path):
    from pipeline import database

    store = MetadataStore(tmp_path / "metadata.sqlite")
    run_id = store.start_run({"p": 1}, [])
    store = MetadataStore(tmp_path / "metadata.sqlite")
    with store._engine.connect() as connection:
        assert database.is_at_head(connection)
    assert [r[0] for r in sql(store, "SELECT id FROM runs")] == [run_id]
