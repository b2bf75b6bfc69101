"""The mechanics of training several heads: which tasks a step trains, which targets a batch has,
and how much a task was forgotten. Pure functions the trainer calls; no Keras state here.

Schedules (`train.multitask.schedule`):
- `joint`: every head in every step.
- `alternating`: one task per step, in the configured ratio (`train.multitask.ratio`, task ->
  steps per cycle, 1 for a task not named). Tasks are interleaved by smooth weighted round robin
  (as nginx balances servers), so 2:1 gives a, b, a, a, b, a, ... rather than a, a, b: no task
  waits longer than it must. `task_for_step` is a pure function of the global step, so a resumed
  run continues the same sequence.
- `consecutive`: task after task, each for its own number of epochs (`epochs_per_task`), in the
  order of `heads`. After each phase every task trained so far is evaluated again; `forgetting`
  turns those evaluations into the forgetting of each task: its metric at the end of its own
  phase minus its metric at the end of training (positive = forgotten).

A schedule speaks through `active`: one 0/1 per task, in head order, which the loss multiplies
into each task's term (models/multitask/task_weighting.py), so an inactive task adds no loss and no gradient.

Missing targets: tasks whose data differ (a classification set and a detection set) can share
batches. Each batch carries, per head, a 0/1 per example saying whether that target is there
(`targets["present"][head]`, or inferred by `target_presence`); a head's loss is the mean over
present examples only (`masked_mean`), and exactly 0, with zero gradient, when none is present.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
from keras import ops

SCHEDULES = ("joint", "alternating", "consecutive")
PRESENT_KEY = "present"
"""targets[PRESENT_KEY][head]: [B] 0/1, which examples of the batch carry that head's target."""
TARGET_KEYS = {"classification": ("class",), "segmentation": ("mask",), "detection": ("boxes", "labels"),
               "regression": ("regression",)}
"""Where each head finds its target in the targets dict (components/examples.parse_example keys);
a regression target missing as such is derived from the detection targets (see regression_targets)."""


# ------------------------------------------------------------------------------------------------
# configuration -> builder
# ------------------------------------------------------------------------------------------------
def builder_params(model_params: Mapping, heads: Sequence[str] = (), weighting: str = "static",
                   weights: Optional[Mapping[str, float]] = None) -> dict:
    """Keyword arguments for build_model("multitask") from model.params and train.multitask.

    train.multitask.heads, when non-empty, replaces model.params.heads (a sweep's single-task
    baselines name one head); weighting and weights become the builder's `weighting` and
    `task_weights`, keeping only the weights of heads the model has (so the trials of one sweep
    share a `weights` dict).
    """
    params = dict(model_params)
    if heads:
        params["heads"] = list(heads)
    chosen = params.get("heads", ["classification"])
    chosen = [chosen] if isinstance(chosen, str) else list(chosen)
    kept = {name: w for name, w in (weights or {}).items() if name in chosen or name not in TARGET_KEYS}
    params["weighting"] = weighting
    params["task_weights"] = kept
    return params


# ------------------------------------------------------------------------------------------------
# missing targets
# ------------------------------------------------------------------------------------------------
def masked_mean(values, present):
    """Mean of per-example `values` [B] over examples with `present` [B] (0/1 or weights).

    0 (not NaN) when nothing is present; values of absent examples are replaced by 0 before they
    are weighted, so even a NaN there cannot leak into the mean.
    """
    values = ops.cast(values, "float32")
    present = ops.cast(present, "float32")
    kept = ops.where(present > 0, values, ops.zeros_like(values))
    return ops.divide_no_nan(ops.sum(kept * present), ops.sum(present))


def _batch_size(targets: Mapping):
    for value in targets.values():
        if not isinstance(value, Mapping):
            return ops.shape(value)[0]
    raise ValueError(f"targets: expected at least one target tensor to read the batch size from, got keys {sorted(targets)}")


def target_presence(targets: Mapping, heads: Sequence[str], ignore_value: Optional[int] = 255) -> dict:
    """Head -> [B] float 0/1: which examples of the batch carry that head's target.

    An explicit `targets["present"][head]` wins. Otherwise: a head whose target key is absent has
    none; classification is present where the one-hot row is not all zeros (label -1 decodes to
    zeros); segmentation where some pixel is not `ignore_value`; detection always (an image
    without boxes is a valid negative); regression wherever its target or the detection targets
    it is derived from are present.
    """
    explicit = targets.get(PRESENT_KEY, {})
    size = _batch_size(targets)
    presence = {}
    for head in heads:
        if head not in TARGET_KEYS:
            raise ValueError(f"target_presence: unknown head {head!r}; expected one of {list(TARGET_KEYS)}")
        if head in explicit:
            presence[head] = ops.cast(ops.reshape(explicit[head], (-1,)), "float32")
            continue
        keys = TARGET_KEYS[head]
        if head == "regression" and "regression" not in targets:
            keys = ("labels",)  # the count needs the labels only (mean_box_area the boxes too)
            if "detection" in explicit:
                presence[head] = ops.cast(ops.reshape(explicit["detection"], (-1,)), "float32")
                continue
        if not all(key in targets for key in keys):
            presence[head] = ops.zeros((size,), "float32")
        elif head == "classification":
            presence[head] = ops.cast(ops.sum(ops.abs(ops.cast(targets["class"], "float32")), axis=-1) > 0, "float32")
        elif head == "segmentation" and ignore_value is not None:
            mask = ops.reshape(ops.cast(targets["mask"], "int32"), (size, -1))
            presence[head] = ops.cast(ops.any(mask != ignore_value, axis=-1), "float32")
        else:
            presence[head] = ops.ones((size,), "float32")
    return presence


def regression_targets(targets: Mapping, kind: str = "count"):
    """[B, 1] float regression target: `targets["regression"]` if given, else derived from the boxes.

    count: the number of objects (labels >= 0); mean_box_area: the mean area of the valid boxes
    (rel_xyxy, so a fraction of the image; 0 for an image without boxes).
    """
    if "regression" in targets:
        value = ops.cast(targets["regression"], "float32")
        return ops.reshape(value, (ops.shape(value)[0], -1))
    if "labels" not in targets:
        raise ValueError(f"regression_targets: expected 'regression' or detection 'labels'/'boxes' in the targets, "
                         f"got keys {sorted(targets)}")
    valid = ops.cast(ops.cast(targets["labels"], "int32") >= 0, "float32")
    count = ops.sum(valid, axis=-1, keepdims=True)
    if kind == "count":
        return count
    if kind == "mean_box_area":
        boxes = ops.cast(targets["boxes"], "float32")
        areas = ops.maximum(boxes[..., 2] - boxes[..., 0], 0.0) * ops.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
        return ops.divide_no_nan(ops.sum(areas * valid, axis=-1, keepdims=True), count)
    raise ValueError(f"regression_targets: unknown kind {kind!r}; expected 'count' or 'mean_box_area'")


# ------------------------------------------------------------------------------------------------
# schedules
# ------------------------------------------------------------------------------------------------
def _check_tasks(tasks: Sequence[str], per_task: Optional[Mapping[str, int]], argument: str) -> dict[str, int]:
    if not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"expected a non-empty list of distinct tasks, got {list(tasks)}")
    per_task = dict(per_task or {})
    unknown = sorted(set(per_task) - set(tasks))
    if unknown:
        raise ValueError(f"train.multitask.{argument}: no head named {unknown}; expected names among {list(tasks)}")
    bad = {k: v for k, v in per_task.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
    if bad:
        raise ValueError(f"train.multitask.{argument}: expected positive integers, got {bad}")
    return {task: per_task.get(task, 1) for task in tasks}


def alternating_cycle(tasks: Sequence[str], ratio: Optional[Mapping[str, int]] = None) -> list[str]:
    """One cycle of the alternating schedule: each task `ratio[task]` times (default 1), interleaved
    by smooth weighted round robin (ties go to the earlier task)."""
    weights = _check_tasks(tasks, ratio, "ratio")
    total = sum(weights.values())
    current = {task: 0 for task in tasks}
    cycle = []
    for _ in range(total):
        for task in tasks:
            current[task] += weights[task]
        chosen = max(tasks, key=lambda t: current[t])  # first of the largest, in task order
        current[chosen] -= total
        cycle.append(chosen)
    return cycle


def task_for_step(step: int, tasks: Sequence[str], ratio: Optional[Mapping[str, int]] = None) -> str:
    """The task the alternating schedule trains at global step `step` (0-based)."""
    cycle = alternating_cycle(tasks, ratio)
    return cycle[int(step) % len(cycle)]


@dataclass(frozen=True)
class Phase:
    """One phase of the consecutive schedule: `task` alone for epochs first..last (1-based, inclusive)."""
    task: str
    first_epoch: int
    last_epoch: int


def consecutive_phases(tasks: Sequence[str], epochs_per_task: Optional[Mapping[str, int]] = None,
                       default_epochs: int = 1) -> list[Phase]:
    """Phases in task order; a task not in `epochs_per_task` trains for `default_epochs`."""
    if isinstance(default_epochs, bool) or not isinstance(default_epochs, int) or default_epochs < 1:
        raise ValueError(f"consecutive_phases: expected default_epochs >= 1, got {default_epochs!r}")
    _check_tasks(tasks, epochs_per_task, "epochs_per_task")
    epochs = {task: (epochs_per_task or {}).get(task, default_epochs) for task in tasks}
    phases, first = [], 1
    for task in tasks:
        phases.append(Phase(task, first, first + epochs[task] - 1))
        first += epochs[task]
    return phases


def phase_for_epoch(epoch: int, phases: Sequence[Phase]) -> Phase:
    for phase in phases:
        if phase.first_epoch <= epoch <= phase.last_epoch:
            return phase
    raise ValueError(f"epoch {epoch} is outside the consecutive schedule (epochs 1..{phases[-1].last_epoch})")


@dataclass(frozen=True)
class MultitaskSchedule:
    """A configured schedule: which tasks train in a given epoch (1-based) and global step (0-based)."""
    name: str
    tasks: tuple[str, ...]
    cycle: tuple[str, ...] = ()
    phases: tuple[Phase, ...] = ()

    def task(self, epoch: int, step: int) -> Optional[str]:
        """The one task trained now, or None when all are (joint)."""
        if self.name == "alternating":
            return self.cycle[int(step) % len(self.cycle)]
        if self.name == "consecutive":
            return phase_for_epoch(epoch, self.phases).task
        return None

    def active(self, epoch: int, step: int) -> np.ndarray:
        """float32 [num_tasks] 0/1 in task order, for the loss's `active` argument."""
        task = self.task(epoch, step)
        return np.array([1.0 if task is None or t == task else 0.0 for t in self.tasks], np.float32)

    def epochs(self, default: int) -> int:
        """Total epochs: the sum of the phases for consecutive, else `default` (train.epochs)."""
        return self.phases[-1].last_epoch if self.phases else default

    def phase_ends(self) -> dict[str, int]:
        """Consecutive: task -> the epoch that ends its phase (when to evaluate every task so far)."""
        return {phase.task: phase.last_epoch for phase in self.phases}


def make_schedule(name: str, tasks: Sequence[str], ratio: Optional[Mapping[str, int]] = None,
                  epochs_per_task: Optional[Mapping[str, int]] = None, default_epochs: int = 1) -> MultitaskSchedule:
    """The schedule `name` over `tasks` (heads, in order) from train.multitask's ratio/epochs_per_task."""
    if name not in SCHEDULES:
        raise ValueError(f"train.multitask.schedule: expected one of {list(SCHEDULES)}, got {name!r}")
    tasks = tuple(tasks)
    _check_tasks(tasks, None, "heads")
    if name == "alternating":
        return MultitaskSchedule(name, tasks, cycle=tuple(alternating_cycle(tasks, ratio)))
    if name == "consecutive":
        return MultitaskSchedule(name, tasks, phases=tuple(consecutive_phases(tasks, epochs_per_task, default_epochs)))
    return MultitaskSchedule(name, tasks)


# ------------------------------------------------------------------------------------------------
# forgetting
# ------------------------------------------------------------------------------------------------
def forgetting(at_phase_end: Mapping[str, float], final: Mapping[str, float],
               higher_is_better: bool = True) -> dict[str, float]:
    """Task -> metric at the end of its own phase minus metric at the end of training.

    Positive means the task got worse after its phase. For a metric where lower is better (a
    loss), the difference is taken the other way round, so positive still means forgotten.
    """
    missing = sorted(set(at_phase_end) - set(final))
    if missing:
        raise ValueError(f"forgetting: no final metric for {missing}; final has {sorted(final)}")
    sign = 1.0 if higher_is_better else -1.0
    return {task: sign * (float(at_phase_end[task]) - float(final[task])) for task in at_phase_end}


def forgetting_table(phases: Sequence[str], evaluations: Sequence[Mapping[str, float]],
                     higher_is_better: bool = True) -> list[dict]:
    """Rows {task, at_phase_end, final, forgetting} from the evaluations after each phase.

    `evaluations[i]` holds the metric of every task trained up to phase i, measured at the end of
    phase i (task `phases[i]`); the last one is the end of training.
    """
    if len(phases) != len(evaluations) or not phases:
        raise ValueError(f"forgetting_table: expected one evaluation per phase ({len(phases)} phases), "
                         f"got {len(evaluations)}")
    for i, evaluation in enumerate(evaluations):
        missing = [task for task in phases[:i + 1] if task not in evaluation]
        if missing:
            raise ValueError(f"forgetting_table: the evaluation after phase {i + 1} ({phases[i]}) lacks {missing}")
    at_end = {task: evaluations[i][task] for i, task in enumerate(phases)}
    final = {task: evaluations[-1][task] for task in phases}
    amounts = forgetting(at_end, final, higher_is_better)
    return [{"task": task, "at_phase_end": float(at_end[task]), "final": float(final[task]),
             "forgetting": amounts[task]} for task in phases]
