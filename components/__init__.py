"""The pipeline's stages, one module each, in the order they run.

Each module defines `STAGE = pipeline.stage.Stage(...)`. The runner takes the list from
`load_stages()`; a stage module that does not exist in this checkout is left out, so a partial
pipeline runs as far as it goes.
"""
from __future__ import annotations

import importlib

STAGE_ORDER = ("ingest", "validate", "augment", "train", "evaluate", "compare", "export")


def load_stages() -> list:
    """The `STAGE` of every stage module present, in pipeline order."""
    stages = []
    for name in STAGE_ORDER:
        module_name = f"{__name__}.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        stage = getattr(module, "STAGE", None)
        if stage is None:
            raise ImportError(f"{module_name}: expected a module-level STAGE = Stage(...), found none")
        if stage.name != name:
            raise ImportError(f"{module_name}: STAGE.name is {stage.name!r}, expected {name!r}")
        stages.append(stage)
    return stages
