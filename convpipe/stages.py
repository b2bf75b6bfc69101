"""The pipeline: the seven stages in the order they run.

The framework (pipeline/runner.py) runs whatever list it is given; this module is the one place
that names the stages, so pipeline/ never imports components/. Each stage package's stage.py
defines `STAGE = pipeline.stage.Stage(...)`.
"""
from __future__ import annotations

import importlib

STAGE_ORDER = ("ingest", "validate", "augment", "train", "evaluate", "compare", "export")


def load_stages() -> list:
    """The `STAGE` of every stage, in pipeline order."""
    stages = []
    for name in STAGE_ORDER:
        module_name = f"components.{name}.stage"
        stage = getattr(importlib.import_module(module_name), "STAGE", None)
        if stage is None:
            raise ImportError(f"{module_name}: expected a module-level STAGE = Stage(...), found none")
        if stage.name != name:
            raise ImportError(f"{module_name}: STAGE.name is {stage.name!r}, expected {name!r}")
        stages.append(stage)
    return stages
