"""Task adapters: what train, evaluate, export and predict do differently per `schema["task"]`.

The stages call `get_task(schema["task"])` and talk to the returned `TaskAdapter`
(components/tasks/base.py) only, so a new task is one module here and one line in TASK_MODULES.
"""
from __future__ import annotations

import importlib

from components.tasks.base import TaskAdapter

TASK_MODULES = {
    "classification": "components.tasks.classification",
    "video": "components.tasks.video",
    "segmentation": "components.tasks.segmentation",
    "detection": "components.tasks.detection",
    "multitask": "components.tasks.multitask",
}


def get_task(name: str) -> TaskAdapter:
    """The adapter for task `name` (each module defines `TASK`, a TaskAdapter instance)."""
    if name not in TASK_MODULES:
        raise ValueError(f"task: expected one of {sorted(TASK_MODULES)}, got {name!r}")
    try:
        module = importlib.import_module(TASK_MODULES[name])
    except ModuleNotFoundError as exc:
        if exc.name != TASK_MODULES[name]:
            raise
        raise NotImplementedError(f"task {name!r}: the pipeline stages do not support this task yet "
                                  f"({TASK_MODULES[name].replace('.', '/')}.py is not written)") from None
    return module.TASK
