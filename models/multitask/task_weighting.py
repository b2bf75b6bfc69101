"""How the losses of several task heads add up to the one loss a multitask step minimises.

Two modes, chosen in `train.multitask.weighting`:

- `static`: total = Σ w_i · L_i with fixed weights from config (1 for a task not named).
- `uncertainty`: each task learns its log-variance s_i = log σ_i² with the model (Kendall, Gal and
  Cipolla, 2018). A classification term is exp(-s_i)·L_i + ½·s_i, a regression term
  ½·exp(-s_i)·L_i + ½·s_i. A task whose loss is large (noisy) is down-weighted by its own σ_i², and
  the ½·s_i term stops σ_i from growing without bound. Learning s_i rather than σ_i keeps the
  weights positive and the optimisation stable. ∂total/∂s_i is ½ - exp(-s_i)·L_i (classification)
  and ½ - ½·exp(-s_i)·L_i (regression): s_i settles where exp(s_i) = 2·L_i or L_i.

Which form a head takes is its `kind`: classification, segmentation and detection heads are
softmax/sigmoid likelihoods (the classification form); a regression head is Gaussian.

The s_i are variables of this layer; the multitask model holds the layer, so they are trained by
the same optimizer step, checkpointed and saved in the `.keras` file with the model.

`active` (optional, one 0/1 per task, in `tasks` order) switches terms off for schedules that train
one task at a time; a switched-off task adds nothing, not even its ½·s_i, so its s_i is left alone.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import keras
from keras import ops

MODES = ("static", "uncertainty")
KINDS = ("classification", "regression")
_HEAD_KINDS = {"classification": "classification", "segmentation": "classification",
               "detection": "classification", "regression": "regression"}


def kind_of_head(head: str) -> str:
    """The likelihood form of a multitask head: regression heads are Gaussian, the others categorical."""
    try:
        return _HEAD_KINDS[head]
    except KeyError:
        raise ValueError(f"Unknown head {head!r}. Expected one of: {', '.join(_HEAD_KINDS)}") from None


@keras.saving.register_keras_serializable(package="convpipe")
class TaskWeighting(keras.layers.Layer):
    """Adds per-task losses into one total, with static weights or learned log-variances s_i.

    Args:
        tasks: task name -> kind ("classification" or "regression"), in a fixed order.
        mode: "static" or "uncertainty".
        weights: static mode: task name -> weight (tasks not named weigh 1).
        initial_log_variance: uncertainty mode: s_i at the start, one float for every task or a
            mapping task name -> float (tasks not named start at 0, i.e. σ² = 1).
    """

    def __init__(self, tasks: Mapping[str, str], mode: str = "static", weights: Optional[Mapping[str, float]] = None,
                 initial_log_variance=0.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(tasks, Mapping) or not tasks:
            raise ValueError(f"Invalid value for argument `tasks`. Expected a non-empty mapping task name -> kind. "
                             f"Received tasks={tasks!r}")
        bad = {name: kind for name, kind in tasks.items() if kind not in KINDS}
        if bad:
            raise ValueError(f"Invalid value for argument `tasks`. Expected each kind to be one of {KINDS}. "
                             f"Received {bad!r}")
        if mode not in MODES:
            raise ValueError(f"Invalid value for argument `mode`. Expected one of {MODES}. Received mode={mode!r}")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(tasks))
        if unknown:
            raise ValueError(f"Invalid value for argument `weights`: no task named {unknown}. "
                             f"Expected names among {list(tasks)}. Received weights={weights!r}")
        if any(not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0 or not math.isfinite(w)
               for w in weights.values()):
            raise ValueError(f"Invalid value for argument `weights`. Expected finite non-negative numbers. "
                             f"Received weights={weights!r}")
        if isinstance(initial_log_variance, Mapping):
            unknown = sorted(set(initial_log_variance) - set(tasks))
            if unknown:
                raise ValueError(f"Invalid value for argument `initial_log_variance`: no task named {unknown}. "
                                 f"Expected names among {list(tasks)}.")
            initial = {name: float(initial_log_variance.get(name, 0.0)) for name in tasks}
        else:
            initial = {name: float(initial_log_variance) for name in tasks}
        self.tasks = dict(tasks)
        self.mode = mode
        self.static_weights = {name: float(weights.get(name, 1.0)) for name in tasks}
        self.initial_log_variance = initial
        # The s_i do not depend on any input shape, so they exist from construction on (and a model
        # loading this layer finds them before it loads their values).
        self.build()

    def build(self, input_shape=None):
        if self.built:
            return
        if self.mode == "uncertainty":
            for name in self.tasks:
                self.add_weight(shape=(), name=f"log_variance_{name}", trainable=True,
                                initializer=keras.initializers.Constant(self.initial_log_variance[name]))
        self.built = True

    @property
    def log_variance(self) -> dict:
        """Task name -> its s_i variable (uncertainty mode; empty in static mode)."""
        return dict(zip(self.tasks, self.weights)) if self.mode == "uncertainty" else {}

    def call(self, losses, active=None):
        """losses: task name -> scalar loss L_i (every task of `tasks`); active: optional 0/1 per task."""
        terms = self.terms(losses, active)
        return ops.sum(ops.stack([terms[name] for name in self.tasks]))

    def terms(self, losses: Mapping, active=None) -> dict:
        """Each task's contribution to the total (its weighted loss plus, when learned, ½·s_i)."""
        missing = [name for name in self.tasks if name not in losses]
        if missing:
            raise ValueError(f"TaskWeighting expects a loss for every task {list(self.tasks)}; "
                             f"missing {missing}, received {sorted(losses)}")
        terms = {}
        for index, (name, kind) in enumerate(self.tasks.items()):
            loss = ops.cast(losses[name], "float32")
            if self.mode == "static":
                term = self.static_weights[name] * loss
            else:
                s = ops.cast(self.log_variance[name], "float32")
                scale = 1.0 if kind == "classification" else 0.5
                term = scale * ops.exp(-s) * loss + 0.5 * s
            if active is not None:
                term = term * ops.cast(active[index], "float32")
            terms[name] = term
        return terms

    def task_weights(self) -> dict[str, float]:
        """The multiplier on each L_i now: w_i (static), exp(-s_i) or ½·exp(-s_i) (uncertainty); for logs."""
        if self.mode == "static":
            return dict(self.static_weights)
        return {name: (1.0 if kind == "classification" else 0.5) * math.exp(-float(self.log_variance[name].numpy()))
                for name, kind in self.tasks.items()}

    def log_variances(self) -> dict[str, float]:
        """s_i per task now (uncertainty mode); empty in static mode."""
        if self.mode == "static":
            return {}
        return {name: float(variable.numpy()) for name, variable in self.log_variance.items()}

    def compute_output_shape(self, input_shape):
        return ()

    def get_config(self):
        return {**super().get_config(), "tasks": dict(self.tasks), "mode": self.mode,
                "weights": dict(self.static_weights), "initial_log_variance": dict(self.initial_log_variance)}
