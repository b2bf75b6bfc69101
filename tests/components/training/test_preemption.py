"""Preemption of a two-worker run: SIGKILL of one worker fails the other within the heartbeat bound
and the restarted pair resumes from the last step backup; SIGTERM saves one coordinated backup
that the restarted pair resumes from without repeating a step."""
import json
import re
import signal
import time

import pytest

from pipeline import metadata as md
from tests.components.cluster_fixtures import Cluster, finish

COUNTS = {"train": 96, "eval": 12, "test": 12}
STEPS_PER_EPOCH = 24  # 96 examples, batch 4
SAVE_FREQ = 5
HEARTBEAT_S = 4


def global_step(epoch: int, step: int) -> int:
    return (epoch - 1) * STEPS_PER_EPOCH + step


def train_executions(root):
    from pipeline.metadata import MetadataStore

    with MetadataStore(root, create=False) as store:
        runs = store.runs()
        executions = [e for run in runs for e in store.executions(run.id) if e.stage == "train"]
        outputs = {e.id: store.outputs(e.id) for e in executions if e.state == md.COMPLETE}
    return executions, outputs


def test_preempted_names_where_every_worker_stopped():
    from components.training.preemption import PREEMPTED_EXIT, Preempted

    message = str(Preempted(epoch=2, step=7, global_step=31))
    assert "after epoch 2, step 7 (global step 31)" in message and "rerun to resume" in message
    assert PREEMPTED_EXIT == 128 + signal.SIGTERM


def test_a_collective_aborted_by_a_lost_worker_is_phrased_for_the_operator(monkeypatch, tmp_path):
    import tensorflow as tf

    from components.training.worker import lost_worker_message

    error = tf.errors.UnavailableError(None, None, "{{function_node x}} Collective ops is aborted by: Error reported "
                                       "from /job:worker/task:1: The following tasks are unhealthy (stopped sending "
                                       "heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed.")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert lost_worker_message(error, tmp_path) is None  # one machine: not a cluster problem
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}))
    message = lost_worker_message(error, tmp_path)
    assert message.startswith("train: the cluster lost a worker (UnavailableError: Error reported from /job:worker/task:1: "
                              "The following tasks are unhealthy (stopped sending heartbeats): /job:worker/replica:0/task:1)")
    assert message.endswith(f"resumes from the newest backup under {tmp_path / 'backups'}")
    assert lost_worker_message(ValueError("x"), tmp_path) is None


@pytest.mark.slow
def test_a_killed_worker_fails_the_other_within_the_heartbeat_and_the_pair_resumes(tmp_path):
    cluster = Cluster(tmp_path, COUNTS, epochs=2, batch_size=4, save_freq_steps=SAVE_FREQ, num_sample_images=0,
                      cluster={"heartbeat_timeout_s": HEARTBEAT_S, "collective_timeout_s": 60})
    chief, worker = cluster.start(1)
    backup = cluster.wait_for("chief-1", r"step backup ckpt-\d+ at epoch (\d+), step (\d+)", chief)
    backed_up = global_step(*map(int, backup.groups()))
    worker.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    codes = finish(chief, timeout=HEARTBEAT_S + 60)  # hangs no longer than the heartbeat (plus slack)
    failed_after = time.monotonic() - killed
    print(f"the chief's run failed {failed_after:.1f} s after its peer was killed (heartbeat {HEARTBEAT_S} s)")
    assert codes == [1] and worker.wait() == -signal.SIGKILL, cluster.log("chief-1")[-3000:]
    assert "the cluster lost a worker (UnavailableError: " in cluster.log("chief-1")
    steps_before_kill = max(global_step(int(e), int(s)) for e, s in
                            re.findall(r"step backup ckpt-\d+ at epoch (\d+), step (\d+)", cluster.log("chief-1")))

    chief, worker = cluster.start(2)
    codes = finish(chief, worker)
    chief_log = cluster.log("chief-2")
    assert codes == [0, 0], chief_log[-3000:] + cluster.log("worker-2")[-3000:]
    assert re.search(r"retrying after execution \d+ failed", chief_log)
    resumed = re.search(r"resuming from epoch (\d+), step (\d+)", chief_log)
    assert resumed and re.search(r"resuming from epoch (\d+), step (\d+)", cluster.log("worker-2")).groups() == resumed.groups()
    resumed_at = global_step(*map(int, resumed.groups()))
    # the newest backup on disk: at most SAVE_FREQ - 1 steps trained after it were lost
    assert resumed_at == steps_before_kill >= backed_up and resumed_at % SAVE_FREQ == 0

    executions, outputs = train_executions(cluster.root)
    assert [e.state for e in executions] == [md.FAILED, md.COMPLETE]
    model = outputs[executions[1].id]["model"]
    assert model.properties["resumes"] == 1
    history = json.loads((model.uri / "history.json").read_text())
    assert history["steps"] == 2 * STEPS_PER_EPOCH and history["history"]["epoch"] == [1, 2]


@pytest.mark.slow
def test_sigterm_saves_one_coordinated_backup_and_the_pair_resumes_from_that_step(tmp_path):
    cluster = Cluster(tmp_path, COUNTS, epochs=2, batch_size=4, save_freq_steps=SAVE_FREQ, num_sample_images=0)
    chief, worker = cluster.start(1)
    cluster.wait_for("chief-1", r"step backup ckpt-\d+ at epoch 1, step 5", chief)
    chief.send_signal(signal.SIGTERM)  # as a cluster manager stops a container: `convpipe run` passes it on
    codes = finish(chief, worker, timeout=120)
    logs = [cluster.log("chief-1"), cluster.log("worker-1")]
    assert codes == [143, 143], logs[0][-3000:] + logs[1][-3000:]
    saved = [re.findall(r"preemption backup ckpt-\d+ at epoch (\d+), step (\d+) \(global step (\d+)\)", log)
             for log in logs]
    assert len(saved[0]) == 1 and saved[0] == saved[1], saved  # both workers stopped after the same step
    epoch, step, stopped_at = map(int, saved[0][0])
    assert stopped_at == global_step(epoch, step) > 5

    chief, worker = cluster.start(2)
    codes = finish(chief, worker)
    chief_log = cluster.log("chief-2")
    assert codes == [0, 0], chief_log[-3000:] + cluster.log("worker-2")[-3000:]
    assert re.search(r"retrying after execution \d+ failed", chief_log)  # same cache key, same backups
    resumed = re.search(r"resuming from epoch (\d+), step (\d+)", chief_log)
    assert global_step(*map(int, resumed.groups())) == stopped_at  # not one step repeated
    executions, outputs = train_executions(cluster.root)
    assert [e.state for e in executions] == [md.FAILED, md.COMPLETE]
    assert "interrupted" in executions[0].error
    history = json.loads((outputs[executions[1].id]["model"].uri / "history.json").read_text())
    assert history["steps"] == 2 * STEPS_PER_EPOCH
    assert history["resumes"] == [{"backup": history["resumes"][0]["backup"], "epoch": epoch, "step": step}]
