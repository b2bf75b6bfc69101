"""A served version loaded in this process, as TF Serving would run it.

Used by evaluate (the served version's metrics for the blessing), predict, and the fresh-process
probe (components/serving/probe.py), which runs it in a new interpreter.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from components.serving.layout import read_info
from components.serving.signature import BYTES_INPUT, BYTES_SIGNATURE, IMAGES_INPUT, IMAGES_SIGNATURE


class ServedModel:
    """A loaded version: `run(signature, **inputs)` on numpy batches; `classify_bytes` / `classify_images`
    for the classifier's two signatures. `signatures` names those the version must have."""

    def __init__(self, path: str | Path, signatures: Sequence[str] = (BYTES_SIGNATURE, IMAGES_SIGNATURE)):
        import tensorflow as tf

        self.path = Path(path)
        self.loaded = tf.saved_model.load(str(self.path))
        missing = [name for name in signatures if name not in self.loaded.signatures]
        if missing:
            raise ValueError(f"{self.path}: expected signatures {list(signatures)}, "
                             f"missing {missing} (found {sorted(self.loaded.signatures)})")
        self.info = read_info(self.path)

    def run(self, signature: str, batch_size: int = 64, **inputs) -> dict:
        """Every output of `signature` on `inputs` (numpy arrays with one batch axis), in chunks."""
        import tensorflow as tf

        function = self.loaded.signatures[signature]
        specs = function.structured_input_signature[1]
        arrays = {name: np.asarray(value) for name, value in inputs.items()}
        count = len(next(iter(arrays.values()))) if arrays else 0
        parts: dict[str, list] = {}
        for start in range(0, count, batch_size):
            chunk = {name: tf.constant(value[start:start + batch_size].tolist() if specs[name].dtype == tf.string
                                       else value[start:start + batch_size], dtype=specs[name].dtype)
                     for name, value in arrays.items()}
            for key, value in function(**chunk).items():
                parts.setdefault(key, []).append(value.numpy())
        return {key: np.concatenate(chunks) for key, chunks in parts.items()}

    def classify_bytes(self, encoded: Sequence[bytes], batch_size: int = 64) -> dict:
        values = np.empty(len(encoded), dtype=object)
        values[:] = [bytes(e) for e in encoded]
        return self.run(BYTES_SIGNATURE, batch_size, **{BYTES_INPUT: values})

    def classify_images(self, images: np.ndarray, batch_size: int = 64) -> dict:
        return self.run(IMAGES_SIGNATURE, batch_size, **{IMAGES_INPUT: np.asarray(images, np.float32)})
