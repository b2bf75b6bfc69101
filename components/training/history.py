"""Where a training run stands: epochs done, per-epoch metrics, the best epoch, early stopping.

The whole record is one JSON string held in a `tf.Variable`, so it is saved inside every backup
together with the weights it describes: a resumed run never pairs weights of epoch 5 with the
history of epoch 4. `history.json` in the Model artifact is `Progress.history` in the Keras
layout (metric name -> list over epochs) plus the epoch numbers and the best epoch.
"""
from __future__ import annotations

import json
import math
from typing import Optional


def lower_is_better(metric: str) -> bool:
    return metric.endswith("loss") or metric.endswith("error")


class Progress:
    """Training state that must survive a kill: counters, history, best epoch, early stopping."""

    def __init__(self):
        import tensorflow as tf

        self.variable = tf.Variable("{}", dtype=tf.string, trainable=False, name="convpipe_progress")
        self.reset()

    def reset(self) -> None:
        self.epochs_done = 0
        """Epochs finished (the next epoch to run is epochs_done + 1, 1-based in logs)."""
        self.steps_in_epoch = 0
        """Steps finished in the epoch under way (non-zero only in a mid-epoch backup)."""
        self.global_step = 0
        self.partial: dict[str, float] = {}
        """Running sums of the epoch under way, so a mid-epoch resume reports whole-epoch metrics."""
        self.rows: list[dict] = []
        self.best_epoch: Optional[int] = None
        self.best_value: Optional[float] = None
        self.best_weights: Optional[str] = None
        self.best_loss: Optional[float] = None
        """The loss at the best epoch: breaks ties of a saturated metric (accuracy 1.0 twice)."""
        self.wait = 0
        self.stopped_early = False
        self.resumes: list[dict] = []
        self.seconds = 0.0
        """Seconds spent in training steps, summed over epochs and resumes (history.json's `seconds`)."""
        self.wall_seconds = 0.0
        """Wall-clock seconds of the finished epochs (steps, evaluation, backups), over resumes."""
        self.loss_references: dict[str, float] = {}
        """The first step's loss per loss phase (divergence.DivergenceGuard)."""

    # -- checkpoint round trip --------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({
            "epochs_done": self.epochs_done, "steps_in_epoch": self.steps_in_epoch,
            "global_step": self.global_step, "partial": self.partial, "rows": self.rows,
            "best_epoch": self.best_epoch, "best_value": self.best_value, "best_weights": self.best_weights,
            "best_loss": self.best_loss,
            "wait": self.wait, "stopped_early": self.stopped_early, "resumes": self.resumes,
            "seconds": self.seconds, "wall_seconds": self.wall_seconds, "loss_references": self.loss_references,
        })

    def sync(self) -> None:
        """Copy the Python state into the variable (call before every backup)."""
        self.variable.assign(self.to_json())

    def load(self) -> None:
        """Copy the variable into the Python state (call after a restore)."""
        data = json.loads(self.variable.numpy().decode() or "{}")
        self.reset()
        for key, value in data.items():
            setattr(self, key, value)

    # -- epochs -----------------------------------------------------------------------------------
    def end_epoch(self, row: dict) -> None:
        self.rows.append(row)
        self.epochs_done = row["epoch"]
        self.steps_in_epoch = 0
        self.partial = {}

    def epoch_line(self, row: dict, epochs: int, epoch_seconds: float) -> str:
        """The log line of a finished epoch: its metrics, then the epoch's own wall-clock seconds
        and the elapsed total of the training so far (resumes included), named as such. (The row's
        `seconds`, the running sum of step time, stays in history.json for comparisons.)"""
        self.wall_seconds += epoch_seconds
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch", "steps", "seconds"))
        return (f"epoch {row['epoch']}/{epochs}: {metrics}, epoch_seconds={epoch_seconds:.1f}, "
                f"elapsed_seconds={self.wall_seconds:.1f}")

    def improved(self, monitor: str, value: float, loss: Optional[float] = None) -> bool:
        """Whether `value` of `monitor` beats the best so far; on a tie, whether `loss` is lower."""
        if value is None or not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        if value == self.best_value:
            return loss is not None and self.best_loss is not None and loss < self.best_loss
        return value < self.best_value if lower_is_better(monitor) else value > self.best_value

    @property
    def history(self) -> dict:
        """Keras layout: metric -> list over epochs, plus `epoch`."""
        keys = []
        for row in self.rows:
            keys.extend(k for k in row if k not in keys)
        return {key: [row.get(key) for row in self.rows] for key in keys}

    def summary(self, monitor: str) -> dict:
        return {
            "history": self.history,
            "monitor": monitor,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "epochs_run": self.epochs_done,
            "stopped_early": self.stopped_early,
            "resumes": self.resumes,
            "steps": self.global_step,
            "seconds": round(self.seconds, 3),
        }
