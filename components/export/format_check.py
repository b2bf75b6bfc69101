"""Run a TFLite or ONNX file in a fresh Python process, for export's check of each format.

A fresh process proves the file stands alone: nothing of the exporting process (the Keras model,
TensorFlow's traced functions) is in reach, only the runtime a user would load it with (LiteRT's
interpreter, onnxruntime). Inputs and outputs travel as .npz (no pickle); string outputs come back
as unicode arrays.

    python -m components.export.format_check tflite model.tflite serving_images in.npz out.npz
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

import numpy as np

KINDS = ("tflite", "onnx")


def _as_text(value: np.ndarray) -> np.ndarray:
    value = np.asarray(value)
    if value.dtype == object or value.dtype.kind == "S":
        return np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else str(b), otypes=[str])(value) \
            if value.size else value.astype(str)
    return value


def run_in_fresh_process(kind: str, path: str | Path, signature: str, inputs: Mapping[str, np.ndarray],
                         scratch: str | Path, timeout: float = 600) -> dict:
    """{output name: numpy} of the file at `path` on `inputs`, computed by a new process."""
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    request, answer = scratch / f"{kind}_in.npz", scratch / f"{kind}_out.npz"
    np.savez(request, **{name: np.asarray(value) for name, value in inputs.items()})
    project = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=project + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
               TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    process = subprocess.run([sys.executable, "-m", "components.export.format_check", kind, str(path), signature,
                              str(request), str(answer)], capture_output=True, text=True, env=env, timeout=timeout)
    if process.returncode != 0:
        tail = "\n".join((process.stdout + process.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{path}: running the {kind} file in a fresh process failed (exit {process.returncode}):\n{tail}")
    with np.load(answer, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def main(argv) -> int:
    kind, path, signature, request, answer = argv
    if kind not in KINDS:
        raise SystemExit(f"format_check: kind expected one of {KINDS}, got {kind!r}")
    with np.load(request, allow_pickle=False) as data:
        inputs = {key: data[key] for key in data.files}
    if kind == "tflite":
        from components.export import tflite
        outputs = tflite.run(path, signature, inputs)
    else:
        from components.export import onnx
        outputs = onnx.run(path, inputs)
    np.savez(answer, **{key: _as_text(value) for key, value in outputs.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
