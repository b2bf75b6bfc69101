"""Optimizers and learning-rate schedules by name.

    optimizer = make_optimizer(config.train.optimizer, steps_per_epoch=20, epochs=10)
    optimizer = get_optimizer("nesterov", learning_rate=0.01, momentum=0.9)

The three gradient-descent variants share one update rule (plain SGD) and differ only in how
many examples feed each update: `batch_gd` the whole training split (one update per epoch),
`stochastic_gd` one example (one update per example), `sgd` the configured mini-batch. That is
the trainer's batch size, so it lives here as `effective_batch_size` for the trainer to call.
Schedules count optimizer steps: `cosine` decays to 0 over epochs * steps_per_epoch, `step`
multiplies the rate by `step_decay` every `step_epochs` epochs.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import keras

from models.registry import OPTIMIZERS

NAMES = ("sgd", "batch_gd", "stochastic_gd", "momentum", "nesterov", "adagrad", "adadelta", "adam")
SCHEDULES = ("constant", "cosine", "step")
DEFAULTS = {"learning_rate": 1e-3, "momentum": 0.9, "schedule": "constant", "step_epochs": 5, "step_decay": 0.5,
            "clipnorm": None}


def effective_batch_size(name: str, batch_size: int, train_size: int) -> int:
    """Examples per update: the whole split for batch_gd, 1 for stochastic_gd, `batch_size` otherwise."""
    for key, value in (("batch_size", batch_size), ("train_size", train_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Invalid value for argument `{key}`. Expected a strictly positive int. "
                             f"Received {key}={value!r}")
    _check_name(name)
    return {"batch_gd": train_size, "stochastic_gd": 1}.get(name, batch_size)


def learning_rate_schedule(learning_rate: float, schedule: str = "constant", *, steps_per_epoch: Optional[int] = None,
                           epochs: Optional[int] = None, step_epochs: int = 5, step_decay: float = 0.5):
    """A float for `constant`, else a Keras LearningRateSchedule over optimizer steps."""
    if schedule == "constant":
        return float(learning_rate)
    if schedule not in SCHEDULES:
        raise ValueError(f"Invalid value for `schedule`. Expected one of {', '.join(SCHEDULES)}. "
                         f"Received schedule={schedule!r}")
    if not steps_per_epoch or steps_per_epoch < 1 or schedule == "cosine" and (not epochs or epochs < 1):
        raise ValueError(f"schedule={schedule!r} counts optimizer steps, so it needs steps_per_epoch"
                         f"{' and epochs' if schedule == 'cosine' else ''} (strictly positive). "
                         f"Received steps_per_epoch={steps_per_epoch!r}, epochs={epochs!r}")
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=epochs * steps_per_epoch)
    return keras.optimizers.schedules.ExponentialDecay(learning_rate, decay_steps=step_epochs * steps_per_epoch,
                                                       decay_rate=step_decay, staircase=True)


def make_optimizer(config: Any = None, /, *, steps_per_epoch: Optional[int] = None, epochs: Optional[int] = None,
                   **fields) -> keras.optimizers.Optimizer:
    """The optimizer a config describes.

    `config`: anything with the fields name, learning_rate, momentum, schedule, step_epochs,
    step_decay, clipnorm as attributes (the pipeline's optimizer section) or keys (a dict); keyword
    `fields` override it. `steps_per_epoch` and `epochs` size the cosine and step schedules.
    """
    values = {**DEFAULTS, **_fields_of(config), **fields}
    unknown = sorted(set(values) - set(DEFAULTS) - {"name"})
    if unknown:
        raise ValueError(f"Unknown optimizer field(s) {unknown}. Expected: name, {', '.join(DEFAULTS)}.")
    name = _check_name(values.get("name"))
    for key, low, high in (("learning_rate", 0.0, float("inf")), ("momentum", 0.0, 1.0), ("step_decay", 0.0, 1.0)):
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > low if key != "momentum"
                                                                                  else value >= low) or value > high:
            raise ValueError(f"Invalid value for optimizer field `{key}`. Expected a number in "
                             f"{'[' if key == 'momentum' else '('}{low}, {high}]. Received {key}={value!r}")
    learning_rate = learning_rate_schedule(values["learning_rate"], values["schedule"],
                                           steps_per_epoch=steps_per_epoch, epochs=epochs,
                                           step_epochs=values["step_epochs"], step_decay=values["step_decay"])
    common = {"learning_rate": learning_rate, "clipnorm": values["clipnorm"]}
    momentum = float(values["momentum"])
    if name in ("sgd", "batch_gd", "stochastic_gd"):
        return keras.optimizers.SGD(momentum=0.0, **common)
    if name in ("momentum", "nesterov"):
        return keras.optimizers.SGD(momentum=momentum, nesterov=name == "nesterov", **common)
    return {"adagrad": keras.optimizers.Adagrad, "adadelta": keras.optimizers.Adadelta,
            "adam": keras.optimizers.Adam}[name](**common)


def _fields_of(config: Any) -> dict:
    if config is None:
        return {}
    if isinstance(config, dict):
        return dict(config)
    return {key: getattr(config, key) for key in ("name", *DEFAULTS) if hasattr(config, key)}


def _check_name(name: Any) -> str:
    if name not in NAMES:
        raise ValueError(f"Unknown optimizer {name!r}. Expected one of: {', '.join(NAMES)}.")
    return name


for _name in NAMES:
    OPTIMIZERS.register(_name)(functools.partial(make_optimizer, name=_name))
