"""train.fine_tune and model.params.backbone in the pipeline: config errors before anything runs,
the phase-2 learning rate on either kind of optimizer, and configs/fine_tune_mobilenet.json end to
end (ingest to export) on tiny synthetic data, from a weights file this test writes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ConfigError, load_config

PROJECT = Path(__file__).resolve().parents[2]
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


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_phase_two_learning_rate_holds_and_checkpoints(schedule, tmp_path):
    import keras
    import tensorflow as tf

    from components.training.fine_tune import set_learning_rate
    from models.optimizers import make_optimizer

    variable = keras.Variable(np.ones(3, np.float32))
    optimizer = make_optimizer({"name": "adam", "learning_rate": 0.01, "schedule": schedule},
                               steps_per_epoch=5, epochs=4)
    optimizer.build([variable])
    set_learning_rate(optimizer, 1e-4)
    optimizer.apply_gradients([(tf.ones(3), variable)])
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(1e-4)
    tf.train.Checkpoint(optimizer=optimizer, variable=variable).write(str(tmp_path / "ckpt"))  # still saveable


@pytest.mark.slow
def test_the_shipped_fine_tune_config_runs_end_to_end_from_a_weights_file(tmp_path):
    from tests.models import backbone_fixtures

    weights = backbone_fixtures.write_weights(tmp_path / "pretrained" / "mobilenet_v3_small.weights.h5", size=32)
    overrides = [f"pipeline.root={tmp_path / 'root'}", f"export.serving_root={tmp_path / 'serving'}",
                 "ingest.source.num_examples=90", "ingest.source.image_size=32", "train.epochs=3",
                 "train.batch_size=16", "train.fine_tune.frozen_epochs=1", "train.num_sample_images=0",
                 "evaluate.thresholds={}",
                 f"model.params.backbone.weights={weights}"]
    env = dict(os.environ, PYTHONPATH=str(PROJECT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "pipeline.cli", "run", "--config", str(CONFIG)]
    for assignment in overrides:
        command += ["--set", assignment]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "fine-tune phase 1: epochs 1-1 train the head alone" in output, output[-4000:]
    assert "fine-tune phase 2: epochs 2-3 train the backbone too" in output, output[-4000:]

    model_dir = next((tmp_path / "root" / "train").glob("*/model"))
    history = json.loads((model_dir / "history.json").read_text())
    assert history["epochs_run"] == 3
    assert [round(rate, 8) for rate in history["history"]["learning_rate"]] == [0.001, 0.0001, 0.0001]
    assert list((tmp_path / "serving").glob("fine_tune_mobilenet/*/saved_model.pb"))

    import h5py
    import keras

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
