"""ingest: a Beam pipeline from a source to an Examples artifact.

    source items --read--> records --resize, encode, decode again, check--> (split, Example)
        -> gzip TFRecord shards per split, schema.json, stats.json, dead_letter.jsonl

The stage as the runner sees it: its parameters, its checks and the source's fingerprint (what
the cache key needs). The Beam job itself is components/ingest/beam_job.py, and the checks on one
record are components/ingest/records.py. Beam is imported only when the stage executes: it is
most of the start-up of a rerun whose stages are all cached (0.8 s of about 1.5 s here).
"""
from __future__ import annotations

import importlib

from components.sources import SOURCE_MODULES, make_reader
from pipeline.config import ConfigError, PipelineConfig
from pipeline.stage import ExecutionContext, Stage


def run_ingest(ctx: ExecutionContext) -> None:
    from components.ingest import beam_job  # Beam is imported here, where it runs (see the docstring)

    beam_job.run_ingest(ctx)


def _parameters(config: PipelineConfig) -> dict:
    return config.ingest.model_dump(mode="json")


def _check(config: PipelineConfig) -> None:
    ingest = config.ingest
    module = importlib.import_module(SOURCE_MODULES[ingest.source.name])
    tasks = getattr(module, "TASKS", None)
    if tasks is not None and ingest.task not in tasks:
        raise ConfigError(f"ingest.task: source '{ingest.source.name}' provides {list(tasks)}, got '{ingest.task}'")


def _fingerprint(config: PipelineConfig) -> str:
    return make_reader(config.ingest.source, config.ingest).fingerprint()


STAGE = Stage(
    name="ingest",
    outputs={"examples": "Examples"},
    executor=run_ingest,
    parameters=_parameters,
    check=_check,
    external_fingerprint=_fingerprint,
    module=__name__,
    writes_urls=True,  # its Beam workers write a remote root themselves (beam_job.py)
)
