"""Stop a run whose training loss has left the range it started in, before it wastes its epochs.

A NaN or infinite loss is the loud case. The quiet one is as common: with a learning rate far too
high (`train.optimizer.learning_rate=1e6`), a ReLU network with batch norm and the clipped
cross-entropy does not overflow; its ReLUs die, the clipped softmax passes no gradient, and the
loss sits at ten times its starting value for every remaining epoch while the run reports
success. So besides the non-finite check the guard compares the mean loss of the last `window`
steps with the first step's loss (the network as built, or as restored): more than `factor`
times that is divergence. Normal training stays well below it; on the default config the largest
10-step mean was 1.06x the first step's loss, the diverged run's 9x.

Step losses are compared only within one phase: a multitask schedule that trains one head at a
time gives each head its own reference (`TrainingHooks.loss_phase`). The references live in the
training Progress, so they survive a resume; a reference of zero or below (an uncertainty-weighted
total can be negative) switches the ratio test off for that phase.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Optional


class NonFiniteLoss(ArithmeticError):
    def __init__(self, epoch: int, step: int, global_step: int, value: float):
        self.epoch, self.step, self.global_step, self.value = epoch, step, global_step, value
        super().__init__(f"loss became {value} at epoch {epoch}, step {step} (global step {global_step})")


class LossDiverged(ArithmeticError):
    def __init__(self, epoch: int, step: int, global_step: int, mean: float, reference: float, factor: float,
                 window: int):
        self.epoch, self.step, self.global_step = epoch, step, global_step
        self.mean, self.reference, self.factor, self.window = mean, reference, factor, window
        super().__init__(f"loss diverged at epoch {epoch}, step {step} (global step {global_step}): its mean over "
                         f"the last {window} steps, {mean:.4g}, is more than {factor:g}x the first step's {reference:.4g}")


class DivergenceGuard:
    """Checks every step's loss; raises NonFiniteLoss or LossDiverged."""

    def __init__(self, factor: Optional[float], window: int, references: dict):
        """`factor` None: only the non-finite check. `references`: phase -> first loss, a dict the
        caller persists (Progress.loss_references); the guard fills it."""
        self.factor, self.window, self.references = factor, window, references
        self._recent: dict[str, deque] = {}

    def check(self, loss: float, epoch: int, step: int, global_step: int, phase: str = "") -> None:
        if not math.isfinite(loss):
            raise NonFiniteLoss(epoch, step, global_step, loss)
        if self.factor is None:
            return
        reference = self.references.setdefault(phase, loss)
        recent = self._recent.setdefault(phase, deque(maxlen=self.window))
        recent.append(loss)
        if reference > 0 and len(recent) == self.window:
            mean = sum(recent) / self.window
            if mean > self.factor * reference:
                raise LossDiverged(epoch, step, global_step, mean, reference, self.factor, self.window)
