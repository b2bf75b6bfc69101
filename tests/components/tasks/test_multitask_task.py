"""The multitask task adapter: every head scored by hand-computed cases, forgetting from a
history, schedules reaching the loss through the hooks, the loop's per-replica loss and sums, the
sweep's comparison table, and (slow) a consecutive trial through train, evaluate, export (fresh
process) and predict on tiny synthetic shapes."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.components import classification_fixtures as fx

NAMES = ["a", "b"]


# ------------------------------------------------------------------------------------------------
# scoring
# ------------------------------------------------------------------------------------------------
def _hand_case():
    """Three 4x4 examples. Labels 0, 1 and none; one mask (the others missing); boxes on 0 and 1."""
    from components.tasks.multitask_scores import targets_of

    true_mask = np.zeros((4, 4), np.uint8)
    true_mask[:2, :2] = 1
    split = {"id": ["0", "1", "2"], "label": [0, 1, -1], "mask": [true_mask, None, None],
             "boxes": [np.array([[0, 0, .5, .5]], np.float32), np.array([[.5, .5, 1, 1]], np.float32),
                       np.zeros((0, 4), np.float32)],
             "box_labels": [np.array([0]), np.array([1]), np.zeros(0, np.int64)]}
    predicted_mask = np.zeros((3, 4, 4), np.int32)
    predicted_mask[0, 0, :] = 1                                  # the top row, against the top-left 2x2
    outputs = {
        "classification_probabilities": np.array([[.9, .1], [.8, .2], [.3, .7]], np.float32),
        "segmentation_class_id": predicted_mask,
        "segmentation_probabilities": np.zeros((3, 4, 4, 3), np.float32),
        "detection_boxes": np.array([[[0, 0, .5, .5]], [[0, 0, .5, .5]], [[0, 0, 0, 0]]], np.float32),
        "detection_scores": np.array([[.9], [.8], [0]], np.float32),
        "detection_classes": np.array([[0], [1], [0]], np.int32),
        "detection_num_detections": np.array([1, 1, 0], np.int32),
        "regression_values": np.array([[1.0], [0.0], [2.0]], np.float32),
    }
    return outputs, targets_of(split, (4, 4, 3))


def test_every_head_is_scored_as_by_hand():
    from components.tasks.multitask_scores import score_heads

    outputs, targets = _hand_case()
    metrics, details = score_heads(outputs, targets, NAMES, (4, 4, 3), top_k=1)
    assert metrics["classification_accuracy"] == pytest.approx(0.5)       # the unlabelled third is left out
    assert details["classification"]["num_examples"] == 2
    background, shape = 10 / 14, 2 / 6                                     # TP / (true + predicted - TP)
    assert metrics["segmentation_mean_iou"] == pytest.approx((background + shape) / 2)   # class b never appears
    assert metrics["segmentation_pixel_accuracy"] == pytest.approx(12 / 16)
    assert metrics["detection_AP50"] == pytest.approx(0.5)                 # a: exact box; b: only a miss
    assert details["detection"]["per_class"]["a"]["AP50"] == pytest.approx(1.0)
    assert metrics["regression_mae"] == pytest.approx(1.0)                 # counts 1, 1, 0 vs 1, 0, 2
    assert metrics["regression_rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert metrics["mean_head_score"] == pytest.approx((0.5 + (background + shape) / 2 + 0.5) / 3)


def test_a_head_the_model_lacks_scores_nan_and_zero_in_the_mean():
    from components.tasks.multitask_scores import score_heads

    outputs, targets = _hand_case()
    only = {k: v for k, v in outputs.items() if k.startswith("classification")}
    metrics, details = score_heads(only, targets, NAMES, (4, 4, 3), top_k=1)
    assert math.isnan(metrics["segmentation_mean_iou"]) and math.isnan(metrics["detection_AP50"])
    assert math.isnan(metrics["regression_mae"]) and set(details) == {"classification"}
    assert metrics["mean_head_score"] == pytest.approx(0.5 / 3)


def test_forgetting_is_the_metric_at_the_phase_end_minus_at_the_end():
    from components.tasks.multitask_scores import forgetting_rows

    history = {"epoch": [1, 2, 3, 4, 5, 6],
               "val_classification_accuracy": [.5, .9, .8, .7, .6, .6],
               "val_segmentation_mean_iou": [.1, .2, .5, .8, .7, .75],
               "val_detection_AP50": [0, 0, 0, 0, .4, .6],
               "val_regression_mae": [3.0, 1.0, 2.0, 2.0, 2.0, 2.5]}
    rows = {r["task"]: r for r in forgetting_rows(history, {"classification": 2, "segmentation": 4,
                                                            "detection": 6, "regression": 2})}
    assert rows["classification"]["forgetting"] == pytest.approx(0.3)
    assert rows["segmentation"]["forgetting"] == pytest.approx(0.05)
    assert rows["detection"]["forgetting"] == 0.0
    assert rows["regression"]["forgetting"] == pytest.approx(1.5)          # MAE rose from 1.0 to 2.5
    shorter = forgetting_rows({"epoch": [1, 2], "val_classification_accuracy": [.5, .4]}, {"classification": 9})
    assert shorter[0]["phase_end_epoch"] == 2 and shorter[0]["forgetting"] == 0.0   # clamped to the last epoch


# ------------------------------------------------------------------------------------------------
# schedules and the loop
# ------------------------------------------------------------------------------------------------
def _config(**multitask):
    from pipeline.config import load_config

    return load_config(None, ['model.name=multitask',
                              'model.params={"heads": ["classification", "segmentation", "detection"]}',
                              "train.epochs=9", f"train.multitask={json.dumps(multitask)}"])


def test_schedule_epochs_and_the_kept_epoch_follow_train_multitask():
    from components.tasks.multitask import TASK
    from components.tasks.multitask_schedule import heads_of, phase_ends

    consecutive = _config(schedule="consecutive", epochs_per_task={"classification": 2, "segmentation": 4})
    assert heads_of(consecutive.model, consecutive.train) == ["classification", "segmentation", "detection"]
    assert TASK.epochs(consecutive) == 2 + 4 + 9 // 3                     # detection: train.epochs / heads
    assert TASK.monitor(consecutive, has_eval=True) == "epoch"
    baseline = _config(heads=["segmentation"], epochs_per_task={"classification": 2, "segmentation": 4})
    assert TASK.epochs(baseline) == 9 and TASK.monitor(baseline, has_eval=True) == "val_loss"
    assert phase_ends(baseline.train, ["segmentation"]) == {"segmentation": 4}   # other heads' entries dropped
    assert TASK.monitor(baseline, has_eval=False) == "loss"


def test_every_head_is_evaluated_about_ten_times_and_at_every_phase_end():
    from components.tasks.multitask_schedule import evaluation_epochs

    heads = ["classification", "segmentation", "detection"]
    joint = _config(schedule="joint", epochs_per_task={"classification": 3, "segmentation": 4, "detection": 2})
    longer = joint.train.model_copy(update={"epochs": 30})
    assert evaluation_epochs(longer, heads) == {3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 7}   # 7: segmentation's end
    consecutive = _config(schedule="consecutive", epochs_per_task={"classification": 3, "segmentation": 4, "detection": 2})
    assert evaluation_epochs(consecutive.train, heads) == {1, 2, 3, 4, 5, 6, 7, 8, 9}


def _tiny_model_and_loss(weighting="uncertainty", heads=("classification", "segmentation", "regression")):
    from pipeline.config import load_config

    from components.tasks.multitask import TASK

    config = load_config(None, ["model.name=multitask",
                                'model.params={"blocks": [{"filters": 2, "pool": "max"}], "dense_units": 4}',
                                f'train.multitask={json.dumps({"heads": list(heads), "weighting": weighting})}'])
    model, loss = TASK.build_model_and_loss(config.model, config.train, (8, 8, 3), 2)
    return config, model, loss


def test_hooks_set_the_alternating_heads_before_each_step_and_log_the_task_weights():
    from components.tasks.multitask import TASK
    from components.tasks.multitask_schedule import schedule_of

    config, model, loss = _tiny_model_and_loss()
    train = config.train.model_copy(update={"multitask": config.train.multitask.model_copy(update={
        "schedule": "alternating", "ratio": {"classification": 1, "segmentation": 2, "detection": 5}})})
    # smooth weighted round robin over 1:2:1 (detection is not a head of this model, so its ratio is dropped)
    assert schedule_of(train, model.heads).cycle == ("segmentation", "classification", "regression", "segmentation")
    hooks = TASK.training_hooks(model, loss, train, None)
    seen = []
    for step in range(5):
        hooks.before_step(1, step)
        seen.append(loss.loss.active_tasks.numpy().tolist())
    assert seen == [[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 0]]
    model.task_weighting.log_variance["segmentation"].assign(np.log(4.0))
    row = hooks.end_of_epoch(1)
    assert row["task_weight_classification"] == pytest.approx(1.0)
    assert row["task_weight_segmentation"] == pytest.approx(0.25)          # exp(-s)
    assert row["task_weight_regression"] == pytest.approx(0.5)             # ½·exp(-s) for a regression head
    assert row["log_variance_segmentation"] == pytest.approx(np.log(4.0))


def test_replica_loss_is_the_weighted_total_and_sums_count_labelled_examples_only():
    import tensorflow as tf

    from components.tasks.multitask import TASK

    _, model, loss = _tiny_model_and_loss(weighting="static", heads=("classification", "segmentation"))
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((3, 8, 8, 3)), tf.float32)
    y = {"class": tf.constant([[1, 0], [0, 1], [0, 0]], tf.float32),            # the third has no label
         "mask": tf.constant(rng.integers(0, 3, (3, 8, 8)), tf.int32)}
    outputs, total = TASK.replica_loss(model, loss, x, y, training=False, num_replicas=1)
    heads = outputs["head_losses"]
    assert float(total) == pytest.approx(float(heads["classification"] + heads["segmentation"]), rel=1e-6)
    logits = outputs["heads"]["classification"].numpy()
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert float(heads["classification"]) == pytest.approx(-(log_p[0, 0] + log_p[1, 1]) / 2, rel=1e-5)
    sums = TASK.metric_sums(y, outputs)
    assert float(sums["classification_accuracy"]) == (logits[0].argmax() == 0) + (logits[1].argmax() == 1)
    assert float(sums["segmentation_loss"]) == pytest.approx(3 * float(heads["segmentation"]), rel=1e-6)
    loss.loss.set_active([0.0, 1.0])
    _, scheduled = TASK.replica_loss(model, loss, x, y, training=False, num_replicas=1)
    _, everything = TASK.replica_loss(model, loss.for_evaluation(), x, y, training=False, num_replicas=1)
    assert float(scheduled) == pytest.approx(float(heads["segmentation"]), rel=1e-6)
    assert float(everything) == pytest.approx(float(total), rel=1e-6)


def test_the_comparison_puts_every_head_beside_its_single_task_baseline():
    from components.tasks.multitask_report import comparison_sections

    def trial(name, heads, weighting="static"):
        return {"params": {"train": {"multitask": {"name": name, "heads": heads, "weighting": weighting}}}}

    trials = {
        "only_a": {"metrics": {"classification_accuracy": 0.9, "segmentation_mean_iou": math.nan, "mean_head_score": 0.45},
                   "history": {}, "trial": trial("only_a", ["classification"])},
        "both": {"metrics": {"classification_accuracy": 0.95, "segmentation_mean_iou": 0.7, "mean_head_score": 0.825,
                             "forgetting": {"rows": [{"task": "classification", "phase_end_epoch": 2, "at_phase_end": 0.9,
                                                      "final": 0.95, "forgetting": -0.05}]}},
                 "history": {"epoch": [1, 2], "task_weight_classification": [1.0, 0.8], "log_variance_classification": [0, 0.2],
                             "task_weight_segmentation": [1.0, 0.9], "log_variance_segmentation": [0, 0.1]},
                 "trial": trial("both", ["classification", "segmentation"], "uncertainty")},
    }
    sections = dict(comparison_sections(trials))
    table = sections["Every head per scheme"]
    assert "0.9500 (+0.050)" in table and "0.7000<" in table.replace(" ", "")   # no segmentation baseline
    assert "-0.0500" in sections["Forgetting per scheme"]
    assert sections["Learned task weights per epoch"].count("<img") == 1      # only the trial that learns them


# ------------------------------------------------------------------------------------------------
# the stages, end to end
# ------------------------------------------------------------------------------------------------
def write_shapes(directory, counts):
    import tensorflow as tf

    from components.examples import SCHEMA_FILE, encode_example
    from components.sources.synthetic import SHAPES, synthetic_record
    from pipeline.config import SyntheticSource

    source = SyntheticSource(image_size=16, num_classes=2, max_shapes=2, noise=0.05)
    start = 0
    for split, count in counts.items():
        (directory / split).mkdir(parents=True, exist_ok=True)
        with tf.io.TFRecordWriter(str(directory / split / "data-00000-of-00001.tfrecord.gz"), options="GZIP") as writer:
            for index in range(start, start + count):
                writer.write(encode_example(synthetic_record(index, source, "multitask")))
        start += count
    schema = {"task": "multitask", "class_names": list(SHAPES[:2]), "image_size": [16, 16, 3], "split_counts": counts,
              "features": [], "source": {"name": "synthetic"}, "mask_class_names": ["background", *SHAPES[:2]]}
    (directory / SCHEMA_FILE).write_text(json.dumps(schema))
    return directory


@pytest.mark.slow
def test_a_consecutive_trial_trains_evaluates_exports_and_predicts(tmp_path):
    import argparse
    import io

    from components.evaluate.stage import STAGE as EVALUATE
    from components.export.stage import STAGE as EXPORT
    from components.serving.predict import main as predict
    from components.train.stage import STAGE as TRAIN
    from pipeline.config import load_config

    examples = write_shapes(tmp_path / "examples", {"train": 24, "eval": 8, "test": 6})
    config = load_config(None, [
        f"pipeline.root={tmp_path / 'root'}", "ingest.task=multitask", "model.name=multitask",
        'model.params={"heads": ["classification", "segmentation", "detection", "regression"], '
        '"blocks": [{"filters": 4, "pool": "max"}, {"filters": 8, "pool": "max"}], "dense_units": 8, "detection_filters": 8}',
        "train.epochs=3", "train.batch_size=8", "train.num_sample_images=2", "train.optimizer.learning_rate=0.01",
        'train.multitask={"weighting": "uncertainty", "schedule": "consecutive", '
        '"epochs_per_task": {"classification": 1, "segmentation": 1, "detection": 1, "regression": 1}}',
        'evaluate.metric=mean_head_score', 'evaluate.thresholds={"mean_head_score": 0.0}',
        f"export.serving_root={tmp_path / 'serving'}", "export.model_name=shapes"])
    train = fx.context(config, tmp_path, "train", {"examples": examples}, ["model"])
    TRAIN.executor(train)
    model_dir = train.outputs["model"]
    history = json.loads((model_dir / "history.json").read_text())
    values = history["history"]
    assert values["epoch"] == [1, 2, 3, 4] and history["monitor"] == "epoch" and history["best_epoch"] == 4
    assert len(values["log_variance_classification"]) == 4 and "val_detection_AP50" in values
    assert values["log_variance_classification"][0] != 0.0                 # trained in phase 1 ...
    assert values["log_variance_classification"][1] == pytest.approx(values["log_variance_classification"][0], abs=0.05)

    evaluate = fx.context(config, tmp_path, "evaluate", {"examples": examples, "model": model_dir}, ["evaluation"])
    EVALUATE.executor(evaluate)
    out = evaluate.outputs["evaluation"]
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {r["task"]: r for r in metrics["forgetting"]["rows"]}
    accuracy = values["val_classification_accuracy"]
    assert rows["classification"]["forgetting"] == pytest.approx(accuracy[0] - accuracy[-1])
    assert metrics["forgetting_classification"] == rows["classification"]["forgetting"]
    assert metrics["heads"] == ["classification", "segmentation", "detection", "regression"]
    assert 0.0 <= metrics["segmentation_mean_iou"] <= 1.0 and metrics["regression_mae"] >= 0.0
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 6
    page = (out / "report.html").read_text()
    assert "Task weights per epoch" in page and "Forgetting" in page and "Every head on the test split" in page

    export = fx.context(config, tmp_path, "export", {"model": model_dir, "evaluation": out}, ["pushed"])
    EXPORT.executor(export)                                                 # fresh-process check inside
    pushed = json.loads((export.outputs["pushed"] / "pushed.json").read_text())
    assert pushed["pushed"] is True and pushed["signatures"] == ["serving_default", "serving_images"]
    assert max(pushed["max_abs_difference"].values()) < 1e-4

    from components.tasks.multitask import TASK

    served = TASK.served_outputs(tmp_path / "serving" / "shapes" / "1", [next((out / "probe").iterdir()).read_bytes()])
    assert {"classification_probabilities", "segmentation_class_id", "detection_boxes", "regression_values"} <= set(served)
    assert served["segmentation_class_id"].shape == (1, 16, 16) and served["detection_boxes"].shape[-1] == 4
    image = next((out / "probe").iterdir())
    code = predict(argparse.Namespace(model=str(tmp_path / "serving" / "shapes"), version=None, images=[str(image)],
                                      heatmap=None), out=(printed := io.StringIO()))
    parts = printed.getvalue().strip().split("\t")
    assert code == 0 and parts[0] == str(image) and parts[2].startswith("mask: ") and parts[3].startswith("boxes: ")
    assert parts[4].startswith("count ")
