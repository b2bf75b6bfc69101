"""Two `convpipe run` started at once on one root: one runs, the other exits 75 at once naming the
holder, and the metadata store is whole afterwards (what cron does when a run outlasts its period)."""
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.pipeline.conftest import PYTHON
from tests.pipeline.test_lock_and_kill import CHILD

TINY_REAL_RUN = ["run", "--set", "ingest.source.num_examples=24", "--set", "ingest.num_shards=1", "--to", "validate"]


def start_both(program: list[str], arguments: list[str], root: Path, env: dict) -> list[subprocess.Popen]:
    """Two identical runs, started back to back (neither waits for the other to get anywhere)."""
    return [subprocess.Popen([*program, *arguments, "--root", str(root)], env=env, cwd=root.parent,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]


def assert_store_whole(root: Path, stages: list[str]) -> None:
    """One COMPLETE run with every stage COMPLETE, each artifact published with its producer, nothing half-done."""
    db = sqlite3.connect(f"file:{root / 'metadata.sqlite'}?mode=ro", uri=True)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    runs = db.execute("SELECT id, state, ended IS NOT NULL, error FROM runs").fetchall()
    assert runs == [(1, "COMPLETE", 1, None)]
    executions = db.execute("SELECT run_id, stage, state, ended IS NOT NULL, error FROM executions ORDER BY id").fetchall()
    assert executions == [(1, stage, "COMPLETE", 1, None) for stage in stages]
    produced = db.execute(
        "SELECT a.uri, a.state, COUNT(v.id), MIN(e.state) FROM artifacts a "
        "LEFT JOIN events v ON v.artifact_id = a.id AND v.kind = 'OUTPUT' "
        "LEFT JOIN executions e ON e.id = v.execution_id GROUP BY a.id ORDER BY a.id").fetchall()
    assert [(state, outputs, producer) for _, state, outputs, producer in produced] == [("LIVE", 1, "COMPLETE")] * len(stages)
    assert all((root / uri).is_dir() for uri, *_ in produced)
    db.close()
    assert not list(root.glob("*/.tmp-*")) and not (root / ".lock.holder").exists()


def test_two_runs_at_once_fake_stages(tmp_path, subprocess_env):
    """Deterministic: the winner blocks inside stage b until the loser has exited."""
    block = tmp_path / "block"
    block.mkdir()
    root = tmp_path / "root"
    env = dict(subprocess_env, FAKE_BLOCK=str(block))
    runs = start_both([PYTHON, "-c", CHILD], ["run", "--set", "ingest.source.num_examples=4"], root, env)
    try:
        deadline = time.monotonic() + 60
        while not (block / "started").exists():       # written by the lock holder, inside stage b
            assert time.monotonic() < deadline and any(r.poll() is None for r in runs), [r.communicate() for r in runs]
            time.sleep(0.02)
        [winner] = [r for r in runs if str(r.pid) == (block / "started").read_text()]
        [loser] = [r for r in runs if r is not winner]
        out, err = loser.communicate(timeout=60)
        assert loser.returncode == 75, err
        assert winner.poll() is None                   # the loser did not wait for the winner
        assert f"another convpipe run holds the lock on {root.resolve()}: pid {winner.pid}" in err
        (block / "release").write_text("")
        out, err = winner.communicate(timeout=60)
        assert winner.returncode == 0, err
    finally:
        for r in runs:
            if r.poll() is None:
                r.kill()
                r.wait()
    assert_store_whole(root, ["a", "b", "c"])


@pytest.mark.slow
def test_two_real_convpipe_runs_at_once(tmp_path, subprocess_env):
    """`python -m convpipe.cli run` twice on a tiny real pipeline (synthetic data, ingest and validate)."""
    root = tmp_path / "root"
    runs = start_both([PYTHON, "-m", "convpipe.cli"], TINY_REAL_RUN, root, subprocess_env)
    try:
        results = [(r, *r.communicate(timeout=300)) for r in runs]
    finally:
        for r in runs:
            if r.poll() is None:
                r.kill()
    codes = sorted(r.returncode for r, _, _ in results)
    assert codes == [0, 75], [err[-2000:] for _, _, err in results]
    winner = next(r for r, _, _ in results if r.returncode == 0)
    loser_err = next(err for r, _, err in results if r.returncode == 75)
    assert f"pid {winner.pid}" in loser_err and "rerun with --wait" in loser_err
    assert "Traceback" not in loser_err
    assert_store_whole(root, ["ingest", "validate"])
    assert [p.name for p in (root / "logs").iterdir()] == ["run-1.log"]    # the loser wrote no run log
