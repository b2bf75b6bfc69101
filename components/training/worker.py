"""One worker of a train stage, in this process.

    python -m components.training.worker SPEC.json        one trial from a spec file
    convpipe train-worker --config C --root R [--set ...]  join the train stage the chief is running
    convpipe train-worker --spec SPEC.json                 one trial from a spec file

The train stage starts `python -m components.training.worker` in a fresh process when its own
process cannot train there (devices already initialised differently, or multi-worker training,
which must configure TensorFlow first). For multi-worker training the chief runs `convpipe run`
as usual, and a cluster manager starts `convpipe train-worker` on every other task, each with its
TF_CONFIG: the worker waits until the chief's run reaches its train stage (a RUNNING train
execution in `<root>/metadata.sqlite` whose parameters are this config's), then trains the same
trial from the same Examples and the same backups (`<root>` must be a filesystem every worker
sees). It writes nothing there: only the chief writes backups, logs and the Model artifact.

`python -m ...worker` logs to stderr prefixed with `convpipe:`; a failure the user can act on
prints `convpipe-error: <message>` and exits with 3, a preemption (SIGTERM: a coordinated backup
was saved) with 143.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from components.training.preemption import PREEMPTED_EXIT, Preempted

LOG_PREFIX = "convpipe: "
ERROR_PREFIX = "convpipe-error: "
USER_ERROR_EXIT = 3
STOP_GRACE_S = 60.0
"""How long a worker told to stop (SIGTERM) may take to save its preemption backup before SIGKILL."""


# ------------------------------------------------------------------------------------ one trial
def run_spec(spec, log: logging.Logger) -> tuple[int, Optional[str]]:
    """Train `spec` here: (exit status, message for the user or None)."""
    from components.training.errors import user_message
    from components.training.trial import train_trial

    try:
        train_trial(spec, log)
    except Preempted as exc:
        return PREEMPTED_EXIT, f"train: {exc}"
    except Exception as exc:
        message = user_message(exc, spec.work_dir) or lost_worker_message(exc, spec.work_dir)
        if message is None:
            raise
        return USER_ERROR_EXIT, message
    return 0, None


def lost_worker_message(exc: BaseException, work_dir: str) -> Optional[str]:
    """The message for a multi-worker collective that failed because a peer died or hung, else None."""
    import tensorflow as tf

    from components.training.strategy import cluster_size

    lost = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError)
    if cluster_size() < 2 or not isinstance(exc, lost):
        return None
    text = " ".join(str(exc).strip().splitlines()[:2])
    detail = text[text.find("aborted by:") + len("aborted by:"):].strip() if "aborted by:" in text else text
    return (f"train: the cluster lost a worker ({type(exc).__name__}: {detail[:300]}); restart every worker, "
            f"and the run resumes from the newest backup under {Path(work_dir) / 'backups'}")


def main(argv: list[str]) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if len(argv) != 1:
        print("usage: python -m components.training.worker SPEC.json", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_PREFIX + "%(levelname)s %(message)s"))
    log = logging.getLogger("convpipe.train.worker")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

    from components.training.trial import TrialSpec

    code, message = run_spec(TrialSpec.from_json(Path(argv[0]).read_text()), log)
    if message is not None:
        print(ERROR_PREFIX + message.replace("\n", " "), file=sys.stderr, flush=True)
    return code


def stop(process: subprocess.Popen, grace_s: float = STOP_GRACE_S, on_line=None) -> None:
    """Pass a stop on to a worker process: SIGTERM (a multi-worker trial saves a coordinated backup
    and exits), SIGKILL after `grace_s`; its remaining output lines go to `on_line`."""
    import threading

    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    deadline = threading.Timer(grace_s, process.kill)
    deadline.start()
    try:
        for line in process.stdout or ():
            if on_line is not None:
                on_line(line)
        process.wait()
    finally:
        deadline.cancel()


# ------------------------------------------------------------------------- joining a run's train
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
    if is_chief_task():
        task = tf_config().get("task", {})
        raise ConfigError(f"convpipe train-worker: TF_CONFIG makes this task ({task.get('type')} "
                          f"{task.get('index', 0)}) the chief; the chief runs `convpipe run`, the other tasks "
                          "run `convpipe train-worker`")


def _params_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def joinable_execution(store, params: dict):
    """The RUNNING train execution of the run under way, or None when train is not running.

    Raises JoinError when it runs with other parameters (the worker's config is not the chief's).
    """
    from pipeline import metadata as md

    execution = store.latest_execution("train", (md.RUNNING,))
    if execution is None:
        return None
    if _params_key(execution.params) != _params_key(params):
        old, new = execution.params, params
        differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise JoinError(f"train execution {execution.id} (run {execution.run_id}) is running with other "
                        f"parameters than this worker's config (they differ in: {', '.join(differ)}); "
                        "start every worker with the chief's --config and --set")
    return execution


def spec_for(config, store, execution, output_dir: Path):
    """The trial the chief's train execution is training, as this (non-chief) worker sees it."""
    from pipeline import artifacts as layout
    from components.training.tensorboard import tensorboard_dir
    from components.training.trial import TrialSpec

    inputs = store.inputs(execution.id)
    if "examples" not in inputs:
        raise JoinError(f"train execution {execution.id} records no examples input")
    name = f"run-{execution.run_id}-train-{execution.id}"  # as the chief names it (components.train.run_name)
    return TrialSpec(
        config=config.to_dict(),
        examples_dir=str(inputs["examples"].uri),
        work_dir=str(layout.work_dir(store.root, "train", execution.cache_key)),
        output_dir=str(output_dir),
        tensorboard_dir=str(tensorboard_dir(store.root, config.pipeline.tensorboard_root, name)),
        name=name,
    )


def wait_for_train(config, root: Path, output_dir: Path, timeout_s: float, log: logging.Logger,
                   poll_s: float = 1.0):
    """Poll the metadata store until the chief's run is training this config; its TrialSpec.

    Returns None when the run under way ended without training (train reused from the cache, or
    an earlier stage failed); raises JoinError after `timeout_s`.
    """
    from pipeline import metadata as md
    from pipeline.metadata import MetadataStore
    from components.train import parameters

    params = json.loads(_params_key(parameters(config)))
    started = time.time()
    said = False
    while True:
        try:
            with MetadataStore(root, create=False) as store:
                execution = joinable_execution(store, params)
                if execution is not None:
                    log.info("joining train execution %d of run %d under %s", execution.id, execution.run_id, root)
                    return spec_for(config, store, execution, output_dir)
                run_id = store.latest_run_id()
                run = store.run(run_id) if run_id is not None else None
                if run is not None and run.state != md.RUNNING and (run.ended or 0) >= started:
                    log.info("run %d ended %s without training (train was reused from the cache, or an "
                             "earlier stage failed); nothing for this worker to do", run.id, run.state)
                    return None
        except FileNotFoundError:
            pass  # no run under this root yet
        if time.time() - started > timeout_s:
            raise JoinError(f"no run under {root} reached its train stage within {timeout_s:.0f} s; start "
                            "the chief (`convpipe run` with the same --config, --set and --root)")
        if not said:
            log.info("waiting for the chief's run under %s to reach its train stage", root)
            said = True
        time.sleep(poll_s)


def train_worker(config, spec_path: Optional[str], timeout_s: float, log: logging.Logger) -> tuple[int, Optional[str]]:
    """`convpipe train-worker`: (exit status, message for the user or None)."""
    from components.training.trial import TrialSpec

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if spec_path is not None:
        return run_spec(TrialSpec.from_json(Path(spec_path).read_text()), log)
    check_can_join(config)
    scratch = Path(tempfile.mkdtemp(prefix="convpipe-train-worker-"))
    try:
        spec = wait_for_train(config, Path(config.pipeline.root).resolve(), scratch / "model", timeout_s, log)
        if spec is None:
            return 0, None
        return run_spec(spec, log)
    except JoinError as exc:
        return 1, f"train-worker: {exc}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
