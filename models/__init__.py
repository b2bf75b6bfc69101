"""Keras 3 models, layers, losses and box utilities; nothing here knows about the pipeline.

One package per model family over what they all share:
    classification/  segmentation/  detection/  multitask/  video/
    layers/ (one custom layer a file), losses.py, optimizers.py, arithmetic.py (output sizes and
    receptive fields by the formula), describe.py (a model's layer table), registry.py
`build_model(name, **params)` is the one way in: every family registers its builders by name.

    from models import build_model
    model = build_model("cnn", input_shape=(32, 32, 3), num_classes=3, blocks=[...])

Models return logits (float32); callers apply softmax/sigmoid where they need probabilities.
"""
from __future__ import annotations

import importlib

from models.registry import LOSSES, MODELS, OPTIMIZERS

# Modules that register builders, losses and optimizers when imported; a module not written yet is skipped.
_REGISTERING_MODULES = ("classification.cnn", "segmentation.fcn", "detection.detector", "multitask.network",
                        "video.fusion", "losses", "segmentation.losses", "detection.losses", "optimizers")


def load_registrations() -> None:
    """Import every registering module, so registered names and Keras serialisables (for
    `keras.saving.load_model(..., safe_mode=True)`) are known."""
    for name in _REGISTERING_MODULES:
        try:
            importlib.import_module(f"models.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"models.{name}":
                raise


_load_registrations = load_registrations  # the old private name


def build_model(name: str, input_shape, num_classes: int, **params):
    """Builds a registered model by name: `build_model("cnn", (32, 32, 3), 3, blocks=[...])`."""
    load_registrations()
    return MODELS.get(name)(input_shape=tuple(input_shape), num_classes=num_classes, **params)


def get_loss(name: str, **params):
    load_registrations()
    return LOSSES.get(name)(**params)


def get_optimizer(name: str, **params):
    load_registrations()
    return OPTIMIZERS.get(name)(**params)
