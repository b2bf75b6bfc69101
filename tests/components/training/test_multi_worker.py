"""Multi-worker training: `auto` picks MultiWorkerMirroredStrategy from TF_CONFIG, `convpipe train-worker`
joins the chief's train stage, both workers end with the same weights, only the chief writes."""
import json
import os
import re

import pytest

from pipeline.config import ConfigError
from tests.components import classification_fixtures as fx
from tests.components.cluster_fixtures import Cluster, finish

TWO_WORKERS = {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 1}}


def test_auto_is_multi_worker_only_when_tf_config_names_several_tasks(monkeypatch, tmp_path):
    from components.training.strategy import trains_in_this_process, uses_multi_worker

    monkeypatch.setenv("TF_CONFIG", json.dumps(TWO_WORKERS))
    assert uses_multi_worker("auto") and uses_multi_worker("multi_worker") and not uses_multi_worker("default")
    train = fx.tiny_config(tmp_path).train
    assert not trains_in_this_process(train)  # collective ops are configured before TF starts: a fresh process
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker"}}))
    assert not uses_multi_worker("auto")
    monkeypatch.delenv("TF_CONFIG")
    assert not uses_multi_worker("auto") and uses_multi_worker("multi_worker")


def test_cluster_timeouts_do_not_change_the_train_cache_key(tmp_path):
    from components.train.stage import parameters

    a = fx.tiny_config(tmp_path)
    b = fx.tiny_config(tmp_path, cluster={"heartbeat_timeout_s": 3, "collective_timeout_s": None})
    assert b.train.cluster.heartbeat_timeout_s == 3 and b.train.cluster.collective_timeout_s is None
    assert parameters(a) == parameters(b)
    assert parameters(a) != parameters(fx.tiny_config(tmp_path, epochs=3))


def test_train_worker_refuses_the_chief_and_a_single_machine(monkeypatch, tmp_path):
    from components.train.join import check_can_join

    config = fx.tiny_config(tmp_path)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="expected TF_CONFIG naming two or more tasks"):
        check_can_join(config)
    monkeypatch.setenv("TF_CONFIG", json.dumps({**TWO_WORKERS, "task": {"type": "worker", "index": 0}}))
    with pytest.raises(ConfigError, match=r"makes this task \(worker 0\) the chief; the chief runs `convpipe run`"):
        check_can_join(config)
    monkeypatch.setenv("TF_CONFIG", json.dumps(TWO_WORKERS))
    with pytest.raises(ConfigError, match="train.distribution is 'default'"):
        check_can_join(fx.tiny_config(tmp_path, distribution="default"))
    with pytest.raises(ConfigError, match="train.parallel_trials is 2; a multi-worker run trains one trial at a time"):
        check_can_join(fx.tiny_config(tmp_path, parallel_trials=2))
    check_can_join(config)  # worker 1 of two, distribution auto


def test_a_joining_worker_finds_the_running_train_execution_of_one_of_its_trials(tmp_path):
    from pipeline import artifacts as layout
    from pipeline.metadata import MetadataStore, NewArtifact
    from components.train.stage import parameters
    from components.train.join import JoinError, joinable_execution, spec_for, trial_parameters

    config = fx.tiny_config(tmp_path, sweep={"train.optimizer.learning_rate": [0.05, 0.01]})
    trials = trial_parameters(config)
    assert len(trials) == 2 and [t["train"]["optimizer"]["learning_rate"] for t in trials.values()] == [0.05, 0.01]
    second = list(trials.values())[1]
    with MetadataStore(tmp_path / "root") as store:
        run = store.start_run(config.to_dict(), [])
        augment = store.start_execution(run, "augment", params={}, cache_key="a" * 64, code_version="c",
                                        inputs={}, external_fingerprint=None, reason={})
        examples = store.complete_execution(augment, {"examples": NewArtifact("Examples", tmp_path / "root/augment/1/examples", "fp")})
        assert joinable_execution(store, trials) is None  # train has not started
        train = store.start_execution(run, "train", params=second, cache_key="b" * 64, code_version="c",
                                      inputs=examples, external_fingerprint=None, reason={})
        execution = joinable_execution(store, trials)
        assert execution.id == train
        assert joinable_execution(store, trials, done=(train,)) is None  # this worker trained it already
        spec = spec_for(config, store, execution, tmp_path / "scratch")
        assert spec.examples_dir == str((tmp_path / "root/augment/1/examples").resolve())
        assert spec.work_dir == str(layout.work_dir(store.root, "train", "b" * 64))
        assert spec.name == f"run-{run}-train-{train}" and spec.output_dir == str(tmp_path / "scratch")
        other = {"default": json.loads(json.dumps(parameters(fx.tiny_config(tmp_path, epochs=5))))}
        with pytest.raises(JoinError, match=r"other parameters than this worker's config \(they differ in: train\)"):
            joinable_execution(store, other)
        store.fail_execution(train, "boom")
        assert joinable_execution(store, trials) is None  # a failed attempt is not joined


def test_weights_digest_changes_with_any_weight():
    import numpy as np

    from components.training.replicas import weights_digest

    model = fx.oracle_model()
    same = fx.oracle_model()
    assert weights_digest(model) == weights_digest(same)
    kernel, bias = same.get_layer("logits").get_weights()
    bias[0] = np.nextafter(bias[0], np.float32(0))  # one ulp
    same.get_layer("logits").set_weights([kernel, bias])
    assert weights_digest(model) != weights_digest(same)


@pytest.mark.slow
def test_chief_run_and_train_worker_train_each_trial_in_lockstep_and_only_the_chief_writes(tmp_path):
    from pipeline import metadata as md
    from pipeline.metadata import MetadataStore
    from components.training.model_artifact import MODEL_FILE
    from components.training.replicas import weights_digest
    import keras

    # two trials (seeds 0 and 1): the worker joins one after the other, each in a fresh process
    cluster = Cluster(tmp_path, counts={"train": 48, "eval": 12, "test": 12}, epochs=1, save_freq_steps=3, seeds=[0, 1],
                      num_sample_images=0)
    chief, worker = cluster.start(1)
    codes = finish(chief, worker)
    chief_log, worker_log = cluster.log("chief-1"), cluster.log("worker-1")
    assert codes == [0, 0], chief_log[-3000:] + worker_log[-3000:]
    for log in (chief_log, worker_log):
        assert log.count("with multi_worker strategy (2 replica(s))") == 2  # train.distribution=auto, TF_CONFIG of two
    assert re.findall(r"joining train execution (\d+) of run 1", worker_log) == ["2", "3"]
    assert "run 1 has moved past its train stage" in worker_log or "nothing more for this worker" in worker_log
    digests = [re.findall(r"trained weights sha256 ([0-9a-f]{64})", log) for log in (chief_log, worker_log)]
    assert len(digests[0]) == 2 and digests[0] == digests[1] and digests[0][0] != digests[0][1], digests

    with MetadataStore(cluster.root, create=False) as store:
        trains = [e for e in store.executions(1) if e.stage == "train"]
        assert [e.state for e in trains] == [md.COMPLETE, md.COMPLETE]
        model_dirs = [store.outputs(e.id)["model"].uri for e in trains]
    for model_dir, digest in zip(model_dirs, digests[0]):
        assert sorted(p.name for p in model_dir.iterdir()) == ["history.json", "model.keras", "trial.json"]
        # one epoch: the best epoch is the last, so the artifact holds the weights both workers ended with
        assert weights_digest(keras.saving.load_model(model_dir / MODEL_FILE)) == digest
        assert json.loads((model_dir / "trial.json").read_text())["params"]["num_replicas"] == 2
    events = sorted(p.parent.name for p in (cluster.root / "tensorboard").glob("*/*/events.out.tfevents.*"))
    assert events == ["eval", "eval", "train", "train"]  # the chief's logs only, one run directory per trial
    assert os.listdir(cluster.worker_tmp) == []  # the worker's private backups and scratch are gone
