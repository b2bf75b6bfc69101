"""TensorBoard HParams for a sweep: one session per trial with its hyperparameters, and its train, eval and
test metrics under shared tags; read from the event files, and from a running TensorBoard's HTTP API.

One tiny sweep (2 optimizers x 2 seeds, 1 epoch on 8x8 images) runs train -> evaluate -> compare through
the runner, once for the module.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipeline.stage import Stage
from tests.components import classification_fixtures as fx

TRIALS = {("sgd", 0), ("sgd", 1), ("adam", 0), ("adam", 1)}
SOURCE = {}


def copy_examples(ctx):
    shutil.copytree(SOURCE["examples"], ctx.outputs["examples"], dirs_exist_ok=True)


EXAMPLES = Stage("augment", {"examples": "Examples"}, copy_examples, lambda config: {"source": SOURCE["examples"]})


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory):
    from components.compare import stage as compare
    from components.evaluate import stage as evaluate
    from components.train import stage as train
    from pipeline.runner import Runner

    tmp = tmp_path_factory.mktemp("hparams")
    SOURCE["examples"] = str(fx.write_examples(tmp / "examples", {"train": 24, "eval": 9, "test": 9}))
    config = fx.tiny_config(tmp, epochs=1, num_sample_images=0, seeds=[0, 1],
                            sweep={"train.optimizer.name": ["sgd", "adam"]})
    config.evaluate.compare_with_served = False
    result = Runner(config, [EXAMPLES, train.STAGE, evaluate.STAGE, compare.STAGE], tmp / "root").run()
    assert result.ok, result.error
    comparison = next((tmp / "root" / "compare").glob("*/comparison/comparison.json"))
    return tmp / "root", json.loads(comparison.read_text())


def event_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("events.out.tfevents.*"))


def read_events(directory: Path):
    import tensorflow as tf

    for path in event_files(directory):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                yield event.step, value


def test_each_trial_is_one_hparams_session_with_shared_metric_tags(sweep_root):
    import tensorflow as tf
    from tensorboard.plugins.hparams import metadata as hp_metadata

    root, comparison = sweep_root
    sessions = {}
    for run in sorted((root / "tensorboard").iterdir()):
        for _, value in read_events(run):
            if value.metadata.plugin_data.plugin_name == hp_metadata.PLUGIN_NAME \
                    and value.tag == hp_metadata.SESSION_START_INFO_TAG:
                data = hp_metadata.parse_session_start_info_plugin_data(value.metadata.plugin_data.content)
                hparams = {k: (v.string_value or v.number_value) for k, v in data.hparams.items()}
                sessions[run.name] = hparams
    assert len(sessions) == 4
    assert {(h["optimizer"], int(h["seed"])) for h in sessions.values()} == TRIALS
    assert {h["loss"] for h in sessions.values()} == {"categorical_crossentropy"}

    for trial in comparison["trials"]:
        tensorboard_dir = Path(json.loads((Path(trial["model"]) / "trial.json").read_text())["tensorboard_dir"])
        assert tensorboard_dir.name in sessions
        assert (sessions[tensorboard_dir.name]["optimizer"], sessions[tensorboard_dir.name]["seed"]) == (
            trial["values"]["optimizer"], trial["seed"])
        tags = {group: {v.tag: (step, float(tf.make_ndarray(v.tensor))) for step, v in read_events(tensorboard_dir / group)}
                for group in ("train", "eval", "test", "comparison")}
        for group in ("train", "eval", "test"):
            assert {"epoch_loss", "epoch_accuracy"} <= set(tags[group]), group
        # the test metrics are the evaluation's, logged at the last epoch
        metrics = json.loads((Path(trial["evaluation"]) / "metrics.json").read_text())
        assert tags["test"]["epoch_accuracy"] == (1, pytest.approx(metrics["accuracy"]))
        assert tags["comparison"]["final_train_loss"][1] == pytest.approx(trial["final_loss"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, timeout: float = 10):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_tensorboard_serves_the_experiment_and_one_session_group_per_trial(sweep_root):
    root, comparison = sweep_root
    port = free_port()
    program = Path(sys.executable).with_name("tensorboard")
    process = subprocess.Popen([str(program), "--logdir", str(root / "tensorboard"), "--host", "127.0.0.1",
                                "--port", str(port), "--load_fast=false", "--reload_interval", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}/data/plugin/hparams"
    try:
        deadline = time.monotonic() + 120
        experiment = {}
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            try:
                experiment = post(f"{base}/experiment", {"experimentName": ""})
                if len(experiment.get("metricInfos", [])) >= 6:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(1)
        hparams = {h["name"]: h for h in experiment.get("hparamInfos", [])}
        assert set(hparams["optimizer"]["domainDiscrete"]) == {"sgd", "adam"} and hparams["optimizer"]["differs"]
        metrics = {(m["name"]["group"], m["name"]["tag"]) for m in experiment["metricInfos"]}
        assert {("train", "epoch_loss"), ("eval", "epoch_accuracy"), ("test", "epoch_accuracy"),
                ("comparison", "final_train_loss")} <= metrics

        groups = post(f"{base}/session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 100,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]})
        rows = groups["sessionGroups"]
        assert len(rows) == 4 and groups["totalSize"] == 4
        assert {(r["hparams"]["optimizer"], int(r["hparams"]["seed"])) for r in rows} == TRIALS
        accuracy = {t["trial"]: t["accuracy"] for t in comparison["trials"]}
        for row in rows:
            value = next(m["value"] for m in row["metricValues"]
                         if (m["name"]["group"], m["name"]["tag"]) == ("test", "epoch_accuracy"))
            trial = f"optimizer={row['hparams']['optimizer']},seed={int(row['hparams']['seed'])}"
            assert value == pytest.approx(accuracy[trial])
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_a_swept_model_param_and_loss_param_become_columns():
    from components.training.trial import flat_hparams
    from pipeline.config import load_config

    config = load_config(None, ['model.params={"fusion": "slow", "frames": 4, "blocks": [{"filters": 8}]}',
                                "train.loss=focal", 'train.loss_params={"gamma": 1.5}'])
    params = {"model": config.model.model_dump(mode="json"), "train": config.train.model_dump(mode="json"),
              "effective_batch_size": 32, "strategy": "default", "num_replicas": 1, "precision": "float32"}
    flat = flat_hparams(params)
    assert (flat["model.fusion"], flat["model.frames"], flat["loss.gamma"], flat["loss"]) == ("slow", 4, 1.5, "focal")
    assert "model.blocks" not in flat and not any(k.startswith("multitask.") for k in flat)
