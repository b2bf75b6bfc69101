"""One trial in a fresh process: how the train stage, and a worker joining it, start a trial.

    python -m components.training.worker SPEC.json        one trial from a spec file
    convpipe train-worker --spec SPEC.json                 the same, through the CLI
(Joining the train stage the chief is running, `convpipe train-worker --config C --root R`, is
components/train/join.py, which starts each trial through this module.)

The train stage starts `python -m components.training.worker` in a fresh process when its own
process cannot train there (devices already initialised differently, or multi-worker training,
which must configure TensorFlow first). For multi-worker training the chief runs `convpipe run`
as usual, and a cluster manager starts `convpipe train-worker` on every other task, each with its
TF_CONFIG: the worker waits until the chief's run reaches its train stage (a RUNNING train
execution in `<root>/metadata.sqlite` whose parameters are those of a trial of this config), then
trains the same trial from the same Examples and the same backups (`<root>` must be a filesystem
every worker sees), each trial of a sweep in a fresh process, until the run moves past train. It
writes nothing there: only the chief writes backups, logs and the Model artifact. A SIGTERM is
passed on to the trial's process, which saves the cluster's preemption backup and exits with 143.

`python -m ...worker` logs to stderr prefixed with `convpipe:`; a failure the user can act on
prints `convpipe-error: <message>` and exits with 3, a preemption (SIGTERM: a coordinated backup
was saved) with 143.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
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
    text = " ".join(str(exc).split())
    detail = text[text.find("aborted by:") + len("aborted by:"):].strip() if "aborted by:" in text else text
    detail = detail.split(" The tasks have crashed.")[0].split(" [[")[0]
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


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when its parent dies (Linux PR_SET_PDEATHSIG), so a
    killed `convpipe run` or `convpipe train-worker` leaves no training process behind."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def run_worker_process(spec, spec_path: Path, log: logging.Logger, env: Optional[dict] = None,
                       started=None) -> tuple[int, Optional[str], list[str]]:
    """Train `spec` in a fresh `python -m components.training.worker` process whose log lines go to
    `log`: (exit status, its message for the user or None, its last other output lines).

    `started(process)` is called once it runs. Whatever interrupts the wait here (SIGTERM turned
    into an exception, Ctrl-C) is passed on to the process with `stop`, then raised again.
    """
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(spec.to_json())
    process = subprocess.Popen([sys.executable, "-m", "components.training.worker", str(spec_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    error, tail = None, []

    def forward(line: str) -> None:
        nonlocal error, tail
        line = line.rstrip("\n")
        if line.startswith(ERROR_PREFIX):
            error = line[len(ERROR_PREFIX):]
        elif line.startswith(LOG_PREFIX):
            level, _, message = line[len(LOG_PREFIX):].partition(" ")
            log.log(getattr(logging, level, logging.INFO), "%s", message)
        else:
            tail = (tail + [line])[-30:]

    try:
        if started is not None:
            started(process)
        for line in process.stdout:
            forward(line)
        code = process.wait()
    except BaseException:
        stop(process, on_line=forward)
        raise
    return code, error, tail


def child_environment() -> dict:
    """This environment, with the project importable from any working directory."""
    project = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=project + (os.pathsep + path if path else ""),
                TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
