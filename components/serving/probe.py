"""Run signatures of a SavedModel in a fresh Python process, for export's check.

A fresh process proves the SavedModel stands alone: nothing from the exporting process (registered
Keras objects, live variables, traced functions) can leak into the check. Inputs and outputs
travel as one .npz each way (no pickle); string tensors as concatenated bytes plus lengths.

    outputs = run_in_fresh_process(path, {"serving_default": {"image_bytes": array}}, scratch)
    outputs["serving_default"]["probabilities"]   # numpy; string outputs come back as str arrays
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from components.serving.signature import BYTES_INPUT, BYTES_SIGNATURE, IMAGES_INPUT, IMAGES_SIGNATURE

SEPARATOR = "::"
"""Between signature and input/output name in the .npz keys."""
PART = "@"
"""Between a string tensor's key and its part (flat, lengths, shape)."""


def _is_bytes(array: np.ndarray) -> bool:
    return array.dtype == object or array.dtype.kind == "S"


def pack(values: Mapping[str, np.ndarray]) -> dict:
    """Arrays for np.savez: byte strings as `<key>@flat` (uint8), `<key>@lengths`, `<key>@shape`."""
    packed = {}
    for key, value in values.items():
        value = np.asarray(value)
        if _is_bytes(value):
            items = [bytes(v) for v in value.reshape(-1)]
            packed[key + PART + "flat"] = np.frombuffer(b"".join(items), np.uint8)
            packed[key + PART + "lengths"] = np.array([len(v) for v in items], np.int64)
            packed[key + PART + "shape"] = np.array(value.shape, np.int64)
        else:
            packed[key] = value
    return packed


def unpack(data: Mapping[str, np.ndarray]) -> dict:
    """The inverse of `pack`; byte strings come back as an object array of bytes."""
    values = {}
    for key in data:
        if key.endswith(PART + "flat"):
            name = key[:-len(PART + "flat")]
            flat, lengths = data[key].tobytes(), data[name + PART + "lengths"]
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            items = np.empty(len(lengths), dtype=object)
            items[:] = [flat[offsets[i]:offsets[i + 1]] for i in range(len(lengths))]
            values[name] = items.reshape(tuple(data[name + PART + "shape"]))
        elif PART not in key:
            values[key] = data[key]
    return values


def run_in_fresh_process(saved_model: str | Path, calls: Mapping[str, Mapping[str, np.ndarray]],
                         scratch: str | Path, timeout: float = 600) -> dict:
    """{signature: {input name: batch}} -> {signature: {output name: numpy}}, computed by a new process."""
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    request, answer = scratch / "probe_in.npz", scratch / "probe_out.npz"
    np.savez(request, **pack({f"{signature}{SEPARATOR}{name}": value
                              for signature, inputs in calls.items() for name, value in inputs.items()}))
    project = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=project + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
               TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    process = subprocess.run([sys.executable, "-m", "components.serving.probe", str(saved_model), str(request), str(answer)],
                             capture_output=True, text=True, env=env, timeout=timeout)
    if process.returncode != 0:
        tail = "\n".join((process.stdout + process.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{saved_model}: loading in a fresh process failed (exit {process.returncode}):\n{tail}")
    with np.load(answer, allow_pickle=False) as data:
        flat = {key: data[key] for key in data.files}
    outputs: dict[str, dict] = {}
    for key, value in flat.items():
        signature, name = key.split(SEPARATOR, 1)
        outputs.setdefault(signature, {})[name] = value
    return outputs


def probe_in_fresh_process(saved_model: str | Path, encoded: Sequence[bytes], images: np.ndarray, scratch: str | Path,
                           timeout: float = 600) -> dict:
    """The classifier's two signatures run by a new Python process (components/serving/probe.py):
    bytes_probabilities, bytes_class_id, bytes_class_name, images_probabilities, images_class_id."""
    values = np.empty(len(encoded), dtype=object)
    values[:] = [bytes(e) for e in encoded]
    outputs = run_in_fresh_process(saved_model, {BYTES_SIGNATURE: {BYTES_INPUT: values},
                                                 IMAGES_SIGNATURE: {IMAGES_INPUT: np.asarray(images, np.float32)}},
                                   scratch, timeout)
    by_bytes, by_images = outputs[BYTES_SIGNATURE], outputs[IMAGES_SIGNATURE]
    return {"bytes_probabilities": by_bytes["probabilities"], "bytes_class_id": by_bytes["class_id"],
            "bytes_class_name": by_bytes["class_name"], "images_probabilities": by_images["probabilities"],
            "images_class_id": by_images["class_id"]}


def _split_keys(values: Mapping[str, np.ndarray]) -> dict:
    calls: dict[str, dict] = {}
    for key, value in values.items():
        signature, name = key.split(SEPARATOR, 1)
        calls.setdefault(signature, {})[name] = value
    return calls


def _as_text(value: np.ndarray) -> np.ndarray:
    if value.dtype == object or value.dtype.kind == "S":
        return np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else str(b), otypes=[str])(value) \
            if value.size else value.astype(str)
    return value


def main(argv: Sequence[str]) -> int:
    from components.serving.served_model import ServedModel  # TensorFlow only in the probe's own process

    saved_model, request, answer = argv
    with np.load(request, allow_pickle=False) as data:
        calls = _split_keys(unpack({key: data[key] for key in data.files}))
    served = ServedModel(saved_model, signatures=tuple(calls))
    results = {}
    for signature, inputs in calls.items():
        for name, value in served.run(signature, **inputs).items():
            results[f"{signature}{SEPARATOR}{name}"] = _as_text(value)
    np.savez(answer, **results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
