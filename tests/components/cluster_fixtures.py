"""Two-worker training clusters on loopback ports, for the multi-worker and preemption tests.

The chief is the real runner (`convpipe run`) over two stages: a stand-in `augment` that publishes
the tiny Examples of classification_fixtures, and the real train stage; the other worker is the
real `convpipe train-worker`. Each process writes its output to a log file beside the config.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from pipeline.stage import Stage
from tests.components import classification_fixtures as fx

PROJECT = Path(__file__).resolve().parents[2]
EXAMPLES_ENV = "CONVPIPE_TEST_EXAMPLES"


def _publish_examples(ctx) -> None:
    shutil.copytree(os.environ[EXAMPLES_ENV], ctx.outputs["examples"], dirs_exist_ok=True)


EXAMPLES_STAGE = Stage(name="augment", outputs={"examples": "Examples"}, executor=_publish_examples,
                       parameters=lambda config: {"examples": os.environ[EXAMPLES_ENV]}, module=__name__)


def stages() -> list:
    from components.train.stage import STAGE

    return [EXAMPLES_STAGE, STAGE]


class FrozenCodeRunner:
    """The runner with one code version for every stage: a restarted chief must find its backups
    (same cache key) even when someone edits the checkout between the two attempts."""

    @staticmethod
    def install() -> None:
        import pipeline.runner

        class Runner(pipeline.runner.Runner):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **dict(kwargs, code_version=lambda stage: "frozen-for-the-test"))

        pipeline.runner.Runner = Runner


CHIEF_MAIN = ("import sys; from convpipe.cli import main; from tests.components.cluster_fixtures import "
              "FrozenCodeRunner, stages; FrozenCodeRunner.install(); sys.exit(main(sys.argv[1:], stages=stages()))")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Cluster:
    """A chief (`convpipe run`) and one worker (`convpipe train-worker`) on `tmp_path`."""

    def __init__(self, tmp_path: Path, counts: dict, **train):
        self.tmp = tmp_path
        self.examples = fx.write_examples(tmp_path / "examples", counts=counts)
        config = fx.tiny_config(tmp_path, **train)
        self.root = Path(config.pipeline.root)
        self.config_path = tmp_path / "pipeline_config.json"
        self.config_path.write_text(json.dumps(config.to_dict()))
        self.worker_tmp = tmp_path / "worker-tmp"
        self.worker_tmp.mkdir()
        self.logs: dict[str, Path] = {}

    def _env(self, index: int, ports: list[int]) -> dict:
        tf_config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
        return dict(os.environ, PYTHONPATH=str(PROJECT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                    TF_CONFIG=json.dumps(tf_config), **{EXAMPLES_ENV: str(self.examples)})

    def start(self, attempt: int) -> tuple[subprocess.Popen, subprocess.Popen]:
        """Start the chief and the worker on fresh ports; logs `chief-<attempt>` and `worker-<attempt>`."""
        ports = free_ports(2)
        common = ["--config", str(self.config_path), "--root", str(self.root)]
        chief = self._spawn(f"chief-{attempt}", [sys.executable, "-c", CHIEF_MAIN, "run", *common],
                            self._env(0, ports))
        worker_env = dict(self._env(1, ports), TMPDIR=str(self.worker_tmp))
        worker = self._spawn(f"worker-{attempt}", [sys.executable, "-m", "convpipe.cli", "train-worker", *common,
                                                   "--timeout", "120"], worker_env)
        return chief, worker

    def _spawn(self, name: str, command: list[str], env: dict) -> subprocess.Popen:
        self.logs[name] = self.tmp / f"{name}.log"
        with open(self.logs[name], "w") as out:
            return subprocess.Popen(command, cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def wait_for(self, name: str, pattern: str, process: subprocess.Popen, timeout: float = 180) -> re.Match:
        """Block until `pattern` appears in a log (fails when the process exits or time runs out first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log(name))
            if match:
                return match
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode} before {pattern!r}:\n"
                                     + self.log(name)[-3000:])
            time.sleep(0.1)
        raise AssertionError(f"{name}: no {pattern!r} within {timeout} s:\n" + self.log(name)[-3000:])


def finish(*processes: subprocess.Popen, timeout: float = 240) -> list[int]:
    """Exit codes of the processes (each killed if it outlives `timeout`)."""
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            process.kill()
            codes.append(process.wait())
    return codes
