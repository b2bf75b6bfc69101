"""TaskWeighting: the uncertainty-weighted total and its gradients against Kendall et al.'s formulas."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.multitask.task_weighting import TaskWeighting, kind_of_head

TASKS = {"labels": "classification", "pixels": "classification", "count": "regression"}
S = {"labels": 0.7, "pixels": -0.4, "count": 1.3}
L = {"labels": 2.5, "pixels": 0.8, "count": 3.0}


def _losses(values=L):
    return {name: tf.constant(value, tf.float32) for name, value in values.items()}


def test_uncertainty_total_equals_the_formula():
    weighting = TaskWeighting(TASKS, "uncertainty", initial_log_variance=S)
    expected = (math.exp(-0.7) * 2.5 + 0.35) + (math.exp(0.4) * 0.8 - 0.2) + (0.5 * math.exp(-1.3) * 3.0 + 0.65)
    assert float(weighting(_losses())) == pytest.approx(expected, rel=1e-6)
    terms = weighting.terms(_losses())
    assert float(terms["count"]) == pytest.approx(0.5 * math.exp(-1.3) * 3.0 + 0.65, rel=1e-6)


def test_gradient_with_respect_to_each_log_variance():
    weighting = TaskWeighting(TASKS, "uncertainty", initial_log_variance=S)
    variables = weighting.log_variance
    with tf.GradientTape() as tape:
        total = weighting(_losses())
    gradients = dict(zip(variables, tape.gradient(total, list(variables.values()))))
    for name in ("labels", "pixels"):  # classification form: 1/2 - exp(-s) L
        assert float(gradients[name]) == pytest.approx(0.5 - math.exp(-S[name]) * L[name], rel=1e-5)
    # regression form: 1/2 - 1/2 exp(-s) L
    assert float(gradients["count"]) == pytest.approx(0.5 - 0.5 * math.exp(-1.3) * 3.0, rel=1e-5)


def test_gradient_with_respect_to_each_loss_is_its_weight():
    weighting = TaskWeighting(TASKS, "uncertainty", initial_log_variance=S)
    losses = {name: tf.Variable(value) for name, value in L.items()}
    with tf.GradientTape() as tape:
        total = weighting(losses)
    grads = dict(zip(losses, tape.gradient(total, list(losses.values()))))
    assert float(grads["labels"]) == pytest.approx(math.exp(-0.7), rel=1e-6)
    assert float(grads["count"]) == pytest.approx(0.5 * math.exp(-1.3), rel=1e-6)
    assert weighting.task_weights() == pytest.approx(
        {"labels": math.exp(-0.7), "pixels": math.exp(0.4), "count": 0.5 * math.exp(-1.3)}, rel=1e-6)


def test_log_variances_are_trainable_and_settle_where_the_gradient_vanishes():
    weighting = TaskWeighting({"a": "classification", "b": "regression"}, "uncertainty")
    assert len(weighting.trainable_weights) == 2
    optimizer = keras.optimizers.SGD(0.5)
    losses = _losses({"a": 2.0, "b": 2.0})
    for _ in range(100):
        with tf.GradientTape() as tape:
            total = weighting(losses)
        optimizer.apply_gradients(zip(tape.gradient(total, weighting.trainable_weights), weighting.trainable_weights))
    s = weighting.log_variances()
    assert s["a"] == pytest.approx(math.log(2 * 2.0), abs=1e-3)  # exp(s) = 2 L
    assert s["b"] == pytest.approx(math.log(2.0), abs=1e-3)      # exp(s) = L


def test_static_weights_from_config_and_default_one():
    weighting = TaskWeighting(TASKS, "static", weights={"labels": 2.0, "count": 0.1})
    assert weighting.weights == []
    assert float(weighting(_losses())) == pytest.approx(2.0 * 2.5 + 1.0 * 0.8 + 0.1 * 3.0, rel=1e-6)
    assert weighting.task_weights() == {"labels": 2.0, "pixels": 1.0, "count": 0.1}
    assert weighting.log_variances() == {}


def test_inactive_task_adds_nothing_and_gets_no_gradient():
    weighting = TaskWeighting(TASKS, "uncertainty", initial_log_variance=S)
    variables = weighting.log_variance
    with tf.GradientTape() as tape:
        total = weighting(_losses(), active=np.array([1.0, 0.0, 1.0], np.float32))
    gradients = dict(zip(variables, tape.gradient(total, list(variables.values()))))
    expected = (math.exp(-0.7) * 2.5 + 0.35) + (0.5 * math.exp(-1.3) * 3.0 + 0.65)
    assert float(total) == pytest.approx(expected, rel=1e-6)
    assert float(gradients["pixels"]) == 0.0
    assert float(gradients["labels"]) != 0.0


def test_config_round_trip_keeps_initial_values():
    weighting = TaskWeighting(TASKS, "uncertainty", initial_log_variance=S, name="w")
    clone = TaskWeighting.from_config(weighting.get_config())
    assert clone.tasks == TASKS and clone.mode == "uncertainty"
    assert clone.log_variances() == pytest.approx(S)


def test_kind_of_head():
    assert [kind_of_head(h) for h in ("classification", "segmentation", "detection", "regression")] == [
        "classification", "classification", "classification", "regression"]
    with pytest.raises(ValueError, match="Unknown head 'depth'"):
        kind_of_head("depth")


@pytest.mark.parametrize("kwargs, message", [
    ({"tasks": {}}, "non-empty mapping"),
    ({"tasks": {"a": "ranking"}}, "kind to be one of"),
    ({"tasks": {"a": "classification"}, "mode": "learned"}, "Received mode='learned'"),
    ({"tasks": {"a": "classification"}, "weights": {"b": 1.0}}, r"no task named \['b'\]"),
    ({"tasks": {"a": "classification"}, "weights": {"a": -1.0}}, "non-negative"),
    ({"tasks": {"a": "classification"}, "mode": "uncertainty", "initial_log_variance": {"z": 0.0}}, "no task named"),
])
def test_invalid_arguments_say_what_was_expected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskWeighting(**kwargs)


def test_missing_loss_is_named():
    weighting = TaskWeighting({"a": "classification", "b": "regression"})
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        weighting({"a": tf.constant(1.0)})
