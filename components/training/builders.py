"""Model, loss and optimizer of a trial, by registered name from the typed config.

Everything here runs inside the strategy's scope (the caller opens it), so variables are created
mirrored where the strategy mirrors them.
"""
from __future__ import annotations

from typing import Sequence


def build_network(model_section, input_shape: Sequence[int], num_classes: int):
    from models import build_model

    return build_model(model_section.name, tuple(input_shape), num_classes, **model_section.params)


def build_loss(train_section):
    from models import get_loss

    return get_loss(train_section.loss, **train_section.loss_params)


def batch_size_for(train_section, train_size: int) -> int:
    """The global batch: batch_gd uses the whole train split, stochastic_gd one example."""
    from models.optimizers import effective_batch_size

    return int(effective_batch_size(train_section.optimizer.name, train_section.batch_size, train_size))


def build_optimizer(train_section, steps_per_epoch: int, policy: str):
    """The configured optimizer; wrapped in a LossScaleOptimizer under mixed_float16."""
    import keras
    from models.optimizers import make_optimizer

    optimizer = make_optimizer(train_section.optimizer, steps_per_epoch=steps_per_epoch, epochs=train_section.epochs)
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def loss_variables(loss) -> list:
    """Variables a stateful loss keeps (e.g. the running mean of automated focal loss), for backups."""
    variables = getattr(loss, "variables", None)
    return list(variables) if variables else []
