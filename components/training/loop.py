"""The one training loop: `strategy.run` over distributed datasets, for every strategy.

Keras `fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585) while a custom loop
with `strategy.run` works, so default, one-device, mirrored and multi-worker training all go
through `fit` below. Per step each replica computes the mean loss of its share of the global
batch, weighted by its share of the examples (so an uneven last batch, or a replica with no
examples, still averages correctly); the optimizer sums gradients over replicas.

The loop checks the loss after every step (a NaN, or a loss far above where it started, names
its epoch and step and leaves the backups alone: divergence.py), backs up at the end of every epoch
and every `save_freq_steps` steps (epoch_end.py: beside the next epoch on one device), keeps the
weights of the best epoch by the monitored eval metric, and stops early when asked.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

from components.training.backups import BestWeights
from components.training.divergence import DivergenceGuard, LossDiverged, NonFiniteLoss  # noqa: F401 (re-exported)
from components.training.history import Progress, lower_is_better
from components.training.epoch_end import EndOfEpoch


def _first(structure):
    import tensorflow as tf
    return tf.nest.flatten(structure)[0]


class StepFunctions:
    """The compiled train and eval steps for one model, optimizer and loss under one strategy."""

    def __init__(self, strategy, model, optimizer, loss_fn, jit_compile: bool = False, task=None):
        """`task`: the TaskAdapter (components/tasks/) that computes each replica's loss and metric
        sums; classification when None."""
        import tensorflow as tf

        if task is None:
            from components.tasks import get_task
            task = get_task("classification")
        self.strategy, self.model, self.optimizer, self.loss_fn, self.task = strategy, model, optimizer, loss_fn, task
        metric_sums = task.metric_sums
        sum_op = tf.distribute.ReduceOp.SUM

        # A stateful loss (automated focal) offers a twin that reads its state without moving it.
        eval_loss_fn = loss_fn.for_evaluation() if hasattr(loss_fn, "for_evaluation") else loss_fn

        def losses_on(x, y, training):
            # The adapter returns this replica's plain mean loss (a Keras loss's division by the
            # number of replicas undone); the caller weights it by this replica's share of the batch.
            count = tf.cast(tf.shape(_first(y))[0], tf.float32)
            logits, mean_loss = task.replica_loss(model, loss_fn if training else eval_loss_fn, x, y, training,
                                                  strategy.num_replicas_in_sync)
            return logits, mean_loss, count

        def replica_gradients(x, y, global_count):
            with tf.GradientTape() as tape:
                logits, mean_loss, count = losses_on(x, y, True)
                weighted = mean_loss * count / tf.maximum(global_count, 1.0)
                if model.losses:
                    weighted += tf.add_n(model.losses) / strategy.num_replicas_in_sync
                scaled = optimizer.scale_loss(weighted)
            gradients = tape.gradient(scaled, model.trainable_variables)
            return gradients, {"loss": mean_loss * count, "count": count, **metric_sums(y, logits)}

        def replica_eval(x, y):
            logits, mean_loss, count = losses_on(x, y, False)
            return {"loss": mean_loss * count, "count": count, **metric_sums(y, logits)}

        if jit_compile:
            # XLA compiles the forward and backward pass; the optimizer update stays outside, since
            # under a multi-device strategy it crosses devices (merge_call), which XLA cannot compile.
            replica_gradients = tf.function(replica_gradients, jit_compile=True, reduce_retracing=True)
            replica_eval = tf.function(replica_eval, jit_compile=True, reduce_retracing=True)

        def replica_train(x, y):
            count = tf.cast(tf.shape(_first(y))[0], tf.float32)
            global_count = tf.distribute.get_replica_context().all_reduce(sum_op, count)
            gradients, sums = replica_gradients(x, y, global_count)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return sums

        def reduced(fn):
            @tf.function(reduce_retracing=True)
            def step(batch):
                x, y = batch[0], batch[1]
                sums = strategy.run(fn, args=(x, y))
                return {k: strategy.reduce(sum_op, v, axis=None) for k, v in sums.items()}
            return step

        @tf.function
        def train_step_on(iterator):
            batch = next(iterator)
            sums = strategy.run(replica_train, args=(batch[0], batch[1]))
            return {k: strategy.reduce(sum_op, v, axis=None) for k, v in sums.items()}

        self.train_step = reduced(replica_train)
        self.train_step_on = train_step_on
        self.eval_step = reduced(replica_eval)

    def distribute(self, dataset):
        """Distribute a global-batch dataset; sharded by data, since files may be fewer than workers.
        Without a strategy (one device, the default) the dataset itself: the same batches, and its
        iterator's `next` costs a fraction of the distributed iterator's (benchmarks/input_headroom)."""
        import tensorflow as tf

        if not tf.distribute.has_strategy() and self.strategy is tf.distribute.get_strategy():
            return dataset
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return self.strategy.experimental_distribute_dataset(dataset.with_options(options))

    def train_steps(self, dataset):
        """One callable per batch of `dataset`: it runs the train step on that batch and returns its sums.

        On one device, when tf.data knows the dataset's length (the cached train split: train_input.py),
        the batch is taken from the iterator inside the compiled step, as Keras's `fit` does: handing
        each batch over through Python cost ~0.8 ms of a 16 ms step on 2 quiet cores (epochs 13%
        faster in-graph, alternated, benchmarks/trainer_overhead). Otherwise (a distributed or a
        streamed dataset) each batch comes through the Python iterator. The batches are the same
        either way; the two compiled steps may differ in the last bits of float rounding, and each
        repeats exactly from run to run.
        """
        distributed = self.distribute(dataset)
        length = known_length(distributed)
        if length is None:
            for batch in distributed:
                yield lambda batch=batch: self.train_step(batch)
            return
        iterator = iter(distributed)
        for _ in range(length):
            yield lambda: self.train_step_on(iterator)

    def evaluate(self, dataset) -> dict:
        totals: dict[str, float] = {}
        for batch in self.distribute(dataset):
            for key, value in self.eval_step(batch).items():
                totals[key] = totals.get(key, 0.0) + float(value)
        return averages(totals)

    def learning_rate(self) -> float:
        return float(self.optimizer.learning_rate.numpy() if hasattr(self.optimizer.learning_rate, "numpy")
                     else self.optimizer.learning_rate)


def known_length(dataset) -> Optional[int]:
    """The number of batches of a `tf.data.Dataset` when tf.data knows it; None for a distributed
    dataset or one of unknown length (a streamed reader)."""
    import tensorflow as tf

    if not isinstance(dataset, tf.data.Dataset):
        return None
    length = int(dataset.cardinality())
    return length if length >= 0 else None


def averages(totals: dict) -> dict:
    count = totals.get("count", 0.0)
    return {k: (v / count if count else float("nan")) for k, v in totals.items() if k != "count"}


@dataclass
class Plan:
    epochs: int
    monitor: str
    """Eval metric that picks the best epoch, e.g. "val_accuracy" (or "loss" without eval data)."""
    save_freq_steps: Optional[int] = None
    early_stopping_monitor: Optional[str] = None
    early_stopping_patience: int = 3
    divergence_factor: Optional[float] = 4.0
    """Fail when the mean loss of the last `divergence_window` steps exceeds this times the first
    step's (None: only a non-finite loss fails)."""
    divergence_window: int = 10


def fit(steps: StepFunctions, train_data: Callable[[int], object], eval_data: Optional[Callable[[], object]],
        plan: Plan, progress: Progress, end: EndOfEpoch, best: BestWeights, log: logging.Logger,
        preemption=None, hooks=None, step_bar=None) -> Progress:
    """Train from `progress` (fresh or restored) to `plan.epochs`; `train_data(epoch)` is a new
    global-batch dataset for that epoch, shuffled with a seed derived from the epoch. `end`
    (epoch_end.py) writes the step and epoch backups and the TensorBoard scalars and pictures, on
    this thread or beside the next epoch; it is not closed here. `preemption`
    (preemption.PreemptionBackups) hears of every step and may save a backup and raise Preempted.
    `hooks` (components/tasks/base.TrainingHooks) hears of every step before it runs and adds its
    entries to every epoch's row. `step_bar` (pipeline.progress.StepBar) hears of every step's
    images and loss, and is closed at the end of each epoch's steps."""
    guard = DivergenceGuard(plan.divergence_factor, plan.divergence_window, progress.loss_references)
    for epoch in range(progress.epochs_done + 1, plan.epochs + 1):
        if progress.stopped_early:
            break
        started = epoch_started = time.monotonic()
        totals = dict(progress.partial)
        step = progress.steps_in_epoch
        dataset = train_data(epoch)
        if step:
            dataset = dataset.skip(step)
        for train_step in steps.train_steps(dataset):
            if hooks is not None:
                hooks.before_step(epoch, progress.global_step)
            sums = {k: float(v) for k, v in train_step().items()}
            step += 1
            progress.global_step += 1
            loss = sums["loss"] / sums["count"] if sums["count"] else 0.0
            guard.check(loss, epoch, step, progress.global_step, hooks.loss_phase() if hooks is not None else "")
            if step_bar is not None:
                step_bar.step(epoch, step, sums["count"], loss)
            for key, value in sums.items():
                totals[key] = totals.get(key, 0.0) + value
            if plan.save_freq_steps and progress.global_step % plan.save_freq_steps == 0:
                progress.steps_in_epoch, progress.partial = step, dict(totals)
                progress.seconds += time.monotonic() - started
                started = time.monotonic()
                end.step_backup(progress, epoch, step)
            if preemption is not None:
                progress.steps_in_epoch, progress.partial = step, dict(totals)
                preemption.after_step(epoch, step)
        progress.seconds += time.monotonic() - started
        if step_bar is not None:
            step_bar.close()

        row = {"epoch": epoch, **averages(totals)}
        if eval_data is not None:
            row.update({f"val_{k}": v for k, v in steps.evaluate(eval_data()).items()})
        row["learning_rate"] = steps.learning_rate()
        row["seconds"] = round(progress.seconds, 3)
        row["steps"] = progress.global_step
        if hooks is not None:
            row.update(hooks.end_of_epoch(epoch))
        _check_monitor(plan.monitor, row)
        progress.end_epoch(row)

        value = row[plan.monitor]
        tiebreak = row.get("val_loss", row.get("loss"))
        if progress.improved(plan.monitor, value, tiebreak):
            progress.best_epoch, progress.best_value, progress.best_loss = epoch, value, tiebreak
            progress.best_weights = best.save(epoch)
        if plan.early_stopping_monitor:
            _check_monitor(plan.early_stopping_monitor, row)
            _early_stopping(progress, plan, row[plan.early_stopping_monitor], epoch, log)

        log.info("%s", progress.epoch_line(row, plan.epochs, time.monotonic() - epoch_started))
        end.epoch_end(progress, epoch, {k: row[k] for k in steps_metric_names(row)},
                      {k[4:]: row[k] for k in row if k.startswith("val_")}, row["learning_rate"])
    return progress


def steps_metric_names(row: dict) -> list[str]:
    """Training metrics in an epoch row (not eval, not bookkeeping)."""
    return [k for k in row if not k.startswith("val_") and k not in ("epoch", "learning_rate", "seconds", "steps")]


def _check_monitor(monitor: str, row: dict) -> None:
    if monitor not in row:
        options = ", ".join(k for k in row if k not in ("epoch", "seconds", "steps"))
        raise ValueError(f"monitored metric {monitor!r} is not computed; expected one of: {options}")


def _early_stopping(progress: Progress, plan: Plan, value: float, epoch: int, log: logging.Logger) -> None:
    """Keras's EarlyStopping rule: stop after `patience` epochs without improvement."""
    history = [row[plan.early_stopping_monitor] for row in progress.rows[:-1]]
    if history:
        best = min(history) if lower_is_better(plan.early_stopping_monitor) else max(history)
        better = value < best if lower_is_better(plan.early_stopping_monitor) else value > best
    else:
        better = True
    progress.wait = 0 if better else progress.wait + 1
    if progress.wait >= plan.early_stopping_patience:
        progress.stopped_early = True
        log.info("early stopping after epoch %d: %s did not improve for %d epochs",
                 epoch, plan.early_stopping_monitor, progress.wait)
