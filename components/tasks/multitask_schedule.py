"""How a multitask trial moves between its heads: `train.multitask` read into heads, a schedule
(joint, alternating, consecutive) and phases, and the TrainingHooks that set the loss's `active`
mask before every step and evaluate every head at phase ends.

Split from the adapter (multitask.py) because the training loop calls into it on every step,
while the adapter's evaluation and export never do.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from components.tasks import multitask_scores as scores
from components.tasks.base import TrainingHooks

EPOCH_EVALUATIONS = 10
"""Roughly how many times a trial evaluates every head on the eval split (see evaluation_epochs)."""


# ------------------------------------------------------------------------------------------------
# train.multitask -> heads, schedule, phases
# ------------------------------------------------------------------------------------------------
def heads_of(model_section, train_section) -> list[str]:
    """The heads a trial builds: train.multitask.heads, else model.params.heads."""
    from models.multitask.training import builder_params

    multitask = train_section.multitask
    heads = builder_params(model_section.params, multitask.heads).get("heads", ["classification"])  # the builder's default
    return [heads] if isinstance(heads, str) else list(heads)


def _only(mapping: dict, heads: Sequence[str]) -> dict:
    """A sweep's trials share ratio / epochs_per_task; each keeps the entries of its own heads."""
    return {key: value for key, value in mapping.items() if key in heads}


def schedule_of(train_section, heads: Sequence[str]):
    """The MultitaskSchedule of train.multitask over `heads` (a task missing from epochs_per_task
    trains for train.epochs // number of heads in a consecutive schedule)."""
    from models.multitask.training import make_schedule

    multitask = train_section.multitask
    return make_schedule(multitask.schedule, heads, _only(multitask.ratio, heads),
                         _only(multitask.epochs_per_task, heads), max(1, train_section.epochs // len(heads)))


def evaluation_epochs(train_section, heads: Sequence[str], evaluations: int = EPOCH_EVALUATIONS) -> set:
    """Epochs after which every head is evaluated on the eval split: about `evaluations` of them
    evenly spread, every consecutive phase end (and its would-be ends in other schedules, for
    forgetting) and the last epoch. Detection AP costs seconds per evaluation on a CPU, so not
    every epoch."""
    total = schedule_of(train_section, heads).epochs(train_section.epochs)
    every = max(1, round(total / evaluations))
    chosen = {epoch for epoch in range(1, total + 1) if epoch % every == 0}
    return chosen | {min(end, total) for end in phase_ends(train_section, heads).values()} | {total}


def phase_ends(train_section, heads: Sequence[str]) -> dict:
    """Task -> the epoch that ends its consecutive phase; for the other schedules the epochs where
    those phases would end, so their forgetting is measured at the same points."""
    from models.multitask.training import consecutive_phases

    multitask = train_section.multitask
    phases = consecutive_phases(heads, _only(multitask.epochs_per_task, heads), max(1, train_section.epochs // len(heads)))
    return {phase.task: phase.last_epoch for phase in phases}


# ------------------------------------------------------------------------------------------------
# the loss the loop calls, and the hooks that drive the schedule
# ------------------------------------------------------------------------------------------------
class ScheduledLoss:
    """The trial's MultitaskLoss. Training reads the schedule's `active` mask (set by the hooks);
    `for_evaluation()` is the twin with every head active, so val_loss means the same in every
    schedule and at every step."""

    def __init__(self, loss, every_head: bool = False):
        self.loss = loss
        self.every_head = every_head

    def total_and_head_losses(self, targets, outputs):
        active = np.ones(len(self.loss.heads), np.float32) if self.every_head else None
        return self.loss.total_and_head_losses(targets, outputs, active=active)

    def for_evaluation(self) -> "ScheduledLoss":
        return ScheduledLoss(self.loss, every_head=True)

    @property
    def variables(self) -> list:
        """State of the heads' own losses (automated focal's running mean), saved in backups."""
        found = []
        for loss in (self.loss.classification_loss, self.loss.segmentation_loss):
            found.extend(getattr(loss, "variables", None) or [])
        return found


class MultitaskHooks(TrainingHooks):
    """Sets the schedule's active heads before each step; after each epoch, the task weights for
    the epoch's row, and after each of `evaluate_at` every head's metrics on the eval split."""

    def __init__(self, model, loss: ScheduledLoss, schedule, eval_data=None, evaluate_at=()):
        self.model, self.loss, self.schedule, self.eval_data = model, loss, schedule, eval_data
        self.evaluate_at = set(evaluate_at)
        self.active = None
        self.phase = ""
        self.eval_split = None
        config = model.head_config
        self.class_names = [str(k) for k in range(config.get("classification", config.get("detection", {})).get(
            "num_classes", 1))]

    def before_step(self, epoch: int, global_step: int) -> None:
        active = self.schedule.active(epoch, global_step)
        if self.active is None or not np.array_equal(active, self.active):
            self.loss.loss.set_active(active)
            self.active = active
            self.phase = "+".join(head for head, on in zip(self.model.heads, active) if on)

    def loss_phase(self) -> str:
        """The heads trained in this step: a head's loss is only compared with its own."""
        return self.phase

    def end_of_epoch(self, epoch: int) -> dict:
        weighting = self.model.task_weighting
        row = {f"task_weight_{head}": value for head, value in weighting.task_weights().items()}
        row.update({f"log_variance_{head}": value for head, value in weighting.log_variances().items()})
        if self.eval_data is not None and epoch in self.evaluate_at:
            if self.eval_split is None:
                self.eval_split = scores.targets_from_batches(self.eval_data(), self.model.head_config["image_shape"])
            images, targets = self.eval_split
            outputs = scores.predict(self.model, images, self.class_names)
            metrics, _ = scores.score_heads(outputs, targets, self.class_names, self.model.head_config["image_shape"],
                                            regression_target=self._regression_target())
            row.update({f"val_{name}": metrics[name] for name in scores.EPOCH_METRICS
                        if not math.isnan(metrics.get(name, math.nan))})
        return row

    def _regression_target(self) -> str:
        return self.model.head_config.get("regression", {}).get("target", "count")
