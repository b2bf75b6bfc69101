"""Run signatures of a SavedModel in a fresh Python process, for export's check.

A fresh process proves the SavedModel stands alone: nothing from the exporting process (registered
Keras objects, live variables, traced functions) can leak into the check. Inputs and outputs
travel as one .npz each way (no pickle); string tensors as concatenated bytes plus lengths.

    outputs = run_in_fresh_process(path, {"serving_default": {"image_bytes": array}}, scratch)
    outputs["serving_default"]["probabilities"]   # numpy; string outputs come back as str arrays

Starting that process is mostly importing TensorFlow (3-4 s on 2 cores, half of the export stage).
`started_ahead()` starts it before the SavedModel is written, so the import runs while the
exporter saves; the process still sees nothing of the exporter but the paths it is sent.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

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


def _probe_env() -> dict:
    project = str(Path(__file__).resolve().parents[2])
    return dict(os.environ, PYTHONPATH=project + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
                TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))


_ahead: list[subprocess.Popen] = []
"""The process `started_ahead` holds for the next check (at most one)."""


@contextlib.contextmanager
def started_ahead() -> Iterator[None]:
    """Start the probe process now; the first `run_in_fresh_process` inside the block sends it its
    paths instead of starting one. One left unused (the export failed before its check) is ended."""
    process = subprocess.Popen([sys.executable, "-m", "components.serving.probe", "--from-stdin"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=_probe_env())
    _ahead.append(process)
    try:
        yield
    finally:
        if process in _ahead:
            _ahead.remove(process)
            with contextlib.suppress(OSError):
                process.communicate(input="", timeout=30)  # no paths: it exits at once
        if process.poll() is None:
            process.kill()
            process.wait()


def _taken_ahead() -> Optional[subprocess.Popen]:
    while _ahead:
        process = _ahead.pop()
        if process.poll() is None:
            return process
    return None


def run_in_fresh_process(saved_model: str | Path, calls: Mapping[str, Mapping[str, np.ndarray]],
                         scratch: str | Path, timeout: float = 600) -> dict:
    """{signature: {input name: batch}} -> {signature: {output name: numpy}}, computed by a new process
    (the one `started_ahead` holds, when there is one)."""
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    request, answer = scratch / "probe_in.npz", scratch / "probe_out.npz"
    np.savez(request, **pack({f"{signature}{SEPARATOR}{name}": value
                              for signature, inputs in calls.items() for name, value in inputs.items()}))
    paths = [str(saved_model), str(request), str(answer)]
    ahead = _taken_ahead()
    if ahead is not None:
        try:
            stdout, stderr = ahead.communicate(input=json.dumps(paths) + "\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            ahead.kill()
            stdout, stderr = ahead.communicate()
            raise RuntimeError(f"{saved_model}: the fresh process did not answer within {timeout:.0f} s") from None
        returncode = ahead.returncode
    else:
        process = subprocess.run([sys.executable, "-m", "components.serving.probe", *paths],
                                 capture_output=True, text=True, env=_probe_env(), timeout=timeout)
        stdout, stderr, returncode = process.stdout, process.stderr, process.returncode
    if returncode != 0:
        tail = "\n".join((stdout + stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{saved_model}: loading in a fresh process failed (exit {returncode}):\n{tail}")
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


def main_from_stdin() -> int:
    """Import TensorFlow first, then wait for one JSON line of paths (none: exit without work)."""
    from components.serving.served_model import ServedModel  # noqa: F401  (the import is the point)

    line = sys.stdin.readline()
    return main(json.loads(line)) if line.strip() else 0


if __name__ == "__main__":
    sys.exit(main_from_stdin() if sys.argv[1:] == ["--from-stdin"] else main(sys.argv[1:]))
