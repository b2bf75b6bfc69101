"""The detection adapter: crowd regions in the Example format, COCO numbers on hand-made
detections, the loop's loss inputs, predictions and report, export with NMS checked in a fresh
process, and a tiny train -> evaluate -> export -> predict.

Images are 16x16 gray with one bright square (class 0) or a dim one (class 1) on black, so the
true boxes are exact and easy to state by hand.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from tests.components import classification_fixtures as fx

CLASS_NAMES = ["bright", "dim"]
SIZE = 16
SCHEMA = {"task": "detection", "class_names": CLASS_NAMES, "image_size": [SIZE, SIZE, 1]}


def square_record(index: int, split: str, crowd: bool = False) -> dict:
    """One square of side 4..8 at a place drawn from the index; class 0 bright, class 1 dim.
    `crowd`: a crowd region of class 1 over the right half as well."""
    rng = np.random.default_rng(["train", "eval", "test"].index(split) * 7919 + index)
    label = index % 2
    side = int(rng.integers(4, 9))
    x, y = (int(v) for v in rng.integers(0, SIZE - side, size=2))
    image = np.zeros((SIZE, SIZE, 1), np.uint8)
    image[y:y + side, x:x + side] = 250 if label == 0 else 120
    record = {"id": f"{split}-{index}", "source": f"squares:{split}/{index}", "image": image,
              "boxes": np.array([[x, y, x + side, y + side]], np.float32) / SIZE, "box_labels": np.array([label])}
    if crowd:
        record["crowd_boxes"], record["crowd_labels"] = np.array([[0.5, 0.0, 1.0, 1.0]], np.float32), np.array([1])
    return record


def write_squares(directory: Path, counts: dict, crowd_every: int = 0) -> Path:
    import tensorflow as tf

    from components.examples import SCHEMA_FILE, encode_example

    for split, count in counts.items():
        (directory / split).mkdir(parents=True, exist_ok=True)
        with tf.io.TFRecordWriter(str(directory / split / "data-00000-of-00001.tfrecord.gz"), options="GZIP") as writer:
            for i in range(count):
                writer.write(encode_example(square_record(i, split, crowd=bool(crowd_every) and i % crowd_every == 0)))
    schema = {**SCHEMA, "split_counts": counts, "features": [], "source": {"name": "squares"}}
    (directory / SCHEMA_FILE).write_text(json.dumps(schema))
    return directory


class FixedDetector:
    """Stands in for a detector: `detect` returns the given per-image detections, padded."""

    def __init__(self, per_image: list):
        self.per_image, self.calls = per_image, 0

    def detect(self, images, *, score_threshold, iou_threshold, max_detections, max_per_class=None):
        rows = self.per_image[self.calls:self.calls + len(images)]
        self.calls += len(images)
        out = {"boxes": np.zeros((len(rows), max_detections, 4), np.float32),
               "scores": np.zeros((len(rows), max_detections), np.float32),
               "classes": np.zeros((len(rows), max_detections), np.int32),
               "num_detections": np.array([len(r) for r in rows], np.int32)}
        for i, row in enumerate(rows):
            for d, (box, score, label) in enumerate(row):
                out["boxes"][i, d], out["scores"][i, d], out["classes"][i, d] = box, score, label
        return out


# ------------------------------------------------------------------------------------------------
# the Example format
# ------------------------------------------------------------------------------------------------
def test_crowd_boxes_round_trip_and_reach_the_loop_as_ignored_labels():
    from components import examples as ex

    record = square_record(0, "test", crowd=True)
    serialized = ex.encode_example(record)
    decoded = ex.decode_example(serialized)
    np.testing.assert_allclose(decoded["boxes"], record["boxes"])
    np.testing.assert_allclose(decoded["crowd_boxes"], [[0.5, 0.0, 1.0, 1.0]])
    assert decoded["box_labels"].tolist() == [0] and decoded["crowd_labels"].tolist() == [1]

    _, targets, _ = ex.parse_example(serialized, SCHEMA)
    assert targets["labels"].numpy()[:3].tolist() == [0, -1, -1]       # the crowd box is no training target
    assert targets["crowd_labels"].numpy()[:3].tolist() == [-1, 1, -1]  # ... but keeps its class for evaluation
    np.testing.assert_allclose(targets["boxes"].numpy()[1], [0.5, 0.0, 1.0, 1.0])

    plain = ex.parse_example(ex.encode_example(square_record(1, "test")), SCHEMA)[1]
    assert plain["crowd_labels"].numpy().max() == -1 and plain["labels"].numpy()[0] == 1
    with pytest.raises(ex.RecordError, match="crowd_labels: expected one class label per crowd box"):
        ex.encode_example({k: v for k, v in record.items() if k != "crowd_labels"})
    with pytest.raises(ex.RecordError, match=r"crowd_boxes: box 0 expected .* got \[0.5, 0.0, 1.5, 1.0\]"):
        ex.encode_example({**record, "crowd_boxes": np.array([[0.5, 0.0, 1.5, 1.0]])})


def test_replica_loss_hands_the_model_boxes_and_labels_only():
    import tensorflow as tf

    from components.tasks import get_task

    seen = {}

    class Model:
        def compute_loss(self, batch, training=True):
            seen.update(batch[1])
            return {"loss": tf.reduce_sum(tf.cast(batch[1]["labels"] >= 0, tf.float32))}

    class Marker:
        model_defined = True

    y = {"boxes": tf.zeros((2, 3, 4)), "labels": tf.constant([[0, -1, -1], [1, 0, -1]]),
         "crowd_labels": tf.constant([[-1, 1, -1], [-1, -1, -1]])}
    outputs, loss = get_task("detection").replica_loss(Model(), Marker(), tf.zeros((2, SIZE, SIZE, 1)), y, True, 1)
    assert sorted(seen) == ["boxes", "labels"] and float(loss) == 3.0 and float(outputs["loss"]) == 3.0


# ------------------------------------------------------------------------------------------------
# evaluation on hand-made detections
# ------------------------------------------------------------------------------------------------
def test_evaluate_scores_hand_made_detections_as_coco_does(tmp_path):
    from components.tasks import get_task
    from pipeline.config import EvaluateSection

    examples = write_squares(tmp_path / "examples", {"test": 4}, crowd_every=2)  # crowd on images 0 and 2
    task = get_task("detection")
    test = task.read_test(examples, SCHEMA)
    assert test["id"] == [f"test-{i}" for i in range(4)] and [c.tolist() for c in test["crowd"]] == [
        [False, True], [False], [False, True], [False]]
    truth = [test["boxes"][i][0] for i in range(4)]
    elsewhere = np.array([0.625, 0.0, 0.9375, 0.375], np.float32)  # image 3's square is at [3, 8, 10, 15] px
    detector = FixedDetector([
        [(truth[0], 0.9, 0), (np.array([0.55, 0.1, 0.95, 0.5]), 0.8, 1)],  # a perfect hit + one inside the crowd
        [(truth[1], 0.7, 1)],
        [(truth[2], 0.6, 0)],
        [(elsewhere, 0.95, 1)],                                          # the best score, and a miss
    ])
    evaluation = task.evaluate(detector, test, SCHEMA, EvaluateSection(num_sample_images=2), tmp_path)
    metrics = evaluation.metrics
    # class 0: two truths, two exact hits -> AP 1 at every IoU. Class 1: truths on images 1 and 3;
    # ranked detections: image 3 (0.95, miss), image 0 (0.8, inside the crowd: ignored), image 1
    # (0.7, hit). Precision after the hit is 1/2 and recall 1/2, never 1: 51 of the 101 recall
    # thresholds (0 .. .50) read 1/2, the rest 0 -> AP = 51 * 0.5 / 101 at every IoU threshold.
    class1 = 51 * 0.5 / 101
    assert metrics["per_class"]["bright"]["AP"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["per_class"]["dim"]["AP"] == pytest.approx(class1, abs=1e-6)
    assert metrics["mAP"] == pytest.approx((1.0 + class1) / 2, abs=1e-6)
    assert metrics["AP50"] == pytest.approx((1.0 + class1) / 2, abs=1e-6)
    assert metrics["num_examples"] == 4 and metrics["num_boxes"] == 4 and metrics["num_crowd"] == 2
    assert metrics["boxes_per_class"] == {"bright": 2, "dim": 2}

    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == test["id"]
    assert lines[0]["classes"] == [0, 1] and lines[0]["scores"] == pytest.approx([0.9, 0.8])
    assert lines[0]["boxes"][0] == pytest.approx(truth[0].tolist()) and lines[0]["true_crowd"] == [False, True]
    headings = [heading for heading, _ in evaluation.sections]
    assert headings == ["Test metrics (COCO)", "Per-class AP", "Precision-recall curves", "Images with boxes"]
    assert all("<img" in fragment for heading, fragment in evaluation.sections if heading in headings[2:])
    assert "mAP" in evaluation.summary and "dim" in evaluation.summary
    assert set(task.known_metrics(None)) >= {"mAP", "AP50", "AP75", "AP_small"}


def test_side_by_side_puts_methods_in_columns(tmp_path):
    from components.tasks.detection import side_by_side

    for name, value in (("one", 0.8), ("two", 0.9)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({
            "mAP": value, "AP50": 1.0, "AP75": value, "AP_small": value, "AP_medium": -1.0, "AP_large": -1.0,
            "per_class": {"bright": {"AP": value, "AP50": 1.0, "AP75": value}}}))
    table = side_by_side({"one": tmp_path / "one", "two": tmp_path / "two" / "metrics.json"})
    assert "<th>one</th><th>two</th>" in table and "<td>0.8000</td><td>0.9000</td>" in table
    assert "<td>n/a</td>" in table and "AP bright" in table


def test_comparison_sections_show_each_trials_stage_and_numbers():
    from components.tasks import get_task

    def trial(stage, value, seconds):
        return {"metrics": {"mAP": value, "AP50": 1.0, "per_class": {"bright": {"AP": value}}}, "history": {},
                "trial": {"params": {"model": {"params": {"stage": stage}}}, "seconds": seconds}, "values": {}}

    sections = get_task("detection").comparison_sections({"stage=one": trial("one", 0.8, 12.5),
                                                          "stage=two": trial("two", 0.9, 30.0)})
    (heading, table), = sections
    assert heading == "Detectors side by side (test split, COCO)"
    assert "<th>stage=one</th><th>stage=two</th>" in table and "<td>one</td><td>two</td>" in table
    assert "<td>12</td><td>30</td>" in table and "<td>0.8000</td><td>0.9000</td>" in table
    assert get_task("detection").comparison_sections({}) == []


def test_by_stage_parameters_let_a_sweep_over_the_stage_build_each_method():
    from components.tasks import get_task
    from components.tasks.detection import stage_params
    from pipeline.config import load_config
    from pipeline.sweep import expand

    by_stage = {"one": {"levels": 2, "anchor_sizes": [6, 12]}, "sliding_window": {"window": 8, "scales": [1.0]}}
    assert stage_params({"stage": "sliding_window", "by_stage": by_stage}) == {
        "stage": "sliding_window", "window": 8, "scales": [1.0]}
    assert stage_params({"levels": 3}) == {"levels": 3}                       # nothing to resolve
    with pytest.raises(ValueError, match=r"expected an entry for stage 'two' .* found entries for \['one', 'sliding_window'\]"):
        stage_params({"stage": "two", "by_stage": by_stage})

    config = load_config(None, [
        "ingest.task=detection", "model.name=detector", "train.loss=detector",
        "model.params=" + json.dumps({"stage": "one", "by_stage": {
            "one": {"blocks": [{"filters": 4, "pool": "max"}, {"filters": 4, "pool": "max"}], "levels": 2,
                    "fpn_filters": 4, "head_depth": 0, "anchor_sizes": [6, 12]},
            "sliding_window": {"window": 8, "filters": [4], "hidden": 4, "scales": [1.0]}}}),
        'train.sweep={"model.params.stage": ["one", "sliding_window"]}'])
    built = {}
    for trial in expand(config):
        model, _ = get_task("detection").build_model_and_loss(trial.config.model, trial.config.train, (SIZE, SIZE, 1), 2)
        built[trial.name] = type(model).__name__
    assert built == {"stage=one": "OneStageDetector", "stage=sliding_window": "SlidingWindowDetector"}


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------
def tiny_detector():
    """An untrained one-stage detector on 16x16 gray images whose class head gives spread scores."""
    import keras

    from models import build_model

    keras.utils.set_random_seed(3)
    model = build_model("detector", (SIZE, SIZE, 1), 2, stage="one", blocks=[
        {"filters": 4, "pool": "max"}, {"filters": 4, "pool": "max"}], levels=2, fpn_filters=4, head_depth=0,
        anchor_sizes=[6, 12], anchor_scales=[1.0], aspect_ratios=[1.0])
    layer = model.network.get_layer("class_head_out")
    kernel, bias = layer.get_weights()
    layer.set_weights([np.random.default_rng(0).normal(0, 1.0, kernel.shape).astype(np.float32), bias + 4.0])
    return model


@pytest.mark.slow
def test_export_runs_nms_inside_and_matches_keras_in_a_fresh_process(tmp_path):
    from components import serving
    from components.tasks import get_task
    from components.tasks.detection import detect_batches

    task = get_task("detection")
    model = tiny_detector()
    test = task.read_test(write_squares(tmp_path / "examples", {"test": 6}), SCHEMA)
    task.write_probe(test, tmp_path / "probe", 6)
    info = {"task": "detection", "class_names": CLASS_NAMES, "input_shape": [SIZE, SIZE, 1], "max_detections": 5}
    info.update(task.serving_info(info))
    serving.write_archive(task.export_archive(model, info), tmp_path / "saved", info)

    differences = task.check_export(tmp_path / "saved", model, tmp_path / "probe", info, tmp_path / "scratch")
    assert set(differences) == {"serving_default", "serving_images"} and max(differences.values()) < 1e-4
    expected = detect_batches(model, task.decode_inputs(test["encoded"], SCHEMA), 5)
    assert expected["num_detections"].min() >= 1 and expected["boxes"].shape == (6, 5, 4)  # the check compared boxes

    served = serving.ServedModel(tmp_path / "saved", signatures=task.signatures)
    outputs = served.run("serving_default", image_bytes=np.array(test["encoded"], dtype=object))
    assert sorted(outputs) == ["boxes_xyxy", "classes", "num_detections", "scores"]
    assert outputs["boxes_xyxy"].shape == (6, 5, 4) and outputs["classes"].dtype == np.int32
    np.testing.assert_array_equal(outputs["classes"], expected["classes"])
    assert serving.read_info(tmp_path / "saved")["box_format"] == "rel_xyxy"

    lines = task.predict_lines(tmp_path / "saved", sorted((tmp_path / "probe").iterdir())[:2])
    path, count, found = lines[0].split("\t")
    n = int(expected["num_detections"][0])
    assert path.endswith("000.png") and count == f"{n} detection(s)" and found.count(";") == n - 1
    assert found.startswith(f"{CLASS_NAMES[expected['classes'][0, 0]]} {expected['scores'][0, 0]:.3f}")

    metrics = task.evaluate_served(tmp_path / "saved", test, SCHEMA, None)
    evaluation = task.evaluate(_Capped(model, 5), test, SCHEMA, _Samples(), tmp_path)
    assert metrics["mAP"] == pytest.approx(evaluation.metrics["mAP"], abs=1e-6)


class _Capped:
    """The Keras model with `detect` capped at the export's max_detections (what serving returns)."""

    def __init__(self, model, cap):
        self.model, self.cap = model, cap

    def detect(self, images, **kwargs):
        return self.model.detect(images, **{**kwargs, "max_detections": self.cap})


class _Samples:
    num_sample_images = 2


# ------------------------------------------------------------------------------------------------
# the stages
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_detection_trains_evaluates_exports_and_predicts(tmp_path):
    import argparse

    from components.evaluate.stage import STAGE as EVALUATE
    from components.export.stage import STAGE as EXPORT
    from components.serving.predict import main as predict
    from components.train.stage import STAGE as TRAIN
    from pipeline.config import load_config

    examples = write_squares(tmp_path / "examples", {"train": 16, "eval": 4, "test": 6}, crowd_every=3)
    config = load_config(None, [
        f"pipeline.root={tmp_path / 'root'}", "ingest.task=detection", "model.name=detector",
        'model.params={"stage": "one", "blocks": [{"filters": 4, "pool": "max"}, {"filters": 4, "pool": "max"}], '
        '"levels": 2, "fpn_filters": 4, "head_depth": 0, "anchor_sizes": [6, 12], "anchor_scales": [1.0], '
        '"aspect_ratios": [1.0]}',
        "train.loss=detection", "train.epochs=1", "train.batch_size=8", "train.num_sample_images=2",
        f"export.serving_root={tmp_path / 'serving'}", "export.model_name=boxes", "export.max_detections=4",
        'evaluate.metric="mAP"', 'evaluate.thresholds={"mAP": 0.0}',
    ])
    train = fx.context(config, tmp_path, "train", {"examples": examples}, ["model"])
    TRAIN.executor(train)
    model_dir = train.outputs["model"]
    assert json.loads((model_dir / "trial.json").read_text())["task"] == "detection"

    evaluate = fx.context(config, tmp_path, "evaluate", {"examples": examples, "model": model_dir}, ["evaluation"])
    EVALUATE.executor(evaluate)
    out = evaluate.outputs["evaluation"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_examples"] == 6 and metrics["num_crowd"] == 2 and 0.0 <= metrics["mAP"] <= 1.0
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 6
    assert "Precision-recall curves" in (out / "report.html").read_text()

    export = fx.context(config, tmp_path, "export", {"model": model_dir, "evaluation": out}, ["pushed"])
    EXPORT.executor(export)  # loads the SavedModel in a fresh process and compares with Keras + NMS
    pushed = json.loads((export.outputs["pushed"] / "pushed.json").read_text())
    assert pushed["pushed"] is True and pushed["signatures"] == ["serving_default", "serving_images"]
    assert max(pushed["max_abs_difference"].values()) < 1e-4

    code = predict(argparse.Namespace(model=str(tmp_path / "serving" / "boxes"), version=None,
                                      images=[str(out / "probe" / "000.png")]), out=(printed := io.StringIO()))
    assert code == 0 and printed.getvalue().startswith(str(out / "probe" / "000.png") + "\t")
