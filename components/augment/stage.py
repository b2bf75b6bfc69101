"""augment: a Beam pipeline that writes `augment.copies` augmented copies of every train example.

The stage as the runner sees it (its parameters and checks); the Beam job that writes the copies
is components/augment/beam_job.py, and the pixel work components/augment/augmentations.py. Beam
is imported only when the stage executes: a rerun whose stages are all cached never needs it,
and it is most of such a rerun's start-up.
"""
from __future__ import annotations

from pipeline.config import ConfigError, PipelineConfig
from pipeline.stage import ExecutionContext, Stage


def run_augment(ctx: ExecutionContext) -> None:
    from components.augment import beam_job  # Beam is imported here, where it runs (see the docstring)

    beam_job.run_augment(ctx)


def check(config: PipelineConfig) -> None:
    crop = config.augment.random_resized_crop
    low, high = crop.scale
    if not 0.0 < low <= high:
        raise ConfigError(f"augment.random_resized_crop.scale: expected 0 < min <= max, got [{low}, {high}]")
    low, high = crop.ratio
    if not 0.0 < low <= high:
        raise ConfigError(f"augment.random_resized_crop.ratio: expected 0 < min <= max, got [{low}, {high}]")


STAGE = Stage(
    name="augment",
    outputs={"examples": "Examples"},
    executor=run_augment,
    parameters=lambda config: config.augment.model_dump(mode="json"),
    inputs={"examples": "ingest.examples"},
    check=check,
    enabled=lambda config: config.augment.enabled and config.augment.copies > 0,
    module=__name__,
    writes_urls=True,  # its Beam workers write a remote root themselves (beam_job.py)
)
