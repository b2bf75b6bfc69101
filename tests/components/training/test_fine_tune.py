"""train.fine_tune and model.params.backbone in the pipeline: config errors before anything runs,
the phase-2 learning rate on either kind of optimizer, both phases in the loop's step functions
under MirroredStrategy (two logical CPUs), and configs/fine_tune_mobilenet.json end to end (ingest
to export, default strategy) on tiny synthetic data, from a weights file this test writes."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ConfigError, load_config

PROJECT = Path(__file__).resolve().parents[3]
CONFIG = PROJECT / "configs" / "fine_tune_mobilenet.json"


def check(*overrides):
    from components.training import fine_tune

    fine_tune.check(load_config(CONFIG, list(overrides)))


def test_config_errors_name_the_key_and_the_file(tmp_path):
    missing = tmp_path / "gone.weights.h5"
    with pytest.raises(ConfigError, match=f"model.params.backbone.weights: {missing}: no such file"):
        check(f"model.params.backbone.weights={missing}")
    with pytest.raises(ConfigError, match="train.fine_tune.frozen_epochs: expected fewer than train.epochs"):
        check("model.params.backbone.weights=null", "train.fine_tune.frozen_epochs=6")
    with pytest.raises(ConfigError, match="unfreeze nothing"):
        check("model.params.backbone.weights=null", "model.params.backbone.trainable=none")
    with pytest.raises(ConfigError, match="invalid backbone.name='resnet9000'"):
        check("model.params.backbone.weights=null", "model.params.backbone.name=resnet9000")
    with pytest.raises(ConfigError, match="train.fine_tune: expected a model.params.backbone"):
        from components.training import fine_tune
        fine_tune.check(load_config(None, ["train.fine_tune={\"frozen_epochs\": 1}"]))
    check("model.params.backbone.weights=null")  # and the shipped config is fine without a file


@pytest.mark.parametrize("schedule,loss_scale", [("constant", False), ("cosine", False), ("constant", True)])
def test_the_phase_two_learning_rate_holds_and_checkpoints(schedule, loss_scale, tmp_path):
    """Float-made and scheduled optimizers, and the LossScaleOptimizer of mixed_float16 on a GPU."""
    import keras
    import tensorflow as tf

    from components.training.fine_tune import set_learning_rate
    from models.optimizers import make_optimizer

    variable = keras.Variable(np.ones(3, np.float32))
    optimizer = make_optimizer({"name": "adam", "learning_rate": 0.01, "schedule": schedule},
                               steps_per_epoch=5, epochs=4)
    if loss_scale:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build([variable])
    set_learning_rate(optimizer, 1e-4)
    optimizer.apply_gradients([(tf.ones(3), variable)])
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(1e-4)
    tf.train.Checkpoint(optimizer=optimizer, variable=variable).write(str(tmp_path / "ckpt"))  # still saveable


def test_both_phases_train_what_they_should_under_mirrored_strategy():
    """Phase 1 moves the head alone; phase 2 moves the backbone too, at the fine-tune rate; batch
    norm statistics of the pretrained backbone never move. A small stand-in backbone (a functional
    model named "backbone" with batch norm) keeps the traces short; a fresh process splits the CPU."""
    code = """
        import json, logging, types, keras, numpy as np, tensorflow as tf
        from components.training.strategy import configure_logical_cpus
        from components.training.loop import Plan, StepFunctions
        from components.training.fine_tune import fit_in_phases
        from models import backbones
        configure_logical_cpus(2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        keras.utils.set_random_seed(0)
        with strategy.scope():
            image = keras.Input((8, 8, 3))
            x = keras.layers.Conv2D(4, 3, name="stem")(image)
            x = keras.layers.BatchNormalization(name="stem_bn")(x)
            backbone = keras.Model(image, keras.layers.Conv2D(6, 3, name="top")(x), name="backbone")
            backbones.set_trainable(backbone, "all", frozen_statistics=True)   # as built with weights
            inputs = keras.Input((8, 8, 3))
            logits = keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(backbone(inputs)))
            model = keras.Model(inputs, logits)
            optimizer = keras.optimizers.Adam(0.01)
            optimizer.build(model.trainable_variables)
            loss = keras.losses.CategoricalCrossentropy(from_logits=True)
        rng = np.random.default_rng(0)
        x = rng.random((10, 8, 8, 3)).astype("float32"); y = np.eye(3, dtype="float32")[rng.integers(0, 3, 10)]
        snapshots, rates = [], []
        def fake_fit(steps, train_data, eval_data, plan, progress, log=None):
            for _ in range(plan.epochs - progress.epochs_done):
                for batch in steps.distribute(train_data(0)):
                    steps.train_step(batch)
            progress.epochs_done = plan.epochs
            rates.append(steps.learning_rate())
            snapshots.append({v.path: v.numpy().copy() for v in model.weights})
        start = {v.path: v.numpy().copy() for v in model.weights}
        progress = types.SimpleNamespace(epochs_done=0, stopped_early=False)
        train = types.SimpleNamespace(fine_tune=types.SimpleNamespace(frozen_epochs=1, learning_rate=1e-4))
        fit_in_phases(fake_fit, lambda: StepFunctions(strategy, model, optimizer, loss), train, model, optimizer,
                      lambda epoch: tf.data.Dataset.from_tensor_slices((x, y)).batch(5), None,
                      Plan(epochs=3, monitor="loss"), progress, log=logging.getLogger("t"))
        moved = lambda a, b: sorted(k for k in a if not np.array_equal(a[k], b[k]))
        print(json.dumps({"phase1": moved(start, snapshots[0]), "phase2": moved(snapshots[0], snapshots[1]),
                          "rates": rates, "replicas": strategy.num_replicas_in_sync}))
    """
    env = dict(os.environ, PYTHONPATH=str(PROJECT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            cwd=PROJECT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert out["phase1"] == ["logits/bias", "logits/kernel"]
    assert out["phase2"] == ["logits/bias", "logits/kernel", "stem/bias", "stem/kernel", "top/bias", "top/kernel"]
    assert out["rates"] == [pytest.approx(0.01), pytest.approx(1e-4)]


@pytest.mark.slow
def test_the_shipped_fine_tune_config_runs_end_to_end_from_a_weights_file(tmp_path):
    from tests.models.backbones import fixtures as backbone_fixtures

    weights = backbone_fixtures.write_weights(tmp_path / "pretrained" / "mobilenet_v3_small.weights.h5", size=32)
    overrides = [f"pipeline.root={tmp_path / 'root'}", f"export.serving_root={tmp_path / 'serving'}",
                 "ingest.source.num_examples=60", "ingest.source.image_size=32", "train.epochs=2",
                 "train.batch_size=16", "train.fine_tune.frozen_epochs=1", "train.num_sample_images=0",
                 "evaluate.thresholds={}",
                 f"model.params.backbone.weights={weights}"]
    env = dict(os.environ, PYTHONPATH=str(PROJECT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "convpipe.cli", "run", "--config", str(CONFIG)]
    for assignment in overrides:
        command += ["--set", assignment]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "fine-tune phase 1: epochs 1-1 train the head alone" in output, output[-4000:]
    assert "fine-tune phase 2: epochs 2-2 train the backbone too" in output, output[-4000:]

    model_dir = next((tmp_path / "root" / "train").glob("*/model"))
    history = json.loads((model_dir / "history.json").read_text())
    assert history["epochs_run"] == 2
    assert [round(rate, 8) for rate in history["history"]["learning_rate"]] == [0.001, 0.0001]
    assert list((tmp_path / "serving").glob("fine_tune_mobilenet/*/saved_model.pb"))

    import h5py
    import keras

    from models import load_registrations

    load_registrations()  # as the evaluate and export stages do before loading a model
    model = keras.saving.load_model(model_dir / "model.keras")
    backbone = model.get_layer("backbone")
    with h5py.File(weights, "r") as f:
        stored = {}
        f.visititems(lambda n, o: stored.setdefault(o.parent.attrs["name"], []).append(o[()])
                     if isinstance(o, h5py.Dataset) else None)
    norm = next(layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization))
    np.testing.assert_array_equal(norm.moving_mean.numpy(), stored[norm.name][2])  # inference mode throughout
    conv = backbone.get_layer("conv")
    assert not np.array_equal(conv.get_weights()[0], stored["conv"][0])  # phase 2 trained the backbone
