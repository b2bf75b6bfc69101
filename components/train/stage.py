"""train: Examples -> Model (`model.keras`, `history.json`, `trial.json`).

Builds the configured model by name inside the `tf.distribute` strategy that `train.distribution`
picks, and trains it with one custom loop that serves every strategy (components/training/).
Backups for resumption live in the execution's work directory, which survives a failed or
killed attempt: rerunning the pipeline resumes from the newest readable backup ("resuming from
epoch N" in the log). A NaN loss fails the stage naming the epoch and step and keeps the backups.
TensorBoard logs land under `pipeline.tensorboard_root` (default `<root>/tensorboard`), one
directory per run.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from components.training import fine_tune
from components.training.backup_mirror import BackupMirror
from pipeline import artifacts as layout
from pipeline import filesystem
from pipeline.config import ConfigError, PipelineConfig
from pipeline.stage import ExecutionContext, Stage, StageError
from pipeline.sweep import parallel_trials, trial_configs


def parameters(config: PipelineConfig) -> dict:
    """Everything that changes the trained weights: the model, the train section, the ranking metric."""
    return {
        "model": config.model.model_dump(mode="json"),
        "train": config.train.model_dump(mode="json", exclude={"cluster"}),  # timeouts change no weights
        "metric": config.evaluate.metric,
    }


def check(config: PipelineConfig) -> None:
    train = config.train
    if train.distribution == "multi_worker" and not os.environ.get("TF_CONFIG"):
        raise ConfigError("train.distribution: 'multi_worker' expects the TF_CONFIG environment variable to "
                          "describe the cluster; got no TF_CONFIG (use 'auto' to fall back to one machine)")
    from components.training.strategy import uses_multi_worker
    if train.parallel_trials > 1 and uses_multi_worker(train.distribution):
        raise ConfigError(f"train.parallel_trials: a multi-worker run trains one trial at a time across the cluster "
                          f"(TF_CONFIG names several workers); expected 1, got {train.parallel_trials}")
    if train.early_stopping.enabled and not (train.early_stopping.monitor.removeprefix("val_") in ("loss", "accuracy")):
        raise ConfigError(f"train.early_stopping.monitor: expected loss, accuracy, val_loss or val_accuracy, "
                          f"got {train.early_stopping.monitor!r}")
    fine_tune.check(config)  # model.params.backbone and train.fine_tune


def backups_url(root: str, work_name: str) -> Optional[str]:
    """Where a remote root keeps the backups of `<root>/train/.work/<work_name>/` (for workers on other
    machines; components/training/backup_mirror.py); None for a local root."""
    if not filesystem.is_url(root):
        return None
    return f"{root.rstrip('/')}/train/{layout.WORK_DIR}/{work_name}/backups"


def run_name(ctx: ExecutionContext) -> str:
    return f"run-{ctx.run_id}-train-{ctx.execution_id}"


def executor(ctx: ExecutionContext) -> None:
    from components.training.errors import user_message
    from components.training.strategy import fresh_process_reason, trains_in_this_process
    from components.training.tensorboard import tensorboard_dir
    from components.training.trial import TrialSpec, train_trial

    config = ctx.config
    spec = TrialSpec(
        config=config.to_dict(),
        examples_dir=str(ctx.inputs["examples"].uri),
        work_dir=str(ctx.work_dir),
        output_dir=str(ctx.outputs["model"]),
        tensorboard_dir=str(tensorboard_dir(ctx.root, config.pipeline.tensorboard_root, run_name(ctx))),
        name=run_name(ctx),
        backups_url=backups_url(config.pipeline.root, Path(ctx.work_dir).name),
    )
    if trains_in_this_process(config.train):
        try:
            result = train_trial(spec, ctx.log)
        except Exception as exc:
            message = user_message(exc, ctx.work_dir)
            if message is None:
                raise
            raise StageError(message) from exc
    else:
        ctx.log.info("training in a fresh process: %s", fresh_process_reason(config.train))
        result = train_in_subprocess(spec, ctx.log)
    if spec.backups_url:  # completed: a rerun is cached, so the remote root's copy of the backups goes
        try:
            BackupMirror(spec.backups_url).remove_all()
        except Exception as exc:
            ctx.log.warning("train: could not remove %s (%s); nothing reads it any more", spec.backups_url, exc)
    ctx.properties["model"] = {
        "best_epoch": result["best_epoch"], "monitor": result["monitor"], "best_value": result["best_value"],
        "epochs_run": result["epochs_run"], "resumes": len(result["resumes"]), "strategy": result["params"]["strategy"],
        "num_replicas": result["params"]["num_replicas"],
    }


def train_in_subprocess(spec, log) -> dict:
    """Run `components.training.worker` on `spec`, forwarding its log lines; returns trial.json.
    A SIGTERM or Ctrl-C meanwhile is passed on to it (a multi-worker trial saves its backup)."""
    import json
    from components.training.model_artifact import TRIAL_FILE
    from components.training.worker import child_environment, run_worker_process

    code, error, tail = run_worker_process(spec, Path(spec.work_dir) / "trial_spec.json", log, env=child_environment())
    if error is not None:
        raise StageError(error)
    if code != 0:
        raise StageError(f"train: the training process exited with code {code}; its last output:\n" + "\n".join(tail))
    return json.loads((Path(spec.output_dir) / TRIAL_FILE).read_text())


STAGE = Stage(
    name="train",
    inputs={"examples": "augment.examples"},
    outputs={"model": "Model"},
    executor=executor,
    parameters=parameters,
    check=check,
    module=__name__,
    expand=trial_configs,        # one execution per trial of train.sweep x train.seeds
    parallel=parallel_trials,
)
