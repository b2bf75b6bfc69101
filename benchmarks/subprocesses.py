"""Benchmarks that need a fresh TensorFlow: a worker process per setting, answering one JSON line.

Logical CPU devices, thread pools and oneDNN are fixed when TensorFlow starts, so a setting that
changes them runs in a new process: `python -m <module> --worker '<json>'`, which prints
`RESULT <json>` as its last line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

RESULT_PREFIX = "RESULT "
PROJECT = Path(__file__).resolve().parent.parent


def run_worker(module: str, payload: dict, env: Optional[dict] = None, timeout: float = 600) -> dict:
    """Run `module`'s worker on `payload` and return the dict it printed; RuntimeError with its output if none."""
    path = os.environ.get("PYTHONPATH", "")
    environment = dict(os.environ, PYTHONPATH=str(PROJECT) + (os.pathsep + path if path else ""),
                       TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"), **(env or {}))
    process = subprocess.run([sys.executable, "-m", module, "--worker", json.dumps(payload)], cwd=PROJECT,
                             env=environment, capture_output=True, text=True, timeout=timeout)
    for line in reversed(process.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = "\n".join((process.stdout + process.stderr).strip().splitlines()[-20:])
    raise RuntimeError(f"{module} worker {payload} exited with code {process.returncode} without a result:\n{tail}")


def answer(result: dict) -> None:
    """Print a worker's result where `run_worker` looks for it."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)
