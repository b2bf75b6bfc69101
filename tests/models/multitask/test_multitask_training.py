"""Multitask mechanics: masked means, target presence, the three schedules, forgetting."""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from models.multitask.training import (
    Phase, alternating_cycle, builder_params, consecutive_phases, forgetting, forgetting_table, make_schedule,
    masked_mean, phase_for_epoch, regression_targets, target_presence, task_for_step)


# ------------------------------------------------------------------------------------------------
# masked mean and presence
# ------------------------------------------------------------------------------------------------
def test_masked_mean_averages_present_examples_only():
    values = tf.constant([1.0, 2.0, 4.0, 8.0])
    assert float(masked_mean(values, tf.constant([1.0, 0.0, 1.0, 0.0]))) == pytest.approx(2.5)
    assert float(masked_mean(values, tf.constant([True, True, True, True]))) == pytest.approx(3.75)


def test_masked_mean_is_zero_with_zero_gradient_when_no_target_is_present():
    values = tf.Variable([3.0, 5.0])
    with tf.GradientTape() as tape:
        mean = masked_mean(values * values, tf.zeros([2]))
    gradient = tape.gradient(mean, values)
    assert float(mean) == 0.0
    np.testing.assert_array_equal(gradient.numpy(), [0.0, 0.0])


def test_absent_example_cannot_leak_nan():
    values = tf.constant([np.nan, 2.0, np.inf])
    assert float(masked_mean(values, tf.constant([0.0, 1.0, 0.0]))) == 2.0


def test_presence_is_inferred_from_the_targets():
    targets = {
        "class": tf.constant([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]),  # label -1 -> zeros
        "mask": tf.constant(np.stack([np.full((2, 2), 255), np.array([[0, 255], [255, 255]]),
                                      np.zeros((2, 2))]).astype(np.int32)),
    }
    presence = target_presence(targets, ["classification", "segmentation", "detection", "regression"])
    np.testing.assert_array_equal(presence["classification"].numpy(), [1, 0, 1])
    np.testing.assert_array_equal(presence["segmentation"].numpy(), [0, 1, 1])
    np.testing.assert_array_equal(presence["detection"].numpy(), [0, 0, 0])  # no box targets at all
    np.testing.assert_array_equal(presence["regression"].numpy(), [0, 0, 0])


def test_explicit_presence_wins_and_detection_is_present_without_boxes():
    targets = {"class": tf.ones([2, 3]), "boxes": -tf.ones([2, 4, 4]), "labels": -tf.ones([2, 4], tf.int32),
               "present": {"classification": tf.constant([0, 1])}}
    presence = target_presence(targets, ["classification", "detection", "regression"])
    np.testing.assert_array_equal(presence["classification"].numpy(), [0, 1])
    np.testing.assert_array_equal(presence["detection"].numpy(), [1, 1])  # images without objects are negatives
    np.testing.assert_array_equal(presence["regression"].numpy(), [1, 1])


def test_regression_targets_from_boxes():
    boxes = tf.constant([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 0.75], [-1, -1, -1, -1]],
                         [[-1, -1, -1, -1], [-1, -1, -1, -1], [-1, -1, -1, -1]]])
    labels = tf.constant([[0, 2, -1], [-1, -1, -1]])
    targets = {"boxes": boxes, "labels": labels}
    np.testing.assert_allclose(regression_targets(targets, "count").numpy(), [[2.0], [0.0]])
    np.testing.assert_allclose(regression_targets(targets, "mean_box_area").numpy(), [[(0.25 + 0.125) / 2], [0.0]])
    np.testing.assert_allclose(regression_targets({"regression": tf.constant([1.5, 2.0])}).numpy(), [[1.5], [2.0]])


# ------------------------------------------------------------------------------------------------
# schedules
# ------------------------------------------------------------------------------------------------
def test_alternating_cycle_interleaves_in_the_ratio():
    assert alternating_cycle(["a", "b"], {"a": 2}) == ["a", "b", "a"]
    assert alternating_cycle(["a", "b"], {"a": 3, "b": 1}) == ["a", "a", "b", "a"]
    assert alternating_cycle(["a", "b", "c"]) == ["a", "b", "c"]
    cycle = alternating_cycle(["seg", "cls", "det"], {"seg": 3, "cls": 2, "det": 1})
    assert Counter(cycle) == {"seg": 3, "cls": 2, "det": 1}
    assert cycle == ["seg", "cls", "seg", "det", "cls", "seg"]


def test_task_for_step_follows_the_ratio_over_many_steps():
    steps = [task_for_step(step, ["cls", "seg"], {"cls": 1, "seg": 3}) for step in range(40)]
    assert Counter(steps) == {"cls": 10, "seg": 30}
    assert steps[:8] == ["seg", "cls", "seg", "seg"] * 2
    # a pure function of the step: a resumed run continues the same sequence
    assert [task_for_step(step, ["cls", "seg"], {"cls": 1, "seg": 3}) for step in range(37, 40)] == steps[37:]


def test_consecutive_phases_and_epochs():
    phases = consecutive_phases(["cls", "seg", "det"], {"cls": 2, "det": 3}, default_epochs=4)
    assert phases == [Phase("cls", 1, 2), Phase("seg", 3, 6), Phase("det", 7, 9)]
    assert phase_for_epoch(6, phases).task == "seg"
    assert phase_for_epoch(7, phases).task == "det"
    with pytest.raises(ValueError, match=r"epoch 10 is outside the consecutive schedule \(epochs 1..9\)"):
        phase_for_epoch(10, phases)


def test_schedules_say_which_tasks_are_active():
    joint = make_schedule("joint", ["cls", "seg"])
    np.testing.assert_array_equal(joint.active(epoch=3, step=17), [1, 1])
    assert joint.epochs(default=8) == 8 and joint.task(1, 0) is None

    alternating = make_schedule("alternating", ["cls", "seg"], ratio={"cls": 2})
    assert [list(alternating.active(1, step)) for step in range(3)] == [[1, 0], [0, 1], [1, 0]]

    consecutive = make_schedule("consecutive", ["cls", "seg"], epochs_per_task={"cls": 2, "seg": 3})
    assert [list(consecutive.active(epoch, 0)) for epoch in (1, 2, 3, 5)] == [[1, 0], [1, 0], [0, 1], [0, 1]]
    assert consecutive.epochs(default=8) == 5
    assert consecutive.phase_ends() == {"cls": 2, "seg": 5}


@pytest.mark.parametrize("call, message", [
    (lambda: make_schedule("round_robin", ["a"]), "expected one of"),
    (lambda: make_schedule("alternating", ["a", "b"], ratio={"c": 2}), r"ratio: no head named \['c'\]"),
    (lambda: alternating_cycle(["a", "b"], {"a": 0}), "positive integers"),
    (lambda: consecutive_phases(["a"], {"b": 1}), r"epochs_per_task: no head named \['b'\]"),
])
def test_schedule_errors_name_the_key(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------------------------------------
# forgetting
# ------------------------------------------------------------------------------------------------
def test_forgetting_is_phase_end_minus_final():
    amounts = forgetting({"cls": 0.92, "seg": 0.80}, {"cls": 0.70, "seg": 0.80})
    assert amounts == pytest.approx({"cls": 0.22, "seg": 0.0})
    # lower is better (a loss): rising from 0.3 to 0.5 is forgetting 0.2
    assert forgetting({"cls": 0.3}, {"cls": 0.5}, higher_is_better=False) == pytest.approx({"cls": 0.2})


def test_forgetting_table_from_evaluations_after_each_phase():
    evaluations = [{"cls": 0.9}, {"cls": 0.75, "seg": 0.6}, {"cls": 0.5, "seg": 0.7, "det": 0.4}]
    rows = forgetting_table(["cls", "seg", "det"], evaluations)
    assert [(r["task"], r["at_phase_end"], r["final"]) for r in rows] == [
        ("cls", 0.9, 0.5), ("seg", 0.6, 0.7), ("det", 0.4, 0.4)]
    assert [r["forgetting"] for r in rows] == pytest.approx([0.4, -0.1, 0.0])
    with pytest.raises(ValueError, match=r"after phase 2 \(seg\) lacks \['cls'\]"):
        forgetting_table(["cls", "seg"], [{"cls": 0.9}, {"seg": 0.6}])


# ------------------------------------------------------------------------------------------------
# configuration -> builder
# ------------------------------------------------------------------------------------------------
def test_builder_params_apply_train_multitask():
    params = builder_params({"heads": ["classification", "segmentation"], "dense_units": 32},
                            heads=["segmentation"], weighting="uncertainty",
                            weights={"classification": 2.0, "segmentation": 0.5})
    assert params == {"heads": ["segmentation"], "dense_units": 32, "weighting": "uncertainty",
                      "task_weights": {"segmentation": 0.5}}
    assert builder_params({"heads": ["classification"]})["heads"] == ["classification"]


# ------------------------------------------------------------------------------------------------
# the shipped comparison config
# ------------------------------------------------------------------------------------------------
def test_the_multitask_config_loads_and_every_trial_builds():
    from models import build_model
    from pipeline.config import apply_override, load_config, load_config_dict, parse_config

    path = Path(__file__).resolve().parents[3] / "configs" / "multitask.json"
    config = load_config(path)
    assert config.ingest.task == "multitask" and config.ingest.source.max_shapes >= 2
    trials = config.train.sweep["train.multitask"]
    schemes = {(tuple(t["heads"]), t["weighting"], t["schedule"]) for t in trials}
    full = ("classification", "segmentation", "detection")
    assert schemes == {(("classification",), "static", "joint"), (("segmentation",), "static", "joint"),
                       (("detection",), "static", "joint"), (full, "static", "joint"), (full, "uncertainty", "joint"),
                       (full, "uncertainty", "alternating"), (full, "uncertainty", "consecutive")}
    raw = load_config_dict(path)
    size = tuple(config.ingest.image_size or (config.ingest.source.image_size,) * 2)
    for value in trials:
        trial = parse_config(apply_override(raw, "train.multitask=" + json.dumps(value)))
        section = trial.train.multitask
        schedule = make_schedule(section.schedule, section.heads, section.ratio, section.epochs_per_task,
                                 trial.train.epochs)
        assert schedule.epochs(trial.train.epochs) == 30
        params = builder_params(trial.model.params, section.heads, section.weighting, section.weights)
        model = build_model(trial.model.name, (*size, 3), trial.ingest.source.num_classes, **params)
        assert list(model.heads) == list(section.heads)
        assert model.task_weighting.mode == section.weighting
