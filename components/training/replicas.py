"""Whether the workers of a multi-worker run hold the same model: a digest of the trained weights.

Every worker logs it after training; the chief's Model artifact holds the same weights when the
last epoch is the best one, so an operator (or a test) can check that no worker drifted.
"""
from __future__ import annotations

import hashlib


def weights_digest(model) -> str:
    """sha256 over every weight's dtype, shape and bytes, in the model's weight order."""
    import numpy as np

    digest = hashlib.sha256()
    for weight in model.get_weights():
        array = np.ascontiguousarray(weight)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
