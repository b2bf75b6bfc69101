"""Multi-worker training on a remote root: the chief (`convpipe run`) and `convpipe train-worker` share
no disk, only an S3 bucket (moto's server) and a Postgres store (pgserver), as on two machines.

The worker finds the run in Postgres, streams the Examples from the bucket into its own working
copy, and trains in lockstep with the chief; after a worker is killed, the pair restarted on fresh
machines (both working copies gone) resumes from the same backup, the one the chief uploaded.
"""
import re
import shutil
import signal
import sys

import pytest

from pipeline import metadata as md
from tests.components.cluster_fixtures import CHIEF_MAIN, Cluster, finish, free_ports

pytestmark = pytest.mark.slow
ROOT = "s3://convpipe/team"


class RemoteCluster(Cluster):
    """Cluster's chief and worker, each with its own $CONVPIPE_CACHE, on `ROOT` and one Postgres store."""

    def __init__(self, tmp_path, s3, metadata, counts, **train):
        super().__init__(tmp_path, counts, **train)
        self.s3, self.metadata = s3, metadata
        self.caches = {"chief": tmp_path / "chief-cache", "worker": tmp_path / "worker-cache"}

    def start(self, attempt: int):
        ports = free_ports(2)
        common = ["--config", str(self.config_path), "--root", ROOT, "--metadata", self.metadata]
        chief = self._spawn(f"chief-{attempt}", [sys.executable, "-c", CHIEF_MAIN, "run", *common],
                            dict(self._env(0, ports), **self.s3.env(), CONVPIPE_CACHE=str(self.caches["chief"])))
        worker = self._spawn(f"worker-{attempt}", [sys.executable, "-m", "convpipe.cli", "train-worker", *common,
                                                   "--timeout", "120"],
                             dict(self._env(1, ports), **self.s3.env(), TMPDIR=str(self.worker_tmp),
                                  CONVPIPE_CACHE=str(self.caches["worker"])))
        return chief, worker

    def new_machines(self):
        for cache in self.caches.values():
            shutil.rmtree(cache, ignore_errors=True)


def bucket_keys(s3, prefix=""):
    import boto3
    client = boto3.client("s3", endpoint_url=s3.endpoint)
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket="convpipe", Prefix=prefix).get("Contents", []))


def train_executions(metadata):
    with md.MetadataStore("/nonexistent-local-copy", create=False, url=metadata, root_label=ROOT) as store:
        return [e for run in store.runs() for e in store.executions(run.id) if e.stage == "train"]


def test_a_worker_on_another_machine_trains_from_the_bucket_and_the_pair_resumes_on_new_machines(
        s3_server, postgres_url, tmp_path):
    """One cluster for both (each start costs four TensorFlow processes): killed mid-epoch, then restarted
    with both working copies gone, so everything the pair needs comes from the bucket and the store."""
    s3_server.make_bucket("convpipe")
    cluster = RemoteCluster(tmp_path, s3_server, postgres_url, {"train": 48, "eval": 12, "test": 12}, epochs=2,
                            batch_size=4, save_freq_steps=5, num_sample_images=0,
                            cluster={"heartbeat_timeout_s": 4, "collective_timeout_s": 60})
    chief, worker = cluster.start(1)
    cluster.wait_for("chief-1", r"step backup ckpt-\d+ at epoch 1, step 10", chief)
    assert re.findall(r"joining train execution (\d+) of run 1", cluster.log("worker-1")) == ["2"]
    worker.send_signal(signal.SIGKILL)
    assert finish(chief, timeout=120) == [1], cluster.log("chief-1")[-3000:]
    worker.wait()
    assert [k for k in bucket_keys(s3_server, "team/train/.work/") if k.endswith(".index")], bucket_keys(s3_server)

    cluster.new_machines()  # neither machine keeps anything: the Examples and the backups come from the bucket
    chief, worker = cluster.start(2)
    codes = finish(chief, worker)
    chief_log, worker_log = cluster.log("chief-2"), cluster.log("worker-2")
    assert codes == [0, 0], chief_log[-3000:] + worker_log[-3000:]
    resumed = re.search(r"resuming from epoch (\d+), step (\d+)", chief_log)
    assert resumed, chief_log[-3000:]
    assert re.search(r"resuming from epoch (\d+), step (\d+)", worker_log).groups() == resumed.groups()
    assert (int(resumed.group(1)) - 1) * 12 + int(resumed.group(2)) >= 10  # 12 steps an epoch
    digests = [re.findall(r"trained weights sha256 ([0-9a-f]{64})", log) for log in (chief_log, worker_log)]
    assert len(digests[0]) == 1 and digests[0] == digests[1], digests
    assert [e.state for e in train_executions(postgres_url)] == [md.FAILED, md.COMPLETE]

    # the worker's Examples came through the bucket into its own working copy, file for file
    fetched = list(cluster.caches["worker"].glob("*/augment/1/examples"))
    assert len(fetched) == 1 and sorted(p.name for p in fetched[0].iterdir()) == sorted(
        p.name for p in cluster.examples.iterdir())
    assert not list(cluster.caches["worker"].glob("*/train/[0-9]*"))  # it wrote no Model artifact
    assert not bucket_keys(s3_server, "team/train/.work/")  # the uploaded backups went with the completion
