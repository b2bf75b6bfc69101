"""Classification losses against their formulas on hand-computed numbers; automated focal loss's state."""
import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import get_loss
from models.losses import AutomatedFocalLoss

# logits [2, 1, 0], true class 0: softmax p = [0.665241, 0.244728, 0.090031]
LOGITS = np.array([[2.0, 1.0, 0.0]], "float32")
ONE_HOT = np.array([[1.0, 0.0, 0.0]], "float32")
P = np.array([0.66524096, 0.24472847, 0.09003057])


def _value(name, y=ONE_HOT, logits=LOGITS, **params):
    return float(get_loss(name, **params)(y, logits))


@pytest.mark.parametrize("name, expected", [
    ("categorical_crossentropy", 0.40760596),       # -ln 0.665241
    ("softmax_cross_entropy", 0.40760596),
    ("mse", 0.06002038),                            # (0.334759^2 + 0.244728^2 + 0.090031^2) / 3
    ("mae", 0.22317270),                            # (0.334759 + 0.244728 + 0.090031) / 3
    ("msle", 0.02963673),                           # mean (ln(1 + p) - ln(1 + y))^2
    ("focal", 0.01141945),                          # 0.25 * 0.334759^2 * 0.407606
    ("hinge", 0.0),                                 # max(0, 1 + 1 - 2)
])
def test_hand_computed_values(name, expected):
    assert _value(name) == pytest.approx(expected, abs=1e-6)


def test_hinge_is_crammer_singer_and_leaves_the_true_class_out():
    logits = np.array([[-1.0, -3.0, -2.0], [-1.0, -3.0, -2.0], [0.5, 0.2, 0.4]], "float32")
    y = np.eye(3, dtype="float32")[[0, 1, 2]]
    per_example = [max(0.0, 1 + (-2) - (-1)), 1 + (-1) - (-3), 1 + 0.5 - 0.4]   # 0, 3, 1.1
    assert _value("hinge", y, logits) == pytest.approx(np.mean(per_example), abs=1e-6)
    # Keras's categorical_hinge reads the true class as 0 among the others: 2 for the first example
    assert float(keras.losses.categorical_hinge(y[:1], logits[:1])[0]) == pytest.approx(2.0)
    assert _value("hinge", y[:1], logits[:1], margin=2.5) == pytest.approx(1.5)


def test_every_loss_matches_its_formula_on_random_batches():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)).astype("float32") * 2
    labels = rng.integers(0, 4, size=6)
    y = np.eye(4, dtype="float32")[labels]
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    p_t = p[np.arange(6), labels]
    others = np.where(y > 0, -np.inf, logits).max(-1)
    alpha = np.array([0.1, 0.2, 0.3, 0.4])
    expected = {
        "categorical_crossentropy": -np.log(p_t),
        "softmax_cross_entropy": -np.log(p_t),
        "hinge": np.maximum(0, 1 + others - logits[np.arange(6), labels]),
        "mse": ((p - y) ** 2).mean(-1),
        "mae": np.abs(p - y).mean(-1),
        "msle": ((np.log1p(p) - np.log1p(y)) ** 2).mean(-1),
        "focal": -0.25 * (1 - p_t) ** 2 * np.log(p_t),
    }
    for name, values in expected.items():
        assert _value(name, y, logits) == pytest.approx(values.mean(), rel=1e-5), name
    focal = _value("focal", y, logits, gamma=0.5, alpha=alpha.tolist())
    assert focal == pytest.approx((-alpha[labels] * (1 - p_t) ** 0.5 * np.log(p_t)).mean(), rel=1e-5)
    # integer labels are turned one-hot; float16 logits (mixed precision) are cast to float32
    assert _value("categorical_crossentropy", labels, logits.astype("float16")) == pytest.approx(
        -np.log(p_t).mean(), rel=1e-3)


def test_focal_with_gamma_zero_and_alpha_one_is_cross_entropy():
    assert _value("focal", gamma=0.0, alpha=1.0) == pytest.approx(_value("softmax_cross_entropy"), abs=1e-7)


def test_automated_focal_follows_the_running_mean():
    loss = get_loss("automated_focal", momentum=0.9)
    assert float(loss.gamma) == 0.0 and float(loss.p_hat) == 0.0
    value = float(loss(ONE_HOT, LOGITS))
    assert float(loss.p_hat) == pytest.approx(P[0], abs=1e-6)                  # first batch sets p_hat
    gamma = -math.log(P[0])
    assert float(loss.gamma) == pytest.approx(gamma, abs=1e-6)
    assert value == pytest.approx((1 - P[0]) ** gamma * -math.log(P[0]), abs=1e-6)
    # a second batch with p_t = 0.5 (two equal logits, one lower by ln 2 ... here: logits [0, 0])
    loss(np.array([[1.0, 0.0]], "float32"), np.array([[0.0, 0.0]], "float32"))
    assert float(loss.p_hat) == pytest.approx(0.9 * P[0] + 0.1 * 0.5, abs=1e-6)


def test_automated_focal_gamma_falls_as_the_correct_class_probability_rises():
    loss = AutomatedFocalLoss(momentum=0.5)
    gammas = []
    for margin in (0.0, 1.0, 2.0, 4.0, 8.0):
        loss(ONE_HOT, np.array([[margin, 0.0, 0.0]], "float32"))
        gammas.append(float(loss.gamma))
    assert all(a > b for a, b in zip(gammas, gammas[1:])), gammas
    assert gammas[0] == pytest.approx(math.log(3), abs=1e-6) and gammas[-1] < gammas[0] / 5


def test_automated_focal_gradient_carries_no_term_through_gamma():
    rng = np.random.default_rng(1)
    logits = tf.constant(rng.normal(size=(5, 3)).astype("float32"))
    labels = rng.integers(0, 3, size=5)
    y = np.eye(3, dtype="float32")[labels]
    loss = AutomatedFocalLoss(alpha=0.5, initial_p_hat=0.4)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        value = loss(y, logits)
    gradient = tape.gradient(value, logits).numpy()
    p = tf.nn.softmax(logits).numpy()
    p_hat = 0.95 * 0.4 + 0.05 * p[np.arange(5), labels].mean()
    weight = 0.5 * (1 - p[np.arange(5), labels]) ** -np.log(p_hat)
    # d/dz of w * CE with w held fixed: w * (p - y), averaged over the batch
    np.testing.assert_allclose(gradient, weight[:, None] * (p - y) / 5, atol=1e-6)


def test_automated_focal_for_evaluation_reads_but_never_moves_p_hat():
    loss = AutomatedFocalLoss(initial_p_hat=0.5)
    evaluation = loss.for_evaluation()
    expected = (1 - P[0]) ** math.log(2) * -math.log(P[0])
    assert float(evaluation(ONE_HOT, LOGITS)) == pytest.approx(expected, abs=1e-6)
    assert float(loss.p_hat) == 0.5
    loss(ONE_HOT, LOGITS)
    assert evaluation.p_hat is loss.p_hat and not evaluation.update and loss.update
    assert float(evaluation.p_hat) == pytest.approx(0.95 * 0.5 + 0.05 * P[0], abs=1e-6)
    assert get_loss("focal").for_evaluation() is not None


def test_automated_focal_updates_inside_tf_function_and_restores_from_a_checkpoint(tmp_path):
    loss = AutomatedFocalLoss(momentum=0.5)
    step = tf.function(lambda y, z: loss(y, z))
    step(ONE_HOT, LOGITS)
    step(ONE_HOT, tf.constant([[0.0, 0.0, 0.0]]))
    assert float(loss.p_hat) == pytest.approx(0.5 * P[0] + 0.5 / 3, abs=1e-6)
    path = tf.train.Checkpoint(loss_state=loss.variables).save(str(tmp_path / "ckpt"))
    fresh = AutomatedFocalLoss(momentum=0.5)
    tf.train.Checkpoint(loss_state=fresh.variables).restore(path).assert_consumed()
    assert float(fresh.p_hat) == pytest.approx(float(loss.p_hat))


def test_losses_serialise_with_their_parameters():
    for name, params in (("focal", {"gamma": 1.5, "alpha": [0.2, 0.8]}), ("hinge", {"margin": 2.0}),
                         ("automated_focal", {"momentum": 0.8, "initial_p_hat": 0.3}),
                         ("categorical_crossentropy", {"epsilon": 1e-5}), ("msle", {})):
        loss = get_loss(name, **params)
        clone = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(clone) is type(loss) and clone.get_config() == loss.get_config()


@pytest.mark.parametrize("name, params, fragment", [
    ("focal", {"gamma": -1}, "gamma=-1"),
    ("automated_focal", {"momentum": 1.5}, "momentum=1.5"),
    ("focal", {"alpha": []}, "alpha=[]"),
    ("hinge", {"margin": "1"}, "margin='1'"),
])
def test_invalid_parameters_are_named(name, params, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        get_loss(name, **params)


MIRRORED_SCRIPT = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from models.losses import AutomatedFocalLoss
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        loss = AutomatedFocalLoss(momentum=0.5, initial_p_hat=0.5)
    # replica 0 sees p_t = 1/3 (equal logits), replica 1 sees p_t = 1/2 (two classes tied at the top)
    logits = tf.constant([[0.0, 0.0, 0.0], [50.0, 50.0, -50.0]])
    y = tf.constant([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    data = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((y, logits)).batch(2))
    @tf.function
    def step(batch):
        return strategy.run(lambda y, z: (loss(y, z), loss.gamma), args=batch)
    losses, gammas = step(next(iter(data)))
    gammas = [float(g) for g in strategy.experimental_local_results(gammas)]
    values = [float(v) for v in strategy.experimental_local_results(loss.p_hat.value)]
    print("replicas", strategy.num_replicas_in_sync, "p_hat", values, "gamma", gammas)
    expected = 0.5 * 0.5 + 0.5 * (1 / 3 + 1 / 2) / 2
    assert strategy.num_replicas_in_sync == 2
    assert all(abs(v - expected) < 1e-6 for v in values), values
    assert all(abs(g + np.log(expected)) < 1e-5 for g in gammas), gammas
""")


def test_automated_focal_p_hat_is_the_mean_over_replicas_under_mirrored_strategy():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True, text=True, env=env,
                            timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "replicas 2" in result.stdout
