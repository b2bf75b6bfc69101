"""Video through train, evaluate, export and predict on a few hand-made clips.

Clips are 4 frames of 8x8 gray: a bright 2x2 block moving right (class 0) or left (class 1), so
the label needs two frames. The export is loaded in a fresh process and compared with Keras.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from tests.components import classification_fixtures as fx

CLASS_NAMES = ["right", "left"]
FRAMES, SIZE = 4, 8


def tiny_clip(index: int, split: str) -> dict:
    rng = np.random.default_rng(["train", "eval", "test"].index(split) * 1009 + index)
    label = index % 2
    row = int(rng.integers(0, SIZE - 2))
    frames = rng.integers(0, 40, size=(FRAMES, SIZE, SIZE, 1))
    for t in range(FRAMES):
        column = 2 * t if label == 0 else SIZE - 2 - 2 * t
        frames[t, row:row + 2, column:column + 2] = 255
    return {"id": f"{split}-{index}", "source": f"tiny:{split}/{index}", "frames": frames.astype(np.uint8), "label": label}


def write_clips(directory: Path, counts: dict) -> Path:
    import tensorflow as tf

    from components.examples import SCHEMA_FILE, encode_example

    for split, count in counts.items():
        (directory / split).mkdir(parents=True, exist_ok=True)
        with tf.io.TFRecordWriter(str(directory / split / "data-00000-of-00001.tfrecord.gz"), options="GZIP") as writer:
            for i in range(count):
                writer.write(encode_example(tiny_clip(i, split)))
    schema = {"task": "video", "class_names": CLASS_NAMES, "image_size": [SIZE, SIZE, 1], "num_frames": FRAMES,
              "split_counts": counts, "features": [], "source": {"name": "tiny"}}
    (directory / SCHEMA_FILE).write_text(json.dumps(schema))
    return directory


def video_config(tmp_path: Path):
    from pipeline.config import load_config

    return load_config(None, [
        f"pipeline.root={tmp_path / 'root'}", "ingest.task=video", "model.name=video",
        'model.params={"fusion": "early", "filters": [4], "dense_units": 8}',
        "train.epochs=1", "train.batch_size=8", "train.num_sample_images=2", "train.optimizer.name=adam",
        "train.optimizer.learning_rate=0.01", f"export.serving_root={tmp_path / 'serving'}",
        "export.model_name=clips", 'evaluate.thresholds={"accuracy": 0.0}',
    ])


@pytest.mark.slow
def test_video_trains_evaluates_exports_and_predicts(tmp_path, capsys):
    import argparse

    from components.evaluate.stage import STAGE as EVALUATE
    from components.export.stage import STAGE as EXPORT
    from components.training.model_artifact import load_keras_model
    from components.serving.predict import main as predict
    from components.tasks.video import clip_probabilities
    from components.train.stage import STAGE as TRAIN
    from PIL import Image

    examples = write_clips(tmp_path / "examples", {"train": 16, "eval": 4, "test": 6})
    config = video_config(tmp_path)
    train = fx.context(config, tmp_path, "train", {"examples": examples}, ["model"])
    TRAIN.executor(train)
    model_dir = train.outputs["model"]
    trial = json.loads((model_dir / "trial.json").read_text())
    assert trial["task"] == "video" and trial["input_shape"] == [FRAMES, SIZE, SIZE, 1]

    evaluate = fx.context(config, tmp_path, "evaluate", {"examples": examples, "model": model_dir}, ["evaluation"])
    EVALUATE.executor(evaluate)
    out = evaluate.outputs["evaluation"]
    model = load_keras_model(model_dir)
    clips = np.stack([tiny_clip(i, "test")["frames"] for i in range(6)]).astype(np.float32) / 255.0
    expected = clip_probabilities(model, list(clips), FRAMES)
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == [f"test-{i}" for i in range(6)]
    assert [line["predicted_id"] for line in lines] == list(expected.argmax(1))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(float(np.mean(expected.argmax(1) == np.arange(6) % 2)))
    assert np.sum(metrics["confusion_matrix"]) == 6 and set(metrics["per_class"]) == set(CLASS_NAMES)
    assert len(list((out / "probe").iterdir())) == 6 and len(list((out / "probe" / "000").iterdir())) == FRAMES
    assert "single frame" in (out / "report.html").read_text().replace("single_frame", "")

    export = fx.context(config, tmp_path, "export", {"model": model_dir, "evaluation": out}, ["pushed"])
    EXPORT.executor(export)  # loads the SavedModel in a fresh process and compares with Keras
    pushed = json.loads((export.outputs["pushed"] / "pushed.json").read_text())
    assert pushed["pushed"] is True and pushed["signatures"] == ["serving_default", "serving_clips"]
    assert max(pushed["max_abs_difference"].values()) < 1e-4

    folder = tmp_path / "clip"
    folder.mkdir()
    for t, frame in enumerate(tiny_clip(0, "test")["frames"]):
        Image.fromarray(frame[..., 0]).save(folder / f"{t:03d}.png")
    code = predict(argparse.Namespace(model=str(tmp_path / "serving" / "clips"), version=None, images=[str(folder)]),
                   out=(printed := io.StringIO()))
    path, name, probability = printed.getvalue().strip().split("\t")
    assert code == 0 and path == str(folder) and name == CLASS_NAMES[int(expected[0].argmax())]
    assert float(probability) == pytest.approx(float(expected[0].max()), abs=1e-3)
