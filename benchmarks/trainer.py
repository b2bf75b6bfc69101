"""The two trainers the benchmarks compare: the train stage's loop, and plain Keras `fit`.

`PipelineTrainer` wires the train stage's own parts the way components/training/trial.py does
(strategy from the config, the task adapter's model and loss and the optimizer inside its scope,
`StepFunctions` and training hooks for the task, the gzip-shard reader, two-generation backups,
best weights, TensorBoard scalars and the task's sample-prediction grid) and runs `loop.fit` one
epoch at a time, so the benchmark can alternate epochs with the baseline. `plain_keras` builds the
same network, loss and optimizer and compiles them for `fit`.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

LOG = logging.getLogger("benchmarks")


class PipelineTrainer:
    """The train stage's loop on an Examples directory, advanced one epoch per `epoch()` call."""

    def __init__(self, config, examples_dir: Path, work_dir: Path, *, jit: Optional[bool] = None,
                 sample_images: bool = True, placement=None, background: bool = True):
        """`background`: the end-of-epoch work as the stage does it (beside the next epoch on one
        device); False puts it on the training thread, as before epoch_end.py."""
        import keras
        import tensorflow as tf

        from components import examples as ex
        from components.tasks import get_task
        from components.training import builders
        from components.training.backups import Backups, BestWeights
        from components.training.epoch_end import EndOfEpoch, end_of_epoch
        from components.training.history import Progress
        from components.training.loop import Plan, StepFunctions
        from components.training import precision
        from components.training.strategy import make_strategy, use_jit
        from components.training.tensorboard import TrainingLogs
        from components.training.train_input import TrainInput

        train = config.train
        self.placement = placement or make_strategy(train.distribution, train.logical_cpu_devices)
        policy, _ = precision.choose(train.precision, self.placement.on_gpu)
        self.policy = policy
        keras.config.set_dtype_policy(policy)
        self.jit = use_jit(train.jit_compile, self.placement.on_gpu) if jit is None else jit

        schema = ex.read_schema(examples_dir)
        task = get_task(schema.get("task", "classification"))
        self.examples_dir = Path(examples_dir)
        self.input_shape = task.input_shape(schema)
        self.class_names = schema["class_names"]
        self.train_size = int(schema["split_counts"]["train"])
        self.batch_size = builders.batch_size_for(train, self.train_size)
        self.steps_per_epoch = math.ceil(self.train_size / self.batch_size)
        self.config = config

        strategy = self.placement.strategy

        def build_trackables(progress_variable):
            with strategy.scope():
                model, loss = task.build_model_and_loss(config.model, train, self.input_shape, task.num_classes(schema))
                optimizer = builders.build_optimizer(train, self.steps_per_epoch, policy)
                optimizer.build(model.trainable_variables)
                best = BestWeights(model)
            checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, progress=progress_variable,
                                             best=best.variables)
            return model, loss, optimizer, best, checkpoint

        keras.utils.set_random_seed(train.seed)
        self.progress = Progress()
        self.model, loss, optimizer, self.best, checkpoint = build_trackables(self.progress.variable)
        work_dir = Path(work_dir)
        self.backups = Backups(work_dir / "backups", checkpoint, keep=2)
        self.logs = TrainingLogs(work_dir / "tensorboard")
        self.steps = StepFunctions(strategy, self.model, loss_fn=loss, optimizer=optimizer, jit_compile=self.jit,
                                   task=task)
        self.hooks = task.training_hooks(self.model, loss, train, None)
        self.plan = Plan(epochs=0, monitor="loss", save_freq_steps=train.save_freq_steps)

        samples = None
        if sample_images and train.num_sample_images:
            samples = next(iter(ex.make_dataset(examples_dir, "train", train.num_sample_images)))

        def log_samples(of_model, epoch: int) -> None:
            targets = tf.nest.map_structure(lambda t: t.numpy(), samples[1])
            png = task.sample_grid_png(of_model, samples[0].numpy(), targets, self.class_names)
            if png is not None:
                self.logs.sample_predictions(epoch, png)

        self.sample_predictions = (lambda epoch: log_samples(self.model, epoch)) if samples is not None else None
        build_mirror = lambda: build_trackables(tf.Variable("{}", dtype=tf.string, trainable=False))  # noqa: E731
        self.end = (end_of_epoch(self.placement, self.backups, self.logs, LOG, log_samples if samples is not None
                                 else None, self.model, build_mirror, checkpoint) if background
                    else EndOfEpoch(self.backups, self.logs, LOG, log_samples if samples is not None else None,
                                    self.model))
        self.train_input = TrainInput(examples_dir, self.batch_size, train, schema, self.train_size)

    def train_data(self, epoch: int):
        """The reader exactly as the stage builds it for `epoch` (shuffled, seeded by the epoch;
        the decoded split cached across epochs when `train.cache` says so)."""
        return self.train_input(epoch)

    def epoch(self) -> dict:
        """One more epoch through `loop.fit` (steps, loss check, backups, best weights, TensorBoard)."""
        from components.training.loop import fit

        self.plan.epochs += 1
        fit(self.steps, self.train_data, None, self.plan, self.progress, self.end, self.best, LOG, hooks=self.hooks)
        return self.progress.rows[-1]

    def drain(self) -> None:
        """Wait for the end-of-epoch work still running beside training (a benchmark's epoch ends here)."""
        self.end.wait()

    def close(self) -> None:
        self.end.close()
        self.logs.close()
        self.backups.close()


def plain_keras(config, input_shape, num_classes: int, steps_per_epoch: int, jit: bool, metrics=("categorical_accuracy",)):
    """The same network, loss and optimizer, compiled for plain `model.fit` (default strategy)."""
    import keras

    from components.training import builders

    keras.utils.set_random_seed(config.train.seed)
    model = builders.build_network(config.model, input_shape, num_classes)
    optimizer = builders.build_optimizer(config.train, steps_per_epoch, keras.config.dtype_policy().name)
    model.compile(optimizer=optimizer, loss=builders.build_loss(config.train), metrics=list(metrics),
                  jit_compile=jit)
    return model
