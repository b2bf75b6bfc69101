"""One LocalCluster per convpipe process: reused by the next pipeline of the same size, replaced for
another size, and closed with the process (a normal end, an error, SIGTERM or even SIGKILL).

Real `distributed.LocalCluster`s of one worker on 127.0.0.1 (no mocks), running tiny pipelines
that never import TensorFlow, and their workers preload only `json` instead of Beam and
TensorFlow, so a cluster starts in a few seconds (tests/components/ingest/test_dask_runner.py
runs the stages on the real preload); a test is skipped only when a cluster cannot start, with
the reason.
"""
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import apache_beam as beam
import psutil
import pytest

from pipeline import beam as beam_lib
from pipeline import beam_dask
from pipeline.config import parse_config

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # each test starts worker processes: a few seconds each here


def _double(x):
    return 2 * x


def _run_tiny(workers: int, log: logging.Logger) -> None:
    pipeline = beam_lib.make_pipeline(parse_config({"beam": {"runner": "dask", "dask": {"workers": workers}}}))
    _ = pipeline | beam.Create([1, 2, 3]) | beam.Map(_double)
    beam_lib.run(pipeline, "tiny", log)


LIGHT_PRELOAD = "json"


@pytest.fixture
def shared(monkeypatch):
    """The process's clusters, closed after the test (and none left from an earlier test)."""
    monkeypatch.setattr(beam_dask, "WORKER_PRELOAD", LIGHT_PRELOAD)
    beam_dask.SHARED.close_all()
    yield beam_dask.SHARED
    beam_dask.SHARED.close_all()


def _worker_pids(address: str) -> list[int]:
    import distributed

    with distributed.Client(address, timeout=30) as client:
        return sorted(client.run(os.getpid).values())


def _gone(pids, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if psutil.pid_exists(pid)
                 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.5)
    return False


def test_pipelines_of_one_size_share_one_cluster_and_another_size_replaces_it(shared, caplog):
    log = logging.getLogger("test_beam_dask_shared")
    try:
        with caplog.at_level(logging.INFO, logger=log.name):
            _run_tiny(1, log)
    except beam_lib.BeamError as exc:
        reason = f"dask LocalCluster could not start: {exc}"
        print(f"\nSKIPPING: {reason}", file=sys.stderr)
        pytest.skip(reason)
    (first,) = shared.addresses().values()
    pids = _worker_pids(first)
    with caplog.at_level(logging.INFO, logger=log.name):
        _run_tiny(1, log)
    assert list(shared.addresses().values()) == [first]
    assert _worker_pids(first) == pids  # the same worker processes, not new ones at the old address
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dask: ")]
    assert messages == [f"dask: LocalCluster of 1 worker process(es) at {first} (kept for this process's later "
                        f"Beam pipelines)",
                        f"dask: reusing the LocalCluster of 1 worker process(es) at {first} (started by an earlier "
                        f"Beam pipeline of this process)"]
    assert first.startswith("tcp://127.0.0.1:")
    local = shared._clusters[beam_dask.Size(1, 1)]
    assert local.scheduler.http_server.address == "127.0.0.1"  # its HTTP routes (no dashboard) too
    listening = {c.laddr.ip for pid in pids for c in psutil.Process(pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}, f"worker processes listen on {listening}"

    caplog.clear()
    with caplog.at_level(logging.INFO, logger=log.name):
        _run_tiny(2, log)
    sizes = shared.addresses()
    assert list(sizes) == [beam_dask.Size(2, 1)] and sizes[beam_dask.Size(2, 1)] != first
    assert any("closing the LocalCluster of 1 worker process(es)" in r.getMessage() for r in caplog.records)
    assert _gone(pids)
    new_pids = _worker_pids(sizes[beam_dask.Size(2, 1)])
    shared.close_all()
    assert shared.addresses() == {} and _gone(new_pids)


def test_a_cluster_that_lost_its_workers_is_replaced(shared, caplog):
    log = logging.getLogger("test_beam_dask_shared")
    _run_tiny(1, log)
    (address,) = shared.addresses().values()
    local = shared._clusters[beam_dask.Size(1, 1)]
    local.close()  # as if it had broken under us
    with caplog.at_level(logging.INFO, logger=log.name):
        _run_tiny(1, log)
    (replacement,) = shared.addresses().values()
    assert replacement != address
    assert any(f"the LocalCluster at {address} has stopped" in r.getMessage() for r in caplog.records)


SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    import apache_beam as beam
    import distributed
    from pipeline import beam as beam_lib, beam_dask
    from pipeline.config import parse_config
    from pipeline.console import sigterm_interrupts

    def double(x):
        return 2 * x

    if __name__ == "__main__":
        how = sys.argv[1]
        beam_dask.WORKER_PRELOAD = "json"  # not Beam and TensorFlow: this pipeline needs neither
        with sigterm_interrupts():  # as the convpipe CLI runs
            pipeline = beam_lib.make_pipeline(parse_config({"beam": {"runner": "dask", "dask": {"workers": 1}}}))
            _ = pipeline | beam.Create([1, 2]) | beam.Map(double)
            beam_lib.run(pipeline, "tiny")
            (address,) = beam_dask.SHARED.addresses().values()
            with distributed.Client(address) as client:
                pids = list(client.run(os.getpid).values())
            print(json.dumps(pids), flush=True)
            if how == "error":
                raise RuntimeError("a later stage failed")
            if how in ("sigterm", "sigkill"):
                time.sleep(120)
""")


@pytest.mark.parametrize("how", ["normal", "error", "sigterm", "sigkill"])
def test_the_cluster_ends_with_the_process(tmp_path, how):
    script = tmp_path / "one_pipeline.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, str(script), how], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=tmp_path)
    try:
        line = process.stdout.readline()
        if not line:
            _, err = process.communicate(timeout=60)
            pytest.fail(f"the script printed no worker pids; stderr:\n{err[-3000:]}")
        pids = json.loads(line)
        assert pids and all(psutil.pid_exists(pid) for pid in pids)
        if how == "sigterm":
            process.send_signal(signal.SIGTERM)
        elif how == "sigkill":
            process.kill()
        _, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    expected = {"normal": 0, "error": 1, "sigterm": 1, "sigkill": -signal.SIGKILL}[how]
    assert process.returncode == expected, err[-3000:]
    assert _gone(pids), f"worker processes {pids} still running after the process ended ({how})"
    assert "Traceback" not in err or how in ("error", "sigterm"), err[-3000:]
    if how == "sigterm":
        assert "Interrupted: signal SIGTERM" in err


def _loaded_and_filtered():
    import logging as logs

    return ({name: name in sys.modules for name in ("apache_beam", "tensorflow")},
            [f.__name__ for f in logs.getLogger().filters if hasattr(f, "__name__")])


def test_workers_import_beam_and_tensorflow_as_they_start_and_end_once_closed():
    """The real preload (pipeline/beam_dask_worker.py), before any task has run."""
    import distributed

    beam_dask.SHARED.close_all()
    try:
        with beam_dask.SHARED.use(beam_dask.Size(1, 1)) as address:
            with distributed.Client(address, timeout=30) as client:
                (state,) = client.run(_loaded_and_filtered).values()
                pids = list(client.run(os.getpid).values())
    finally:
        beam_dask.SHARED.close_all()
    loaded, filters = state
    assert loaded == {"apache_beam": True, "tensorflow": True}
    assert "_drop_beam_bigquery_notice" in filters
    assert _gone(pids)
