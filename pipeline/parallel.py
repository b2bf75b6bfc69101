"""Executions in child processes, several at once: how a stage's trials run in parallel.

The runner records each execution RUNNING and creates its directories; a child process
(`python -m pipeline.parallel SPEC.json`) imports the stage's module, rebuilds the
`ExecutionContext` from the spec, runs the executor and writes what the executor left in
`ctx.properties` and `ctx.chosen_trial` to a result file; the runner then publishes the outputs
and marks the execution COMPLETE, as it does for an executor run in its own process. Only the
runner writes the metadata store, so there is still one writer.

A fresh process per execution also gives each trial fresh global state (random seeds, Keras's
dtype policy, TensorFlow's devices). Children log through stderr lines prefixed `convpipe-log: `
(JSON: logger, level, message), which the runner re-emits under the same logger names, so they
reach the console and the run's log file. A child asks the kernel to kill it when the runner dies
(PR_SET_PDEATHSIG), and the runner kills its children's process groups when it is interrupted.
Each child gets `cores / width` threads for the numeric libraries (TF_NUM_INTRAOP_THREADS,
OMP_NUM_THREADS) unless the environment already sets them, so parallel trials do not fight over cores.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

LOG_PREFIX = "convpipe-log: "
SPEC_FILE = ".child-execution.json"
RESULT_FILE = ".child-result.json"
USER_ERROR_EXIT = 3
_POLL_SECONDS = 0.2
_KILL_GRACE_SECONDS = 5.0


@dataclass
class ChildResult:
    error: Optional[str] = None
    """None when the executor returned; else the message to record (a StageError's as is)."""
    details: Optional[str] = None
    """The traceback, or the child's last output lines when it died without one."""
    properties: dict = field(default_factory=dict)
    chosen_trial: Optional[str] = None


# ------------------------------------------------------------------------------------ parent side
def spec_of(stage, ctx) -> dict:
    """The JSON a child needs to rebuild `ctx` and find `stage`."""
    def artifact(a):
        return {"id": a.id, "type": a.type, "uri": str(a.uri), "fingerprint": a.fingerprint,
                "properties": dict(a.properties)}
    return {
        "module": stage.module or stage.executor.__module__, "stage": stage.name,
        "config": ctx.config.to_dict(), "params": ctx.params,
        "inputs": {name: artifact(a) for name, a in ctx.inputs.items()},
        "trials": {name: {t: artifact(a) for t, a in trials.items()} for name, trials in ctx.trials.items()},
        "outputs": {name: str(path) for name, path in ctx.outputs.items()},
        "work_dir": str(ctx.work_dir), "root": str(ctx.root), "run_id": ctx.run_id,
        "execution_id": ctx.execution_id, "trial": ctx.trial, "parent_pid": os.getpid(),
    }


def child_environment(width: int) -> dict:
    """This environment, with this interpreter's import path, and a share of the cores per child."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    threads = str(max(1, (os.cpu_count() or 1) // max(1, width)))
    for name in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        env.setdefault(name, threads)
    env.setdefault("TF_NUM_INTEROP_THREADS", "1" if width > 1 else threads)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


class _Child:
    """One running child: its process, a thread forwarding its log lines, its last other lines."""

    def __init__(self, index: int, stage, ctx, env: dict):
        self.index = index
        self.work_dir = Path(ctx.work_dir)
        self.spec_path = self.work_dir / SPEC_FILE
        self.result_path = self.work_dir / RESULT_FILE
        self.result_path.unlink(missing_ok=True)
        self.spec_path.write_text(json.dumps(spec_of(stage, ctx)))
        self.tail: deque[str] = deque(maxlen=30)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.parallel", str(self.spec_path)], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        self.reader = threading.Thread(target=self._forward, name=f"child-{self.process.pid}", daemon=True)
        self.reader.start()

    def _forward(self) -> None:
        for line in self.process.stdout:
            line = line.rstrip("\n")
            if line.startswith(LOG_PREFIX):
                try:
                    record = json.loads(line[len(LOG_PREFIX):])
                    logging.getLogger(record["name"]).log(record["level"], "%s", record["message"])
                    continue
                except (ValueError, KeyError, TypeError):
                    pass
            self.tail.append(line)

    def result(self) -> ChildResult:
        self.reader.join(timeout=10)
        code = self.process.returncode
        try:
            data = json.loads(self.result_path.read_text())
        except (FileNotFoundError, ValueError):
            data = None
        for path in (self.spec_path, self.result_path):
            path.unlink(missing_ok=True)
        if data is not None and code == 0:
            return ChildResult(None, None, data.get("properties", {}), data.get("chosen_trial"))
        if data is not None and data.get("error"):
            return ChildResult(data["error"], data.get("traceback"))
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return ChildResult(f"the child process running this execution {how}; its last output:\n"
                           + "\n".join(self.tail), "\n".join(self.tail))

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            try:
                self.process.wait(_KILL_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait()


def run_children(count: int, launch: Callable[[int], tuple], width: int,
                 on_done: Callable[[int, ChildResult], None]) -> None:
    """Run `count` executions, `width` at a time, each in a child: `launch(i)` (called just before
    its child starts) returns (stage, ctx); `on_done(i, result)` runs in this thread as each ends.
    On any exception here (SIGTERM, Ctrl-C) every child is killed before it propagates."""
    env = child_environment(width)
    queue = list(range(count))
    running: list[_Child] = []
    try:
        while queue or running:
            while queue and len(running) < width:
                index = queue.pop(0)
                stage, ctx = launch(index)
                running.append(_Child(index, stage, ctx, env))
            time.sleep(_POLL_SECONDS)
            for child in [c for c in running if c.process.poll() is not None]:
                running.remove(child)
                on_done(child.index, child.result())
    except BaseException:
        for child in running:
            child.kill()
        raise


# ------------------------------------------------------------------------------------- child side
class _LineHandler(logging.Handler):
    """Log records as `convpipe-log: {json}` lines on stderr, for the parent to re-emit."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = json.dumps({"name": record.name, "level": record.levelno, "message": record.getMessage()})
            sys.stderr.write(LOG_PREFIX + line + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when the runner dies; elsewhere, nothing to do."""
    if sys.platform.startswith("linux"):
        import ctypes
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _find_stage(module_name: str, stage_name: str):
    import importlib

    from pipeline.stage import Stage

    module = importlib.import_module(module_name)
    candidates = [getattr(module, "STAGE", None)] + list(vars(module).values())
    for candidate in candidates:
        if isinstance(candidate, Stage) and candidate.name == stage_name:
            return candidate
        if isinstance(candidate, (list, tuple)):
            for item in candidate:
                if isinstance(item, Stage) and item.name == stage_name:
                    return item
    raise LookupError(f"module {module_name} defines no stage named {stage_name!r}")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pipeline.parallel SPEC.json", file=sys.stderr)
        return 2
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text())
    _die_with_parent(spec["parent_pid"])
    result_path = spec_path.with_name(RESULT_FILE)

    handler = _LineHandler()
    root_logger = logging.getLogger()
    root_logger.addHandler(handler)
    logging.getLogger("convpipe").setLevel(logging.INFO)
    handler.addFilter(lambda r: r.name.startswith("convpipe") or r.levelno >= logging.WARNING)

    import traceback

    from pipeline.config import ConfigError, parse_config
    from pipeline.stage import Artifact, ExecutionContext, StageError

    def artifact(data):
        return Artifact(data["id"], data["type"], Path(data["uri"]), data["fingerprint"], data["properties"])

    try:
        stage = _find_stage(spec["module"], spec["stage"])
        ctx = ExecutionContext(
            config=parse_config(spec["config"], "child execution"), params=spec["params"],
            inputs={name: artifact(a) for name, a in spec["inputs"].items()},
            outputs={name: Path(path) for name, path in spec["outputs"].items()},
            work_dir=Path(spec["work_dir"]), root=Path(spec["root"]), run_id=spec["run_id"],
            execution_id=spec["execution_id"], log=logging.getLogger(f"convpipe.{spec['stage']}"),
            trial=spec["trial"],
            trials={name: {t: artifact(a) for t, a in trials.items()} for name, trials in spec["trials"].items()})
        stage.executor(ctx)
    except Exception as exc:
        error = str(exc) if isinstance(exc, (StageError, ConfigError)) else f"{type(exc).__name__}: {exc}"
        result_path.write_text(json.dumps({"error": error, "traceback": traceback.format_exc()}))
        if not isinstance(exc, (StageError, ConfigError)):
            logging.getLogger(f"convpipe.{spec['stage']}").error("%s", traceback.format_exc())
        return USER_ERROR_EXIT
    result_path.write_text(json.dumps({"properties": ctx.properties, "chosen_trial": ctx.chosen_trial}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
