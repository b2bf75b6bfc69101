"""What a stage is, as the runner sees it: declared inputs, outputs, parameters and an executor.

TFX's contracts without its boilerplate. A component module builds one `Stage` at import time;
the runner resolves its inputs from earlier stages' outputs, computes the cache key, hands the
executor an `ExecutionContext` with temporary output directories, and publishes them only when
the executor returns. Executors read `ctx.inputs` and write `ctx.outputs`; nothing else.

Trials (pipeline/sweep.py, the runner's docstring): a stage with `expand` runs once per trial, each
its own execution with the trial's config; its outputs reach later stages as `Trials`. A later
`per_trial` stage runs once per trial too; a stage that `gathers` an input gets every trial in
`ctx.trials` and may choose one (`ctx.chosen_trial`); every later stage then gets that trial's
artifact in `ctx.inputs`, as if there had been one trial all along.

Remote roots (pipeline/filesystem.py): a stage works in the root's local working copy, and the
runner uploads its outputs when it returns; but a stage declared `writes_urls` (ingest, augment:
Beam jobs whose workers may run on other machines) is given the artifacts' URLs instead
(`ctx.input_urls`, `ctx.output_urls`) and reads and writes them itself through Beam's
filesystems; its executor asks `ctx.input_location(name)` / `ctx.output_location(name)`, which
are the local paths on a local root.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

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


@dataclass(frozen=True)
class Trials:
    """One output of a stage that ran once per trial: trial name -> artifact, in trial order."""
    origin: str
    """The stage whose `expand` made the trials; later per-trial stages keep the same names."""
    artifacts: Mapping[str, Artifact]


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
    trial: Optional[str] = None
    """The trial this execution runs (a stage with `expand`, or a `per_trial` stage); else None."""
    trials: dict[str, dict[str, Artifact]] = field(default_factory=dict)
    """For each input the stage `gathers`: trial name -> artifact, in trial order."""
    chosen_trial: Optional[str] = None
    """A gathering executor sets this to one of the trial names; later stages then get that trial."""
    input_urls: dict[str, str] = field(default_factory=dict)
    """A `writes_urls` stage on a remote root: each input artifact's URL on the root (not fetched into
    the local copy). Empty otherwise."""
    output_urls: dict[str, str] = field(default_factory=dict)
    """A `writes_urls` stage on a remote root: where to write each output, under the execution's
    prefix on the root (its local `outputs` directory stays empty). Empty otherwise."""

    def input_location(self, name: str) -> str:
        """Where to read input `name`: its URL on a remote root (`writes_urls` stages), else its local path."""
        return self.input_urls.get(name) or str(self.inputs[name].uri)

    def output_location(self, name: str) -> str:
        """Where to write output `name`: its URL on a remote root (`writes_urls` stages), else its local path."""
        return self.output_urls.get(name) or str(self.outputs[name])


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
    expand: Optional[Callable[[PipelineConfig], Sequence[tuple[str, PipelineConfig]]]] = None
    """Trials of this stage: (stable name, config) pairs; each runs as its own execution."""
    parallel: Callable[[PipelineConfig], int] = lambda config: 1
    """How many of this stage's trials may run at once; above 1 each runs in a child process."""
    per_trial: bool = False
    """Run once per trial of an input that holds trials, unless an earlier stage chose one."""
    gathers: tuple[str, ...] = ()
    """Inputs that receive every trial (`ctx.trials`) instead of one artifact."""
    writes_urls: bool = False
    """The executor reads its inputs and writes its outputs at `ctx.input_location` /
    `ctx.output_location` through Beam's filesystems, from whichever worker: on a remote root it gets
    URLs, nothing is fetched for it, and its outputs are not uploaded again (the runner downloads
    them once into the local copy to fingerprint them, then writes the marker)."""
