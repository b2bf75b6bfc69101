"""Tiny classification Examples and hand-made ExecutionContexts for the train/evaluate/export tests.

Images are 8x8 RGB; class k lights channel k, so a small CNN separates them in a few steps.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np

CLASS_NAMES = ["red", "green", "blue"]
IMAGE_SIZE = 8
TINY_CNN = {"blocks": [{"filters": 4, "kernel_size": 3, "padding": "same", "pool": "max", "pool_size": 2}],
            "head": "dense", "global_pool": "avg"}


def tiny_record(index: int, split: str) -> dict:
    rng = np.random.default_rng(["train", "eval", "test"].index(split) * 100003 + index)
    label = index % len(CLASS_NAMES)
    image = rng.integers(0, 60, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    image[..., label] += 150
    return {"id": f"{split}-{index}", "source": f"tiny:{split}/{index}", "image": image.astype(np.uint8), "label": label}


def write_examples(directory: Path, counts: Optional[dict] = None, shards: int = 2) -> Path:
    """An Examples artifact: gzip TFRecord shards per split and schema.json."""
    import tensorflow as tf

    from components.examples import SCHEMA_FILE, encode_example

    counts = counts or {"train": 48, "eval": 12, "test": 12}
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in counts.items():
        (directory / split).mkdir(exist_ok=True)
        records = [encode_example(tiny_record(i, split)) for i in range(count)]
        for shard in range(shards):
            path = directory / split / f"data-{shard:05d}-of-{shards:05d}.tfrecord.gz"
            with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
                for record in records[shard::shards]:
                    writer.write(record)
    schema = {"task": "classification", "class_names": CLASS_NAMES, "image_size": [IMAGE_SIZE, IMAGE_SIZE, 3],
              "split_counts": counts, "features": [], "source": {"name": "tiny"}}
    (directory / SCHEMA_FILE).write_text(json.dumps(schema))
    return directory


def tiny_config(tmp_path: Path, **train):
    """A PipelineConfig for the tiny data: the tiny CNN, a couple of epochs, Adam."""
    from pipeline.config import load_config

    overrides = [
        f"pipeline.root={tmp_path / 'root'}",
        f"model.params={json.dumps(TINY_CNN)}",
        "train.epochs=2", "train.batch_size=8", "train.num_sample_images=4",
        "train.optimizer.learning_rate=0.05", "train.optimizer.name=adam",
        f"export.serving_root={tmp_path / 'serving'}", "export.model_name=tiny",
        "evaluate.thresholds={\"accuracy\": 0.5}",
    ]
    overrides += [f"train.{key}={json.dumps(value)}" for key, value in train.items()]
    return load_config(None, overrides)


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def context(config, tmp_path: Path, stage: str, inputs: dict, outputs: list[str], execution_id: int = 1,
            work_dir: Optional[Path] = None):
    """An ExecutionContext as the runner would hand it over; `ctx.log.handlers[0].messages` has the log."""
    from pipeline.stage import Artifact, ExecutionContext

    log = logging.getLogger(f"test.{stage}.{tmp_path.name}.{execution_id}")
    log.handlers[:] = [ListHandler()]
    log.setLevel(logging.INFO)
    log.propagate = False
    artifacts = {name: Artifact(id=i + 1, type=name, uri=Path(uri), fingerprint=f"fp-{name}")
                 for i, (name, uri) in enumerate(inputs.items())}
    outs = {}
    for name in outputs:
        outs[name] = tmp_path / f"{stage}-{execution_id}" / name
        outs[name].mkdir(parents=True, exist_ok=True)
    work = work_dir or tmp_path / f"work-{stage}"
    work.mkdir(parents=True, exist_ok=True)
    return ExecutionContext(config=config, params={}, inputs=artifacts, outputs=outs, work_dir=work,
                            root=Path(config.pipeline.root), run_id=1, execution_id=execution_id, log=log)


def messages(ctx) -> list[str]:
    return ctx.log.handlers[0].messages


def oracle_model(wrong: bool = False):
    """A fixed (untrained) Keras model that classifies the tiny images by their brightest channel;
    `wrong=True` shifts every prediction to the next class. No Lambda layers: loads with safe_mode."""
    import keras

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = keras.layers.Dense(3, name="logits")(pooled)
    model = keras.Model(inputs, logits)
    kernel = 20.0 * np.eye(3, dtype=np.float32)
    if wrong:
        kernel = np.roll(kernel, 1, axis=1)
    model.get_layer("logits").set_weights([kernel, np.full(3, -10.0, np.float32)])
    return model


def write_model_artifact(directory: Path, model=None) -> Path:
    """A Model artifact as train writes it: model.keras, history.json, trial.json."""
    directory.mkdir(parents=True, exist_ok=True)
    (model or oracle_model()).save(directory / "model.keras")
    history = {"history": {"epoch": [1, 2], "loss": [0.9, 0.4], "accuracy": [0.6, 0.9],
                           "val_loss": [0.8, 0.3], "val_accuracy": [0.7, 1.0]},
               "monitor": "val_accuracy", "best_epoch": 2, "best_value": 1.0, "epochs_run": 2,
               "stopped_early": False, "resumes": []}
    trial = {"name": "oracle", "params": {"model": {"name": "oracle"}, "train": {}}, "class_names": CLASS_NAMES,
             "input_shape": [IMAGE_SIZE, IMAGE_SIZE, 3]}
    (directory / "history.json").write_text(json.dumps(history))
    (directory / "trial.json").write_text(json.dumps(trial))
    return directory


def start_trial_process(tmp_path: Path, config, examples_dir: Path, name: str = "killed"):
    """`python -m components.training.worker` on one trial in a child process, its output piped (for tests that
    kill it mid-training); returns (process, work_dir)."""
    from components.training.trial import TrialSpec

    project = Path(__file__).resolve().parents[2]
    work_dir = tmp_path / "work-train"
    spec = TrialSpec(config=config.to_dict(), examples_dir=str(examples_dir), work_dir=str(work_dir),
                     output_dir=str(tmp_path / f"{name}-output"), tensorboard_dir=str(tmp_path / "tb"), name=name)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(spec.to_json())
    env = dict(os.environ, PYTHONPATH=str(project), TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen([sys.executable, "-m", "components.training.worker", str(spec_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=project)
    return process, work_dir
