"""Two processes on one root, and a run killed with SIGKILL in the middle of a stage."""
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.lock import LockHeld, RootLock
from pipeline.metadata import MetadataStore
from tests.pipeline.conftest import PYTHON

# A child that runs the fake pipeline through the real CLI.
CHILD = textwrap.dedent("""
    import sys
    from convpipe import cli
    from tests.pipeline.fake_stages import STAGES
    sys.exit(cli.main(sys.argv[1:], stages=STAGES))
""")


def cli_child(args, env):
    """Started in the root's parent, so no ./pipeline_config.json is picked up: built-in defaults."""
    root = Path(args[args.index("--root") + 1])
    return subprocess.Popen([PYTHON, "-c", CHILD, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=root.parent)


def wait_for(path: Path, process, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.fixture
def blocked_run(tmp_path, subprocess_env):
    """A CLI run holding the root, blocked inside stage b until <block>/release exists."""
    block = tmp_path / "block"
    block.mkdir()
    env = dict(subprocess_env, FAKE_BLOCK=str(block), FAKE_CALLS=str(tmp_path / "calls.txt"))
    root = tmp_path / "root"
    child = cli_child(["run", "--root", str(root), "--set", "ingest.source.num_examples=4"], env)
    wait_for(block / "started", child)
    yield child, root, block
    if child.poll() is None:
        child.kill()
        child.wait()


def test_second_run_exits_75_naming_the_holder(blocked_run, subprocess_env):
    child, root, block = blocked_run
    second = cli_child(["run", "--root", str(root)], subprocess_env)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 75, err
    assert f"pid {child.pid}" in err and "--wait" in err
    # the same, in this process, through the lock itself
    with pytest.raises(LockHeld) as caught:
        RootLock(root).acquire()
    assert caught.value.holder["pid"] == child.pid
    (block / "release").write_text("")
    assert child.wait(timeout=60) == 0


def test_wait_takes_the_lock_when_the_holder_finishes(blocked_run, subprocess_env, tmp_path):
    child, root, block = blocked_run
    waiter = cli_child(["run", "--root", str(root), "--wait", "--set", "ingest.source.num_examples=4"],
                       subprocess_env)
    time.sleep(0.5)
    assert waiter.poll() is None    # still waiting
    (block / "release").write_text("")
    assert child.wait(timeout=60) == 0
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    with MetadataStore(root) as store:
        states = [[e.state for e in store.executions(r.id)] for r in store.runs()]
    assert states == [["COMPLETE"] * 3, ["CACHED"] * 3]


def test_sigkill_mid_stage_then_rerun_completes(blocked_run, subprocess_env, tmp_path):
    child, root, block = blocked_run
    tmp_dirs = list(root.glob("b/.tmp-*"))
    assert len(tmp_dirs) == 1 and (tmp_dirs[0] / "result" / "partial.txt").exists()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)

    # nothing the killed run wrote passes for complete
    with MetadataStore(root) as store:
        [run] = store.runs()
        assert run.state == "RUNNING"
        killed = store.executions(run.id)
        assert [(e.stage, e.state) for e in killed] == [("a", "COMPLETE"), ("b", "RUNNING")]
        assert store.find_complete("b", killed[1].cache_key) is None

    rerun = cli_child(["run", "--root", str(root), "--set", "ingest.source.num_examples=4", "--json"],
                      subprocess_env)
    out, err = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, err
    assert not list(root.glob("*/.tmp-*"))
    with MetadataStore(root) as store:
        first, second = store.runs()
        assert first.state == "ABANDONED"
        assert store.execution(killed[1].id).state == "ABANDONED"
        assert [(e.stage, e.state) for e in store.executions(second.id)] == [
            ("a", "CACHED"), ("b", "COMPLETE"), ("c", "COMPLETE")]
        b = store.executions(second.id)[1]
        assert b.reason["retry_of"] == killed[1].id
        result = store.outputs(b.id)["result"].uri
    assert sorted(p.name for p in result.iterdir()) == ["sum.txt"]    # no half-written leftovers
    assert (result / "sum.txt").read_text() == str((0 + 1 + 2 + 3) * 8)
    # the killed run never got past a's executor call
    assert (tmp_path / "calls.txt").read_text().split() == ["a"]
    assert "was left RUNNING by a process that died" in (root / "logs" / f"run-{second.id}.log").read_text()


def test_lock_in_this_process_refuses_a_second_holder(tmp_path):
    with RootLock(tmp_path):
        with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
            RootLock(tmp_path).acquire()
    with RootLock(tmp_path):      # released: free again
        pass


def test_sigterm_records_the_execution_failed_and_exits_143(blocked_run, subprocess_env):
    child, root, block = blocked_run
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 143, err
    assert not list(root.glob("*/.tmp-*"))
    with MetadataStore(root) as store:
        [run] = store.runs()
        assert run.state == "FAILED" and "Interrupted" in run.error
        b = store.executions(run.id)[1]
        assert (b.stage, b.state, b.error) == ("b", "FAILED", "interrupted (Interrupted: signal SIGTERM)")
