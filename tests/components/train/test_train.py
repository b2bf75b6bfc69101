"""train: one loop under default and mirrored strategies, resumption after SIGKILL, NaN, backups, early stopping."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.stage import StageError
from tests.components import classification_fixtures as fx

PROJECT = Path(__file__).resolve().parents[3]


def run_train(tmp_path, config, examples_dir, execution_id=1, work_dir=None):
    from components.train.stage import STAGE

    ctx = fx.context(config, tmp_path, "train", {"examples": examples_dir}, ["model"], execution_id=execution_id,
                     work_dir=work_dir)
    STAGE.executor(ctx)
    return ctx


def python(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (fresh TensorFlow devices), from the project root."""
    env = dict(os.environ, PYTHONPATH=str(PROJECT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=PROJECT, env=env, timeout=timeout)


# ------------------------------------------------------------------------------------------------
# strategy choice
# ------------------------------------------------------------------------------------------------
def test_auto_strategy_follows_devices_and_cluster():
    from components.training.strategy import resolve_kind

    assert resolve_kind("auto", num_gpus=0, num_cpus=1, workers=1) == "default"
    assert resolve_kind("auto", num_gpus=1, num_cpus=1, workers=1) == "default"
    assert resolve_kind("auto", num_gpus=2, num_cpus=1, workers=1) == "mirrored"
    assert resolve_kind("auto", num_gpus=0, num_cpus=2, workers=1) == "mirrored"
    assert resolve_kind("auto", num_gpus=0, num_cpus=1, workers=3) == "multi_worker"
    assert resolve_kind("one_device", num_gpus=4, num_cpus=1, workers=1) == "one_device"


def test_chief_is_the_chief_task_or_worker_zero_without_one():
    from components.training.strategy import cluster_size, is_chief_task

    workers = {"cluster": {"worker": ["localhost:1", "localhost:2"]}}
    assert cluster_size(workers) == 2
    assert is_chief_task({**workers, "task": {"type": "worker", "index": 0}})
    assert not is_chief_task({**workers, "task": {"type": "worker", "index": 1}})
    with_chief = {"cluster": {"chief": ["localhost:0"], "worker": ["localhost:1"]}}
    assert cluster_size(with_chief) == 2
    assert is_chief_task({**with_chief, "task": {"type": "chief", "index": 0}})
    assert not is_chief_task({**with_chief, "task": {"type": "worker", "index": 0}})
    assert is_chief_task({})


def test_xla_on_gpu_only_when_auto():
    from components.training.strategy import use_jit

    assert use_jit("auto", on_gpu=True) is True and use_jit("auto", on_gpu=False) is False
    assert use_jit(True, on_gpu=False) is True


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------
def test_one_step_is_the_same_under_default_and_mirrored_with_an_uneven_batch():
    """7 examples over 2 replicas (4 + 3): the per-replica weighting must give the default strategy's
    update; with jit_compile (XLA) too."""
    result = python("""
        import json, keras, numpy as np, tensorflow as tf
        from components.training.strategy import configure_logical_cpus
        from components.training.loop import StepFunctions
        configure_logical_cpus(2)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(7, 4)).astype("float32"); y = np.eye(3, dtype="float32")[rng.integers(0, 3, 7)]
        out = {}
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        for name, strategy, jit in (("default", tf.distribute.get_strategy(), False), ("mirrored", mirrored, False),
                                    ("default_jit", tf.distribute.get_strategy(), True), ("mirrored_jit", mirrored, True)):
            keras.utils.set_random_seed(0)
            with strategy.scope():
                inputs = keras.Input((4,))
                model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(5, activation="relu")(inputs)))
                optimizer = keras.optimizers.SGD(0.5)
                loss = keras.losses.CategoricalCrossentropy(from_logits=True)
            steps = StepFunctions(strategy, model, optimizer, loss, jit_compile=jit)
            dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)
            sums = [{k: float(v) for k, v in steps.train_step(b).items()} for b in steps.distribute(dataset)][0]
            out[name] = {"replicas": strategy.num_replicas_in_sync, "sums": sums,
                         "weights": [w.tolist() for w in model.get_weights()]}
        print(json.dumps(out))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["default"]["replicas"] == 1 and out["mirrored"]["replicas"] == 2
    assert out["mirrored"]["sums"]["count"] == 7
    for other in ("mirrored", "default_jit", "mirrored_jit"):
        assert out[other]["sums"]["loss"] == pytest.approx(out["default"]["sums"]["loss"], rel=1e-5)
        for default, weights in zip(out["default"]["weights"], out[other]["weights"]):
            np.testing.assert_allclose(weights, default, rtol=1e-5, atol=1e-6)


def test_default_strategy_trains_and_writes_the_model_artifact(tmp_path):
    import keras
    import tensorflow as tf

    examples_dir = fx.write_examples(tmp_path / "examples")
    config = fx.tiny_config(tmp_path, epochs=3)
    ctx = run_train(tmp_path, config, examples_dir)
    out = ctx.outputs["model"]
    assert sorted(p.name for p in out.iterdir()) == ["history.json", "model.keras", "trial.json"]

    history = json.loads((out / "history.json").read_text())
    assert history["history"]["epoch"] == [1, 2, 3]
    assert history["steps"] == 3 * 6  # 48 train examples, batch 8
    assert history["monitor"] == "val_accuracy"
    best = history["best_epoch"]
    assert history["best_value"] == history["history"]["val_accuracy"][best - 1] == max(history["history"]["val_accuracy"])
    assert history["history"]["val_accuracy"][-1] >= 0.9
    assert history["history"]["learning_rate"] == [pytest.approx(0.05)] * 3

    trial = json.loads((out / "trial.json").read_text())
    assert trial["params"]["strategy"] == "default" and trial["params"]["num_replicas"] == 1
    assert trial["params"]["precision"] == "float32" and trial["params"]["jit_compile"] is False
    assert trial["params"]["train"]["optimizer"]["learning_rate"] == 0.05
    assert trial["class_names"] == fx.CLASS_NAMES
    assert ctx.properties["model"]["best_epoch"] == best

    # safe_mode load, and the saved weights are the best epoch's: eval accuracy equals the recorded best
    from components.training.model_artifact import load_keras_model
    model = load_keras_model(out)
    assert not any(type(layer).__name__ == "Lambda" for layer in model.layers)
    images = np.stack([fx.tiny_record(i, "eval")["image"] for i in range(12)]).astype("float32") / 255.0
    labels = np.array([fx.tiny_record(i, "eval")["label"] for i in range(12)])
    accuracy = float((keras.ops.convert_to_numpy(model(images)).argmax(-1) == labels).mean())
    assert accuracy == pytest.approx(history["best_value"])

    # TensorBoard: per-epoch scalars in train/ and eval/, the learning rate, sample grid and graph
    logdir = Path(config.pipeline.root) / "tensorboard" / "run-1-train-1"
    tags = {"train": set(), "eval": set()}
    graphs = 0
    for split in tags:
        for event_file in (logdir / split).glob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(event_file)):
                graphs += bool(event.graph_def)
                tags[split].update(value.tag for value in event.summary.value)
    assert {"epoch_loss", "epoch_accuracy", "learning_rate"} <= tags["train"]
    assert {"epoch_loss", "epoch_accuracy", "sample_predictions"} <= tags["eval"]
    assert graphs >= 1


def test_mirrored_on_two_logical_cpus_trains_with_two_replicas(tmp_path):
    """Through the stage: in a process whose devices are already set up, training moves to a fresh one."""
    examples_dir = fx.write_examples(tmp_path / "examples")
    config = fx.tiny_config(tmp_path, distribution="mirrored", logical_cpu_devices=2, epochs=2)
    ctx = run_train(tmp_path, config, examples_dir)
    trial = json.loads((ctx.outputs["model"] / "trial.json").read_text())
    assert trial["params"]["strategy"] == "mirrored"
    assert trial["params"]["num_replicas"] == 2  # strategy.num_replicas_in_sync
    history = json.loads((ctx.outputs["model"] / "history.json").read_text())
    assert history["steps"] == 2 * 6
    assert history["history"]["val_accuracy"][-1] >= 0.9
    assert any("2 replica(s)" in m for m in fx.messages(ctx))


# ------------------------------------------------------------------------------------------------
# failures and resumption
# ------------------------------------------------------------------------------------------------
def test_nan_loss_fails_naming_epoch_and_step_and_keeps_the_backups(tmp_path):
    """lr=1e6 with plain SGD, unclipped softmax cross-entropy and linear activations: the weights of the
    two conv layers feed each other's gradients and overflow within a few steps. (The clipped
    `categorical_crossentropy` with ReLU saturates instead: its loss stays finite.)"""
    examples_dir = fx.write_examples(tmp_path / "examples")
    config = fx.tiny_config(tmp_path, save_freq_steps=1, loss="softmax_cross_entropy")
    config.model.params = {"blocks": [{"filters": 4, "padding": "same", "activation": "linear", "pool": "max"},
                                      {"filters": 4, "padding": "same", "activation": "linear"}]}
    config.train.optimizer.name = "sgd"
    config.train.optimizer.learning_rate = 1e6
    with pytest.raises(StageError, match=r"NaN or infinite\) at epoch (\d+), step (\d+) \(global step \d+\)") as error:
        run_train(tmp_path, config, examples_dir)
    epoch, step = map(int, re.search(r"at epoch (\d+), step (\d+)", str(error.value)).groups())
    assert epoch >= 1 and step >= 1
    assert not (tmp_path / "train-1" / "model" / "model.keras").exists()
    backups = sorted(p.name for p in (tmp_path / "work-train" / "backups").glob("ckpt-*.index"))
    # save_freq_steps=1: one backup per step before the failing one, the newest two kept
    assert len(backups) == min(2, (epoch - 1) * 6 + step - 1)


def test_a_learning_rate_far_too_high_fails_as_divergence_when_the_loss_stays_finite(tmp_path):
    """Adam at lr=1e6 with ReLU, batch norm and the clipped cross-entropy: no NaN, the ReLUs die and
    the loss sits near -log(epsilon) for the examples it gets wrong. The guard fails the run after
    its first full window instead of letting it finish with a broken model."""
    examples_dir = fx.write_examples(tmp_path / "examples")
    config = fx.tiny_config(tmp_path, save_freq_steps=1)
    config.train.optimizer.learning_rate = 1e6
    with pytest.raises(StageError, match=r"loss diverged at epoch (\d+), step (\d+) \(global step (\d+)\): its mean "
                                         r"over the last 10 steps, [\d.]+, is more than 4x") as error:
        run_train(tmp_path, config, examples_dir)
    global_step = int(re.search(r"global step (\d+)", str(error.value)).group(1))
    assert global_step >= 10
    assert not (tmp_path / "train-1" / "model" / "model.keras").exists()
    assert len(list((tmp_path / "work-train" / "backups").glob("ckpt-*.index"))) == 2

    config.train.divergence.factor = None  # the same run without the ratio test finishes (with nothing learnt)
    ctx = run_train(tmp_path, config, examples_dir, execution_id=2, work_dir=tmp_path / "work-train-2")
    assert (ctx.outputs["model"] / "model.keras").exists()


def test_backup_falls_back_to_the_older_one_when_the_newest_is_truncated(tmp_path):
    import logging

    import tensorflow as tf

    from components.training.backups import BackupError, Backups

    value = tf.Variable(np.zeros(1000, np.float32))
    backups = Backups(tmp_path / "backups", tf.train.Checkpoint(value=value), keep=2)
    for generation in (1.0, 2.0, 3.0):
        value.assign(np.full(1000, generation, np.float32))
        backups.save()
    assert backups.numbers() == [2, 3]  # two generations kept
    newest = next((tmp_path / "backups").glob("ckpt-3.data-*"))
    newest.write_bytes(newest.read_bytes()[:100])  # a full disk cut it short

    handler = fx.ListHandler()
    log = logging.getLogger("test.backups")
    log.addHandler(handler)
    value.assign(np.zeros(1000, np.float32))
    assert backups.restore(log) == 2
    assert float(value.numpy().mean()) == 2.0
    assert any("ckpt-3 cannot be read" in m for m in handler.messages)

    older = next((tmp_path / "backups").glob("ckpt-2.data-*"))
    older.write_bytes(b"")
    with pytest.raises(BackupError, match="none of the backups"):
        backups.restore(log)


def test_resumes_from_its_backup_after_sigkill_mid_epoch(tmp_path):

    examples_dir = fx.write_examples(tmp_path / "examples", counts={"train": 96, "eval": 12, "test": 12})
    config = fx.tiny_config(tmp_path, epochs=3, batch_size=4, save_freq_steps=5)  # 24 steps per epoch
    process, work_dir = fx.start_trial_process(tmp_path, config, examples_dir)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "step backup" in line:  # the first mid-epoch backup is on disk
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen[-20:])
    assert not (tmp_path / "killed-output" / "model.keras").exists()

    ctx = run_train(tmp_path, config, examples_dir, work_dir=work_dir)
    resumed = [m for m in fx.messages(ctx) if m.startswith("resuming from epoch")]
    assert len(resumed) == 1, fx.messages(ctx)
    epoch, step = map(int, re.match(r"resuming from epoch (\d+), step (\d+)", resumed[0]).groups())
    assert step > 0 and ((epoch - 1) * 24 + step) % 5 == 0  # mid-epoch, from a step backup
    history = json.loads((ctx.outputs["model"] / "history.json").read_text())
    assert history["history"]["epoch"] == [1, 2, 3]
    assert history["steps"] == 3 * 24  # no step trained twice in the count, none skipped
    assert history["resumes"] == [{"backup": history["resumes"][0]["backup"], "epoch": epoch, "step": step}]


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    import logging

    from components.training.history import Progress
    from components.training.loop import Plan, _early_stopping

    plan = Plan(epochs=10, monitor="val_loss", early_stopping_monitor="val_loss", early_stopping_patience=2)
    progress = Progress()
    stopped_at = None
    for epoch, value in enumerate([1.0, 0.8, 0.85, 0.79, 0.9, 0.95, 0.7], start=1):
        progress.rows.append({"epoch": epoch, "val_loss": value})
        _early_stopping(progress, plan, value, epoch, logging.getLogger("test"))
        if progress.stopped_early:
            stopped_at = epoch
            break
    assert stopped_at == 6  # 0.79 at epoch 4, then 0.9 and 0.95 do not improve


def test_best_epoch_ties_are_broken_by_the_lower_loss():
    from components.training.history import Progress

    progress = Progress()
    assert progress.improved("val_accuracy", 1.0, 0.3)
    progress.best_value, progress.best_loss = 1.0, 0.3
    assert progress.improved("val_accuracy", 1.0, 0.2)
    assert not progress.improved("val_accuracy", 1.0, 0.4)
    assert not progress.improved("val_accuracy", float("nan"), 0.1)
    assert not progress.improved("val_accuracy", 0.9, 0.01)


def test_mixed_float16_trains_with_loss_scaling_and_float32_logits(tmp_path):
    import keras

    from components.training.model_artifact import load_keras_model

    examples_dir = fx.write_examples(tmp_path / "examples")
    config = fx.tiny_config(tmp_path, precision="mixed_float16", epochs=1)
    ctx = run_train(tmp_path, config, examples_dir)
    trial = json.loads((ctx.outputs["model"] / "trial.json").read_text())
    assert trial["params"]["precision"] == "mixed_float16"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored afterwards
    model = load_keras_model(ctx.outputs["model"])
    assert any(layer.dtype_policy.name == "mixed_float16" for layer in model.layers)
    assert model.output.dtype == "float32"


@pytest.mark.slow
def test_two_local_workers_train_in_step_and_only_the_chief_writes(tmp_path):
    import socket

    from components.training.trial import TrialSpec

    examples_dir = fx.write_examples(tmp_path / "examples")
    config = fx.tiny_config(tmp_path, distribution="multi_worker", epochs=2, save_freq_steps=3)
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("localhost", 0))
            ports.append(probe.getsockname()[1])
    processes = []
    for index in range(2):
        spec = TrialSpec(config=config.to_dict(), examples_dir=str(examples_dir), work_dir=str(tmp_path / "work"),
                         output_dir=str(tmp_path / "out"), tensorboard_dir=str(tmp_path / "tb"), name="two-workers")
        (tmp_path / f"spec{index}.json").write_text(spec.to_json())
        tf_config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, PYTHONPATH=str(PROJECT), TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(tf_config))
        processes.append(subprocess.Popen([sys.executable, "-m", "components.training.worker",
                                           str(tmp_path / f"spec{index}.json")], env=env, cwd=PROJECT,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    epochs = [[line.split("seconds=")[0] for line in log.splitlines() if "INFO epoch " in line] for log in logs]
    assert len(epochs[0]) == 2 and epochs[0] == epochs[1]  # the same global losses and metrics on both workers
    assert "multi_worker strategy (2 replica(s))" in logs[1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["history.json", "model.keras", "trial.json"]
    assert len(list((tmp_path / "work" / "backups").glob("ckpt-*.index"))) == 2
    assert len(list((tmp_path / "tb").glob("*/events.out.tfevents.*"))) == 2  # train/ and eval/ of the chief only
