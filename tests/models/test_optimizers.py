"""Optimizers by name: the right Keras class and hyperparameters, batch sizes per variant, iteration
counts per epoch, and learning-rate schedule values."""
import math
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from models import get_optimizer
from models.optimizers import effective_batch_size, make_optimizer


def test_each_name_makes_the_right_optimizer():
    expected = {"sgd": (keras.optimizers.SGD, 0.0, False), "batch_gd": (keras.optimizers.SGD, 0.0, False),
                "stochastic_gd": (keras.optimizers.SGD, 0.0, False), "momentum": (keras.optimizers.SGD, 0.8, False),
                "nesterov": (keras.optimizers.SGD, 0.8, True), "adagrad": (keras.optimizers.Adagrad, None, None),
                "adadelta": (keras.optimizers.Adadelta, None, None), "adam": (keras.optimizers.Adam, None, None)}
    for name, (cls, momentum, nesterov) in expected.items():
        optimizer = get_optimizer(name, learning_rate=0.05, momentum=0.8, clipnorm=1.0)
        assert type(optimizer) is cls, name
        assert float(optimizer.learning_rate) == pytest.approx(0.05) and optimizer.clipnorm == 1.0
        if momentum is not None:
            assert optimizer.momentum == momentum and optimizer.nesterov == nesterov, name


def test_make_optimizer_reads_a_config_section_with_overrides():
    section = SimpleNamespace(name="nesterov", learning_rate=0.1, momentum=0.5, schedule="constant", step_epochs=5,
                              step_decay=0.5, clipnorm=None)
    optimizer = make_optimizer(section, steps_per_epoch=3, epochs=2)
    assert optimizer.nesterov and optimizer.momentum == 0.5 and float(optimizer.learning_rate) == pytest.approx(0.1)
    assert type(make_optimizer({"name": "adam"}, learning_rate=0.2)) is keras.optimizers.Adam


def test_effective_batch_size():
    assert effective_batch_size("batch_gd", 32, 700) == 700
    assert effective_batch_size("stochastic_gd", 32, 700) == 1
    for name in ("sgd", "momentum", "nesterov", "adagrad", "adadelta", "adam"):
        assert effective_batch_size(name, 32, 700) == 32
    with pytest.raises(ValueError, match="train_size=0"):
        effective_batch_size("sgd", 32, 0)


@pytest.mark.parametrize("name, batch_size, updates_per_epoch", [
    ("batch_gd", 4, 1), ("stochastic_gd", 4, 10), ("sgd", 4, 3)])
def test_updates_per_epoch_follow_the_variant(name, batch_size, updates_per_epoch):
    x = np.random.default_rng(0).normal(size=(10, 3)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")[:, None]
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    optimizer = get_optimizer(name, learning_rate=0.01)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=effective_batch_size(name, batch_size, len(x)), epochs=2, shuffle=False, verbose=0)
    assert int(optimizer.iterations) == 2 * updates_per_epoch


def _rate_at(optimizer, step):
    optimizer.iterations.assign(step)
    return float(optimizer.learning_rate)


def test_cosine_schedule_decays_to_zero_over_all_steps():
    optimizer = get_optimizer("sgd", learning_rate=0.4, schedule="cosine", steps_per_epoch=5, epochs=4)
    assert _rate_at(optimizer, 0) == pytest.approx(0.4)
    assert _rate_at(optimizer, 10) == pytest.approx(0.2, abs=1e-6)                     # halfway: (1 + cos(pi/2)) / 2
    assert _rate_at(optimizer, 5) == pytest.approx(0.4 * (1 + math.cos(math.pi / 4)) / 2, abs=1e-6)
    assert _rate_at(optimizer, 20) == pytest.approx(0.0, abs=1e-7)


def test_step_schedule_decays_every_step_epochs():
    optimizer = get_optimizer("adam", learning_rate=0.1, schedule="step", steps_per_epoch=4, step_epochs=2,
                              step_decay=0.5)
    assert _rate_at(optimizer, 7) == pytest.approx(0.1)           # still in epochs 1-2
    assert _rate_at(optimizer, 8) == pytest.approx(0.05)          # epoch 3
    assert _rate_at(optimizer, 17) == pytest.approx(0.025)        # epoch 5


@pytest.mark.parametrize("params, fragment", [
    ({"name": "rmsprop"}, "Unknown optimizer 'rmsprop'"),
    ({"name": "adam", "schedule": "cosine", "steps_per_epoch": 5}, "needs steps_per_epoch and epochs"),
    ({"name": "adam", "schedule": "linear"}, "schedule='linear'"),
    ({"name": "adam", "beta_1": 0.8}, "Unknown optimizer field(s) ['beta_1']"),
    ({"name": "momentum", "momentum": 1.5}, "momentum=1.5"),
    ({"name": "sgd", "learning_rate": 0}, "learning_rate=0"),
])
def test_invalid_settings_are_named(params, fragment):
    with pytest.raises(ValueError) as err:
        make_optimizer(**params)
    assert fragment in str(err.value)
