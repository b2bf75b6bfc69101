"""The "detector" builder: one registered name, three ways to find objects, one interface.

    build_model("detector", (64, 64, 3), num_classes=3, stage="one", **params)

- `stage: one` (models/detection/one_stage.py): backbone + feature pyramid + shared heads per anchor,
  focal / automated focal and smooth L1 / GIoU losses.
- `stage: two` (models/detection/two_stage.py): region proposals, RoIAlign, a second-stage head.
- `stage: sliding_window` (models/detection/sliding_window.py): a window classifier run fully
  convolutionally over an image pyramid.

Every detector is a keras.Model with
    model(images)                 raw outputs (a dict of float32 tensors; see each class)
    model.compute_loss(batch)     {"loss": scalar to differentiate, ...other terms} for a batch
                                  (images, {"boxes" [B, M, 4] rel_xyxy, "labels" [B, M] -1 padded}[, meta])
    model.detect(images, score_threshold=, iou_threshold=, max_detections=, max_per_class=)
                                  {"boxes" [B, D, 4] rel_xyxy, "scores" [B, D], "classes" [B, D] int32,
                                   "num_detections" [B] int32}, zero-padded to D = max_detections
so a training loop, evaluation and export treat the three alike. There is no `train_step`: the
training loop calls `compute_loss` inside its own GradientTape (DESIGN.md: one loop for every
distribution strategy).
"""
from __future__ import annotations

import inspect

import numpy as np

from models.detection.one_stage import OneStageDetector, decode_detections  # noqa: F401  (re-exported)
from models.registry import MODELS
from models.detection.sliding_window import SlidingWindowDetector
from models.detection.two_stage import TwoStageDetector

STAGES = {"one": OneStageDetector, "two": TwoStageDetector, "sliding_window": SlidingWindowDetector}


def _accepted(cls) -> list[str]:
    names = inspect.signature(cls.__init__).parameters
    return [n for n, p in names.items() if n not in ("self", "image_shape", "num_classes", "kwargs")
            and p.kind is not inspect.Parameter.VAR_KEYWORD]


@MODELS.register("detector")
def build_detector(input_shape, num_classes: int, *, stage: str = "one", **params):
    """A built detector (weights created) for images of `input_shape` and `num_classes` object classes."""
    if stage not in STAGES:
        raise ValueError(f"detector: invalid stage={stage!r}. Expected one of {', '.join(map(repr, STAGES))}.")
    cls = STAGES[stage]
    unknown = sorted(set(params) - set(_accepted(cls)))
    if unknown:
        raise ValueError(f"detector(stage={stage}): unknown parameter(s) {unknown}. "
                         f"Expected some of: {', '.join(_accepted(cls))}.")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or any(not isinstance(s, int) or s < 1 for s in input_shape):
        raise ValueError(f"detector: invalid input_shape={input_shape}. Expected (height, width, channels) of positive ints.")
    model = cls(input_shape, num_classes, **params)
    model(np.zeros((1, *input_shape), np.float32))  # create the weights
    return model
