"""`convpipe train-worker`: another task of a multi-worker cluster joins the train stage the chief runs.

The chief runs `convpipe run` as usual, and a cluster manager starts `convpipe train-worker` on
every other task, each with its TF_CONFIG: the worker waits until the chief's run reaches its
train stage (a RUNNING train execution in the metadata store whose parameters are those of a
trial of this config), then trains the same trial from the same Examples and the same backups,
each trial of a sweep in a fresh process (components/training/worker.py), until the run moves past
train. It writes nothing there: only the chief writes backups, logs and the Model artifact.

The root is a filesystem every worker sees (the same path everywhere), or a remote root
(`--root s3://... --metadata postgresql+psycopg://...`): then the worker finds the run in the
shared store, streams the Examples from the bucket into its own working copy ($CONVPIPE_CACHE),
and resumes from the backups the chief uploaded (components/training/backup_mirror.py). No disk
is shared with the chief.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

from components.train.stage import STAGE, backups_url
from components.training.preemption import PREEMPTED_EXIT
from components.training.worker import child_environment, run_spec, run_worker_process
from pipeline.filesystem import RemoteRoot, RootError, is_url


class _Stopped(BaseException):
    """SIGTERM while this worker waits for a trial to join."""


class JoinError(RuntimeError):
    """This worker cannot join the chief's run (wrong task, other config, no run reached train)."""


def check_can_join(config) -> None:
    """A joining worker is a non-chief task of a multi-worker cluster; raises ConfigError otherwise."""
    from pipeline.config import ConfigError
    from components.training.strategy import cluster_size, is_chief_task, tf_config, uses_multi_worker

    if cluster_size() < 2:
        raise ConfigError("convpipe train-worker: expected TF_CONFIG naming two or more tasks "
                          f"(cluster chief/worker), got {os.environ.get('TF_CONFIG') or 'no TF_CONFIG'}")
    if not uses_multi_worker(config.train.distribution):
        raise ConfigError(f"convpipe train-worker: train.distribution is {config.train.distribution!r}; "
                          "expected 'auto' or 'multi_worker' for a multi-worker run")
    if config.train.parallel_trials > 1:
        raise ConfigError(f"convpipe train-worker: train.parallel_trials is {config.train.parallel_trials}; a "
                          "multi-worker run trains one trial at a time across the cluster (expected 1)")
    if is_chief_task():
        task = tf_config().get("task", {})
        raise ConfigError(f"convpipe train-worker: TF_CONFIG makes this task ({task.get('type')} "
                          f"{task.get('index', 0)}) the chief; the chief runs `convpipe run`, the other tasks "
                          "run `convpipe train-worker`")


def joined_root(config) -> tuple[Path, Optional[RemoteRoot]]:
    """(the local root or working copy, the remote root or None); a remote root is reached now, and
    needs a store outside it (one line naming the URL otherwise)."""
    from pipeline.config import ConfigError

    if not is_url(config.pipeline.root):
        return Path(config.pipeline.root).resolve(), None
    if not config.pipeline.metadata:
        raise ConfigError(f"convpipe train-worker --root {config.pipeline.root}: a remote root's runs are in the "
                          "chief's metadata store; pass the chief's --metadata postgresql+psycopg://... (or set "
                          "pipeline.metadata)")
    remote = RemoteRoot(config.pipeline.root)
    remote.check()
    return remote.local, remote


def _params_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def trial_parameters(config) -> dict[str, dict]:
    """Trial name -> the train stage's parameters for it, as the runner records them (one trial
    unless train.sweep or train.seeds ask for more)."""
    trials = STAGE.expand(config) if STAGE.expand else [("default", config)]
    return {name: json.loads(_params_key(STAGE.parameters(trial))) for name, trial in trials}


def joinable_execution(store, trials: dict[str, dict], done: tuple = ()):
    """The RUNNING train execution of the run under way (not one of `done`), or None.

    Raises JoinError when it runs with parameters of no trial of this worker's config (the worker
    was started with another config than the chief).
    """
    from pipeline import metadata as md

    execution = store.latest_execution("train", (md.RUNNING,))
    if execution is None or execution.id in done:
        return None
    keys = {_params_key(params) for params in trials.values()}
    if _params_key(execution.params) not in keys:
        old, new = execution.params, next(iter(trials.values()))
        differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise JoinError(f"train execution {execution.id} (run {execution.run_id}) is running with other "
                        f"parameters than this worker's config (they differ in: {', '.join(differ)}); "
                        "start every worker with the chief's --config and --set")
    return execution


def spec_for(config, store, execution, output_dir: Path, remote: Optional[RemoteRoot] = None):
    """The trial the chief's train execution is training, as this (non-chief) worker sees it;
    `config` is that trial's config. On a remote root the Examples are fetched into this machine's
    working copy first, and the backups come from the root's copy of them."""
    from pipeline import artifacts as layout
    from components.training.tensorboard import tensorboard_dir
    from components.training.trial import TrialSpec

    inputs = store.inputs(execution.id)
    if "examples" not in inputs:
        raise JoinError(f"train execution {execution.id} records no examples input")
    if remote is not None:
        try:
            remote.fetch_artifacts([inputs["examples"]])
        except RootError as exc:
            raise JoinError(str(exc)) from None
    work_dir = layout.work_dir(store.root, "train", execution.cache_key)
    name = f"run-{execution.run_id}-train-{execution.id}"  # as the chief names it (components.train.stage.run_name)
    return TrialSpec(
        config=config.to_dict(),
        examples_dir=str(inputs["examples"].uri),
        work_dir=str(work_dir),
        output_dir=str(output_dir),
        tensorboard_dir=str(tensorboard_dir(store.root, config.pipeline.tensorboard_root, name)),
        name=name,
        backups_url=backups_url(remote.url, work_dir.name) if remote is not None else None,
    )


def wait_for_train(config, root: Path, output_dir: Path, timeout_s: float, log: logging.Logger,
                   done: tuple = (), run_id: Optional[int] = None, poll_s: float = 1.0,
                   remote: Optional[RemoteRoot] = None):
    """Poll the metadata store until the chief's run is training a trial of this config (other than
    the executions in `done`): (execution, its TrialSpec).

    Returns None when the run ended first: run `run_id` (the one this worker joined before), else
    a run that ended while we waited (train reused from the cache, or a stage failed). Raises
    JoinError after `timeout_s`. `remote`: the remote root whose working copy `root` is.
    """
    from pipeline import metadata as md
    from pipeline.metadata import MetadataStore
    from pipeline.sweep import trial_configs

    trials = trial_parameters(config)
    configs = dict(trial_configs(config))
    started = time.time()
    said = False
    while True:
        try:
            with MetadataStore(root, create=False, url=config.pipeline.metadata,
                               root_label=remote.url if remote else None) as store:
                execution = joinable_execution(store, trials, done)
                if execution is not None:
                    name = next(n for n, p in trials.items() if _params_key(p) == _params_key(execution.params))
                    log.info("joining train execution %d of run %d (trial %s) under %s", execution.id,
                             execution.run_id, name, root)
                    return execution, spec_for(configs.get(name, config), store, execution, output_dir, remote)
                if run_id is not None and _train_is_over(store, run_id, done):
                    log.info("run %d has moved past its train stage; nothing more for this worker to do", run_id)
                    return None
                latest = store.latest_run_id()
                run = store.run(latest) if latest is not None else None
                if run is not None and run.state != md.RUNNING and (run.ended or 0) >= started:
                    log.info("run %d ended %s without training (train was reused from the cache, or an earlier "
                             "stage failed); nothing for this worker to do", run.id, run.state)
                    return None
        except FileNotFoundError:
            pass  # no run under this root yet
        if time.time() - started > timeout_s:
            raise JoinError(f"no run under {remote.url if remote else root} reached its train stage within {timeout_s:.0f} s; start "
                            "the chief (`convpipe run` with the same --config, --set and --root)")
        if not said:
            log.info("waiting for the chief's run under %s to reach its train stage", root)
            said = True
        time.sleep(poll_s)


def _train_is_over(store, run_id: int, done: tuple) -> bool:
    """Whether run `run_id` ended or started a stage after the train executions in `done`."""
    from pipeline import metadata as md

    if store.run(run_id).state != md.RUNNING:
        return True
    return any(e.id > max(done) and e.stage != "train" for e in store.executions(run_id))


def train_worker(config, spec_path: Optional[str], timeout_s: float, log: logging.Logger) -> tuple[int, Optional[str]]:
    """`convpipe train-worker`: (exit status, message for the user or None).

    Each trial trains in a fresh process (a process configures collective ops once); a SIGTERM
    here is passed on to it, so it saves the cluster's preemption backup and exits with 143.
    """
    from components.training.trial import TrialSpec

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if spec_path is not None:
        return run_spec(TrialSpec.from_json(Path(spec_path).read_text()), log)
    check_can_join(config)
    root, remote = joined_root(config)
    scratch = Path(tempfile.mkdtemp(prefix="convpipe-train-worker-"))
    running: list[subprocess.Popen] = []
    terminated = []

    def pass_sigterm_on(signum, frame):
        if running and running[-1].poll() is None:
            terminated.append(signum)
            running[-1].send_signal(signal.SIGTERM)
        else:
            raise _Stopped()

    previous = signal.signal(signal.SIGTERM, pass_sigterm_on)
    done: list[int] = []
    run_id = None
    try:
        while not terminated:
            joined = wait_for_train(config, root, scratch / f"model-{len(done)}", timeout_s, log, tuple(done),
                                    run_id, remote=remote)
            if joined is None:
                return 0, None
            execution, spec = joined
            execution_id, run_id = execution.id, execution.run_id
            code, error, tail = run_worker_process(spec, scratch / f"spec-{execution_id}.json", log,
                                                   env=child_environment(), started=running.append)
            if code != 0:
                return code, error or (f"train-worker: the training process exited with code {code}; its last "
                                       "output:\n" + "\n".join(tail))
            done.append(execution_id)
        return PREEMPTED_EXIT, "train-worker: stopped by SIGTERM between trials"
    except JoinError as exc:
        return 1, f"train-worker: {exc}"
    except _Stopped:
        return PREEMPTED_EXIT, "train-worker: stopped by SIGTERM while no trial was training"
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(scratch, ignore_errors=True)
