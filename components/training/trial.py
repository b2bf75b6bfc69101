"""One training trial, from a config and an Examples directory to a Model directory.

Independent of the runner: the train stage calls `train_trial` in its own process, or in a fresh
one through `components.training.worker` when the devices this process already initialised
cannot be split as `train.logical_cpu_devices` asks; a cluster manager can start the same worker
on every machine of a multi-worker run. A sweep trains one trial per combination through here.

Outputs (chief only): `model.keras` (the best epoch's weights), `history.json`, `trial.json`.
State that survives a kill lives in `work_dir`: `backups/ckpt-<n>.*` (weights, optimizer, progress and
the best epoch's weights in one checkpoint).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from components.training.backup_mirror import BackupMirror
from components.training.model_artifact import HISTORY_FILE, MODEL_FILE, TRIAL_FILE


@dataclass
class TrialSpec:
    config: dict
    """The whole pipeline config (by alias), as `PipelineConfig.to_dict()` gives it."""
    examples_dir: str
    work_dir: str
    output_dir: str
    tensorboard_dir: str
    name: str = "trial"
    backups_url: Optional[str] = None
    """A remote root's copy of `work_dir/backups` (multi-worker runs upload to and restore from it)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "TrialSpec":
        return cls(**json.loads(text))


def trial_params(config, batch_size: int, steps_per_epoch: int, placement, policy: str, jit: bool) -> dict:
    return {
        "model": config.model.model_dump(mode="json"),
        "train": config.train.model_dump(mode="json"),
        "effective_batch_size": batch_size,
        "steps_per_epoch": steps_per_epoch,
        "strategy": placement.kind,
        "num_replicas": placement.num_replicas,
        "precision": policy,
        "jit_compile": jit,
    }


def flat_hparams(params: dict) -> dict:
    """The HParams dashboard's columns: the usual training knobs, plus every scalar of
    `model.params` and `train.loss_params`, and the multitask scheme, since a sweep over any of them
    (video's `model.params.fusion`, a focal `gamma`) must show as a column to compare trials by."""
    train = params["train"]
    flat = {
        "model": params["model"]["name"], "loss": train["loss"], "optimizer": train["optimizer"]["name"],
        "learning_rate": train["optimizer"]["learning_rate"], "schedule": train["optimizer"]["schedule"],
        "batch_size": params["effective_batch_size"], "seed": train["seed"], "epochs": train["epochs"],
        "strategy": params["strategy"], "num_replicas": params["num_replicas"], "precision": params["precision"],
    }
    scalar = (bool, int, float, str)
    flat.update({f"model.{k}": v for k, v in params["model"]["params"].items() if isinstance(v, scalar)})
    flat.update({f"loss.{k}": v for k, v in train["loss_params"].items() if isinstance(v, scalar)})
    multitask = train["multitask"]
    if multitask["name"] or multitask["heads"]:
        flat.update({f"multitask.{k}": multitask[k] for k in ("name", "schedule", "weighting")})
    return flat


def train_trial(spec: TrialSpec, log: logging.Logger) -> dict:
    """Train (or resume) one trial; returns the contents of trial.json. Raises divergence.NonFiniteLoss
    and LossDiverged, backups.BackupError and strategy.DeviceSetupError for the caller to phrase."""
    from pipeline.config import parse_config
    from components.training import precision
    from components.training.strategy import make_strategy, use_jit

    config = parse_config(spec.config, "trial config")
    train = config.train
    placement = make_strategy(train.distribution, train.logical_cpu_devices, train.cluster)  # before any other TF op

    import keras
    previous_policy = keras.config.dtype_policy()
    policy, reason = precision.choose(train.precision, placement.on_gpu)
    log.info("precision %s (%s)", policy, reason)
    keras.config.set_dtype_policy(policy)
    try:
        return _train(spec, config, placement, policy, use_jit(train.jit_compile, placement.on_gpu), log)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _train(spec: TrialSpec, config, placement, policy: str, jit: bool, log: logging.Logger) -> dict:
    import keras
    import tensorflow as tf

    from components import examples as ex
    from components.training import builders, fine_tune
    from components.training.backups import Backups, BestWeights
    from components.training.epoch_end import end_of_epoch
    from components.training.history import Progress
    from components.tasks import get_task
    from components.training.loop import Plan, StepFunctions, fit
    from components.training.tensorboard import TrainingLogs
    from pipeline.progress import StepBar
    from components.training.train_input import EvalInput, TrainInput

    train = config.train
    schema = ex.read_schema(spec.examples_dir)
    counts = schema.get("split_counts", {})
    task = get_task(schema.get("task", "classification"))
    class_names = schema["class_names"]
    input_shape = task.input_shape(schema)
    train_size = int(counts.get("train") or sum(1 for _ in ex.iter_records(spec.examples_dir, "train")))
    if train_size == 0:
        raise ValueError(f"{spec.examples_dir}: the train split is empty; nothing to train on")
    batch_size = builders.batch_size_for(train, train_size)
    steps_per_epoch = math.ceil(train_size / batch_size)
    has_eval = bool(ex.shard_files(spec.examples_dir, "eval")) and counts.get("eval", 1) > 0
    monitor = task.monitor(config, has_eval)
    epochs = task.epochs(config)
    params = trial_params(config, batch_size, steps_per_epoch, placement, policy, jit)
    log.info("training %s with %s strategy (%d replica(s)), %s, jit_compile=%s, batch %d, %d steps per epoch",
             spec.name, placement.kind, placement.num_replicas, policy, jit, batch_size, steps_per_epoch)

    def build_trackables(progress_variable):
        """The model, loss, optimizer and best weights, and the checkpoint of all that a backup holds."""
        with strategy.scope():
            model, loss = task.build_model_and_loss(config.model, train, input_shape, task.num_classes(schema))
            optimizer = builders.build_optimizer(train if epochs == train.epochs else train.model_copy(
                update={"epochs": epochs}), steps_per_epoch, policy)
            optimizer.build(model.trainable_variables)
            best = BestWeights(model)
        objects = {"model": model, "optimizer": optimizer, "progress": progress_variable, "best": best.variables}
        if builders.loss_variables(loss):
            objects["loss_state"] = builders.loss_variables(loss)
        return model, loss, optimizer, best, tf.train.Checkpoint(**objects)

    keras.utils.set_random_seed(train.seed)
    strategy = placement.strategy
    progress = Progress()
    model, loss, optimizer, best, checkpoint = build_trackables(progress.variable)

    work_dir = Path(spec.work_dir)
    mirror = None
    if spec.backups_url and placement.kind == "multi_worker":  # the other machines resume from it too
        mirror = BackupMirror(spec.backups_url)
    backups = Backups(work_dir / "backups", checkpoint, keep=2, is_chief=placement.is_chief, mirror=mirror)
    restored = backups.restore(log)
    if restored is not None:
        progress.load()
        log.info("resuming from epoch %d, step %d (backup %s; %d epoch(s) done)",
                 progress.epochs_done + 1, progress.steps_in_epoch, backups.prefix(restored).name, progress.epochs_done)
        progress.resumes.append({"backup": restored, "epoch": progress.epochs_done + 1, "step": progress.steps_in_epoch})

    logs = TrainingLogs(spec.tensorboard_dir, enabled=placement.is_chief)
    if restored is None:
        logs.hparams(flat_hparams(params))
        logs.graph(tf.function(lambda x: model(x, training=False)).get_concrete_function(
            tf.TensorSpec([None, *input_shape], tf.float32)))

    train_data = TrainInput(spec.examples_dir, batch_size, train, schema, train_size)  # train_data(epoch)
    log.info("%s", train_data.describe())

    eval_batch = max(32, min(batch_size, 256))
    eval_data = EvalInput(spec.examples_dir, eval_batch, train, schema, int(counts.get("eval") or 0)) \
        if has_eval else None  # eval_data()

    sample_split = "test" if ex.shard_files(spec.examples_dir, "test") else "train"
    samples = None
    if train.num_sample_images and placement.is_chief:
        samples = next(iter(ex.make_dataset(spec.examples_dir, sample_split, train.num_sample_images)), None)

    def log_samples(of_model, epoch: int) -> None:
        targets = tf.nest.map_structure(lambda t: t.numpy(), samples[1])
        png = task.sample_grid_png(of_model, samples[0].numpy(), targets, class_names)
        if png is not None:
            logs.sample_predictions(epoch, png)

    end = end_of_epoch(placement, backups, logs, log, log_samples if samples is not None else None, model,
                       lambda: build_trackables(tf.Variable("{}", dtype=tf.string, trainable=False)), checkpoint)

    plan = Plan(epochs=epochs, monitor=monitor, save_freq_steps=train.save_freq_steps,
                early_stopping_monitor=train.early_stopping.monitor if train.early_stopping.enabled else None,
                early_stopping_patience=train.early_stopping.patience,
                divergence_factor=train.divergence.factor, divergence_window=train.divergence.window)

    def make_steps():  # one per fine-tune phase (components/training/fine_tune.py), else one
        return StepFunctions(strategy, model, loss_fn=loss, optimizer=optimizer, jit_compile=jit, task=task)
    hooks = task.training_hooks(model, loss, train, eval_data)
    preemption = None
    if placement.kind == "multi_worker":
        from components.training.preemption import PreemptionBackups
        preemption = PreemptionBackups(strategy, checkpoint, progress, backups, log)
    try:
        fine_tune.fit_in_phases(fit, make_steps, train, model, optimizer, train_data, eval_data, plan, progress,
                                end, best, log=log, preemption=preemption, hooks=hooks,
                                step_bar=StepBar(steps_per_epoch, epochs) if placement.is_chief else None)
    finally:
        end.close()
        logs.close()
        backups.close()
        if preemption is not None:
            preemption.close()
    if placement.kind == "multi_worker":
        from components.training.replicas import weights_digest
        log.info("trained weights sha256 %s (the same on every worker)", weights_digest(model))

    if progress.best_weights and placement.is_chief:  # other workers keep no best weights, and write no model
        best.load(progress.best_weights)
        log.info("keeping the weights of epoch %d (%s = %.4g)", progress.best_epoch, monitor, progress.best_value)
    result = {
        "name": spec.name,
        "task": task.name,
        "params": params,
        "class_names": class_names,
        "input_shape": list(input_shape),
        "parameters": int(model.count_params()),
        "monitor": monitor,
        "best_epoch": progress.best_epoch,
        "best_value": progress.best_value,
        "best_metrics": progress.rows[progress.best_epoch - 1] if progress.best_epoch else None,
        "epochs_run": progress.epochs_done,
        "stopped_early": progress.stopped_early,
        "resumes": progress.resumes,
        "steps": progress.global_step,
        "seconds": round(progress.seconds, 3),
        "tensorboard_dir": spec.tensorboard_dir,
    }
    if placement.is_chief:
        output_dir = Path(spec.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        model.save(output_dir / MODEL_FILE)
        (output_dir / HISTORY_FILE).write_text(json.dumps(progress.summary(monitor), indent=2, default=_json_number))
        (output_dir / TRIAL_FILE).write_text(json.dumps(result, indent=2, default=_json_number))
    return result


def _json_number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
