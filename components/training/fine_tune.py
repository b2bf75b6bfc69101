"""Two-phase fine-tuning (`train.fine_tune`) in the project's own training loop.

Keras's transfer-learning recipe, in the custom loop that runs under every tf.distribute strategy:

1. epochs 1..frozen_epochs: the backbone is frozen and only the new head trains, at
   train.optimizer's learning rate, so the head's random start sends no large gradients into the
   pretrained weights;
2. the remaining epochs: the backbone unfreezes as `model.params.backbone.trainable` says ("all",
   or "from:<layer>") and everything trains at fine_tune.learning_rate, small.

Batch norm layers of a pretrained backbone stay frozen in both phases (inference mode:
models/backbones/build.py says why `training=False` alone does not hold in Keras 3.15).

Mechanics. Changing `trainable` changes `model.trainable_variables`, which a traced train step
has baked in, so each phase gets its own StepFunctions (a new trace); the optimizer was built on
the phase-2 variables before the freeze, so its slots exist from the start, the backups hold the
same objects in both phases, and a run killed in either phase resumes in it (the phase follows
from the epochs done). The phase-2 learning rate replaces the optimizer's through its public
setter, as a constant LearningRateSchedule, which works on a float-rate and a scheduled
optimizer alike (and through a LossScaleOptimizer).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from pipeline.config import ConfigError


def backbone_params(config) -> dict | None:
    """The `backbone` entry of model.params (detection's `by_stage` entry for the stage resolved), or None."""
    params = dict(config.model.params)
    by_stage = params.get("by_stage")
    if isinstance(by_stage, dict) and isinstance(by_stage.get(params.get("stage", "one")), dict):
        params.update(by_stage[params.get("stage", "one")])
    return params.get("backbone")


def check(config) -> None:
    """Config errors of model.params.backbone and train.fine_tune, before anything runs: the spec's
    form, the weights file's existence and kind, and a fine-tune that has something to unfreeze."""
    raw = backbone_params(config)
    tune = config.train.fine_tune
    if raw is None:
        if tune is not None:
            raise ConfigError("train.fine_tune: expected a model.params.backbone to fine-tune (the first phase "
                              "freezes the backbone); got none. Remove train.fine_tune or add a backbone.")
        return
    from models import backbones
    from models.backbones import weights

    try:
        spec = backbones.parse_spec(raw, f"model.params ({config.model.name})")
        if spec.weights is not None:
            weights.check_path(spec.weights, spec.name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if tune is None:
        return
    if tune.frozen_epochs >= config.train.epochs:
        raise ConfigError(f"train.fine_tune.frozen_epochs: expected fewer than train.epochs ({config.train.epochs}) "
                          f"so that some epochs fine-tune the backbone, got {tune.frozen_epochs}")
    if spec.trainable == "none":
        raise ConfigError("train.fine_tune: model.params.backbone.trainable is 'none', so the second phase would "
                          "unfreeze nothing; expected 'all' or 'from:<layer name>'")


def fit_in_phases(fit: Callable, make_steps: Callable, train_section, model, optimizer, train_data, eval_data,
                  plan, progress, *rest, log, **kwargs):
    """`fit(make_steps(), train_data, eval_data, plan, progress, *rest, log=log, **kwargs)` once, or,
    with train.fine_tune, once per phase (loop.fit's arguments, passed through)."""
    tune = train_section.fine_tune
    if tune is None:
        return fit(make_steps(), train_data, eval_data, plan, progress, *rest, log=log, **kwargs)
    from models import backbones

    found = backbones.find(model)
    if len(found) != 1:
        raise ValueError(f"train.fine_tune: expected one backbone in the model, found {len(found)}")
    backbone = found[0]
    phase_two = [(layer, layer.trainable) for layer in backbone.layers]  # as the builder left them
    if progress.epochs_done < tune.frozen_epochs and not progress.stopped_early:
        backbone.trainable = False
        log.info("fine-tune phase 1: epochs 1-%d train the head alone (backbone frozen; %d trainable variables)",
                 tune.frozen_epochs, len(model.trainable_variables))
        fit(make_steps(), train_data, eval_data, replace(plan, epochs=tune.frozen_epochs), progress, *rest, log=log,
            **kwargs)
    backbone.trainable = True
    for layer, trainable in phase_two:
        layer.trainable = trainable
    set_learning_rate(optimizer, tune.learning_rate)
    log.info("fine-tune phase 2: epochs %d-%d train the backbone too (%d trainable variables) at learning rate %g",
             tune.frozen_epochs + 1, plan.epochs, len(model.trainable_variables), tune.learning_rate)
    return fit(make_steps(), train_data, eval_data, plan, progress, *rest, log=log, **kwargs)


def set_learning_rate(optimizer, value: float) -> None:
    """The optimizer's learning rate from now on. A rate made from a float is a variable: assign it
    (replacing it would drop the variable from the optimizer's tracked list, which TF checkpoints
    refuse to save). A schedule (cosine, step) is replaced by a constant one, through the public
    setter, which a LossScaleOptimizer passes on to its inner optimizer."""
    if hasattr(optimizer.learning_rate, "assign"):
        optimizer.learning_rate = float(value)
    else:
        optimizer.learning_rate = constant_rate(value)


def constant_rate(value: float):
    """A LearningRateSchedule that is always `value`."""
    import keras

    class ConstantRate(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return keras.ops.convert_to_tensor(value, "float32")

        def get_config(self) -> dict:
            return {"value": value}

    return ConstantRate()
