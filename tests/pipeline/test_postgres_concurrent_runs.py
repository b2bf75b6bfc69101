"""Two `convpipe run` started at once against one Postgres store (the team set-up's lock).

The winner blocks inside stage b until the loser has exited 75 naming it (pid and host, from the
advisory lock's holder); a third run with --wait waits for the winner and is then fully cached.
Afterwards the lineage is whole: one COMPLETE run that ran every stage, one that reused them all,
every artifact with exactly one producer, no RUNNING row left.
"""
import subprocess
import time

from sqlalchemy import create_engine, text

from tests.pipeline.conftest import PYTHON
from tests.pipeline.test_lock_and_kill import CHILD


def start(root, url, env, *extra):
    return subprocess.Popen([PYTHON, "-c", CHILD, "run", "--root", str(root), "--metadata", url,
                             "--set", "ingest.source.num_examples=4", *extra], env=env, cwd=root.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_runs_at_once_on_one_postgres_store(tmp_path, postgres_url, subprocess_env):
    block = tmp_path / "block"
    block.mkdir()
    root = tmp_path / "root"
    env = dict(subprocess_env, FAKE_BLOCK=str(block))
    runs = [start(root, postgres_url, env) for _ in range(2)]
    waiter = None
    try:
        deadline = time.monotonic() + 90
        while not (block / "started").exists():
            assert time.monotonic() < deadline and any(r.poll() is None for r in runs), [r.communicate() for r in runs]
            time.sleep(0.05)
        [winner] = [r for r in runs if str(r.pid) == (block / "started").read_text()]
        [loser] = [r for r in runs if r is not winner]
        out, err = loser.communicate(timeout=60)
        assert loser.returncode == 75, err
        assert f"another convpipe run holds the lock on {root.resolve()}: pid {winner.pid}" in err
        assert winner.poll() is None
        waiter = start(root, postgres_url, dict(subprocess_env), "--wait")
        time.sleep(1.0)
        assert waiter.poll() is None  # waiting, not failing
        (block / "release").write_text("")
        assert winner.wait(timeout=60) == 0, winner.communicate()
        out, err = waiter.communicate(timeout=90)
        assert waiter.returncode == 0, err
        assert [line.split()[1] for line in out.splitlines()[:3]] == ["CACHED"] * 3
    finally:
        for r in [*runs, waiter]:
            if r is not None and r.poll() is None:
                r.kill()
                r.wait()
    with create_engine(postgres_url).connect() as db:
        runs = db.execute(text("SELECT id, state, error FROM runs ORDER BY id")).fetchall()
        assert [(state, error) for _, state, error in runs] == [("COMPLETE", None)] * 2
        states = db.execute(text("SELECT run_id, stage, state FROM executions ORDER BY id")).fetchall()
        first, second = runs[0][0], runs[1][0]
        assert states == [(first, s, "COMPLETE") for s in "abc"] + [(second, s, "CACHED") for s in "abc"]
        producers = db.execute(text(
            "SELECT a.id, COUNT(e.id) FROM artifacts a JOIN events v ON v.artifact_id = a.id AND v.kind = 'OUTPUT' "
            "JOIN executions e ON e.id = v.execution_id AND e.state = 'COMPLETE' GROUP BY a.id")).fetchall()
        assert len(producers) == 3 and all(count == 1 for _, count in producers)
