"""TFLite (LiteRT) files through `tf.lite.TFLiteConverter`, and running them with the LiteRT
interpreter (`ai-edge-litert`; `tf.lite.Interpreter`, deprecated, when it is not installed).

Only TFLite builtin ops are allowed: a file that needs TF Select (Flex) ops runs neither in the
pip LiteRT interpreter nor on a phone without the Select-ops library, so `convert` refuses such a
graph with `NeedsSelectOps` naming the ops, and the caller decides what to export instead (the
detectors' `CombinedNonMaxSuppression` is such an op: components/export/formats.py).
Quantization: "float32" (none) or "dynamic_int8" (weights stored as int8, activations float:
`Optimize.DEFAULT` without a representative dataset).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np

QUANTIZATIONS = ("float32", "dynamic_int8")


class NeedsSelectOps(ValueError):
    """The graph converts only with TF Select ops; `ops` names them."""

    def __init__(self, ops: list[str]):
        self.ops = ops
        super().__init__(f"TFLite has no builtin for {', '.join(ops)} (it would need TF Select ops)")


def convert(saved_model: str | Path, signature: str, quantization: str = "float32") -> bytes:
    """The SavedModel's `signature` as a TFLite flatbuffer of builtin ops."""
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"export.tflite_quantization: expected one of {QUANTIZATIONS}, got {quantization!r}")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[signature])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        return converter.convert()
    except Exception as exc:  # ConverterError; its text lists the ops TFLite lacks
        ops = sorted(set(re.findall(r"tf\.(\w+)\(", str(exc))))
        if ops:
            raise NeedsSelectOps(ops) from None
        raise


def interpreter(path: str | Path):
    """A LiteRT interpreter on `path` (ai_edge_litert's; TensorFlow's own when that is missing)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf
        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=str(path))


def runtime_name() -> str:
    try:
        from importlib.metadata import version
        return f"ai-edge-litert {version('ai-edge-litert')}"
    except Exception:
        import tensorflow as tf
        return f"tf.lite.Interpreter (TensorFlow {tf.__version__})"


def run(path: str | Path, signature: str, inputs: Mapping[str, np.ndarray]) -> dict:
    """Every output of the file's `signature` on `inputs`, one example at a time (LiteRT
    resizes the batch axis per call; one at a time keeps memory flat on a phone-sized graph)."""
    runner = interpreter(path).get_signature_runner(signature)
    count = len(next(iter(inputs.values())))
    parts: dict[str, list] = {}
    for i in range(count):
        for key, value in runner(**{name: np.asarray(v[i:i + 1]) for name, v in inputs.items()}).items():
            parts.setdefault(key, []).append(np.asarray(value))
    return {key: np.concatenate(chunks) for key, chunks in parts.items()}
