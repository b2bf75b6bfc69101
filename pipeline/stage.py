"""What a stage is, as the runner sees it: declared inputs, outputs, parameters and an executor.

TFX's contracts without its boilerplate. A component module builds one `Stage` at import time;
the runner resolves its inputs from earlier stages' outputs, computes the cache key, hands the
executor an `ExecutionContext` with temporary output directories, and publishes them only when
the executor returns. Executors read `ctx.inputs` and write `ctx.outputs`; nothing else.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from pipeline.config import PipelineConfig


class StageError(RuntimeError):
    """A stage failed for a reason the user can act on; the message is shown as is."""


@dataclass(frozen=True)
class Artifact:
    """A directory produced by one execution and recorded in the metadata store."""
    id: int
    type: str
    uri: Path
    fingerprint: str
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ExecutionContext:
    config: PipelineConfig
    params: dict
    inputs: dict[str, Artifact]
    outputs: dict[str, Path]
    work_dir: Path
    """Persists across attempts with the same cache key (backups live here); removed on success."""
    root: Path
    run_id: int
    execution_id: int
    log: logging.Logger
    properties: dict[str, dict] = field(default_factory=dict)
    """Executors may put JSON-able properties per output name here; the runner records them."""


@dataclass(frozen=True)
class Stage:
    name: str
    outputs: Mapping[str, str]
    """Output name -> artifact type (e.g. {"examples": "Examples"})."""
    executor: Callable[[ExecutionContext], None]
    parameters: Callable[[PipelineConfig], dict]
    """The JSON-able parameters that define this execution (they enter the cache key)."""
    inputs: Mapping[str, str] = field(default_factory=dict)
    """Input name -> "stage.output" of an earlier stage."""
    check: Optional[Callable[[PipelineConfig], None]] = None
    """Raises pipeline.config.ConfigError for a config this stage cannot run; called before any stage runs."""
    external_fingerprint: Optional[Callable[[PipelineConfig], str]] = None
    """Fingerprint of data outside the pipeline root (a source folder, the served model)."""
    enabled: Callable[[PipelineConfig], bool] = lambda config: True
    """A disabled stage passes its single input through as its output (e.g. augment off)."""
    module: str = ""
    """The module that defines the executor; its transitive project imports form the code version."""
