"""Beam options and runs for the data stages, from `config.beam`.

The same stage code runs on any Beam runner: `beam.args` carries that runner's options (for
example `--runner=FlinkRunner --flink_master=host:8081`), and flags in `beam.args` win over the
typed keys. The runner is always named. For `DirectRunner` we run Beam's FnApiRunner ourselves:
Beam 2.77's DirectRunner first tries the PrismRunner, which downloads a Go binary from GitHub
(there is no network here, and a pipeline should not fetch executables behind the user's back).
`dask` runs Beam's DaskRunner on a dask.distributed cluster (pipeline/beam_dask.py).
"""
from __future__ import annotations

import logging
import re
from typing import Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipeline import beam_dask
from pipeline.config import PipelineConfig

LOCAL_RUNNERS = ("DirectRunner", "FnApiRunner")


class BeamError(RuntimeError):
    """A Beam pipeline did not finish; the message names the pipeline, the runner and the cause."""


def option_args(config: PipelineConfig, parallelism: Optional[int] = None) -> list[str]:
    """Command-line style options: the typed keys first, then `beam.args` (which may override them).

    `parallelism`: how many pieces the stage's first Create can be cut into (its work items); the
    DaskRunner cuts it into that many partitions unless `beam.dask.partitions` says otherwise.
    """
    section = config.beam
    runner = beam_dask.canonical_runner(section.runner)
    args = [f"--runner={runner}"]
    args += [f"--direct_num_workers={section.direct_num_workers}",
             f"--direct_running_mode={section.direct_running_mode}"]
    if runner == beam_dask.DASK_RUNNER:
        args += beam_dask.option_args(section, parallelism)
    return args + list(section.args)


def pipeline_options(config: PipelineConfig, job_name: Optional[str] = None,
                     parallelism: Optional[int] = None) -> PipelineOptions:
    args = option_args(config, parallelism)
    if job_name and not any(a.startswith("--job_name") for a in args):
        args.append("--job_name=" + re.sub(r"[^a-z0-9-]", "-", job_name.lower()))
    return PipelineOptions(args)


def runner_name(options: PipelineOptions) -> str:
    return beam_dask.canonical_runner(options.view_as(StandardOptions).runner or "DirectRunner")


def _local_runner(options: PipelineOptions):
    """The FnApiRunner as DirectRunner builds it (pipeline options provisioned to its workers)."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=info)


def make_pipeline(config: PipelineConfig, job_name: Optional[str] = None,
                  parallelism: Optional[int] = None) -> beam.Pipeline:
    """A Pipeline on the configured runner (not yet run: build it, then pass it to `run`)."""
    options = pipeline_options(config, job_name, parallelism)
    name = runner_name(options)
    if name in LOCAL_RUNNERS:
        runner = _local_runner(options)
    elif name == beam_dask.DASK_RUNNER:
        runner = beam_dask.make_runner()
    else:
        runner = None
    return beam.Pipeline(runner=runner, options=options)


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    return exc


def _short_message(exc: BaseException) -> str:
    """Beam wraps a DoFn's exception in pages of worker traceback; keep the cause's type and text."""
    root = _root_cause(exc)
    lines = [line.strip() for line in str(root).strip().splitlines() if line.strip()]
    text = lines[0] if len(lines) == 1 else next(
        (line for line in reversed(lines) if re.match(r"^[A-Za-z_.]*(Error|Exception)\b.*?:", line)),
        lines[-1] if lines else "")
    text = re.sub(r"\s*\[while running '.*'\]\s*$", "", text)
    return f"{type(root).__name__}: {text}" if not text.startswith(type(root).__name__) else text


def run(pipeline: beam.Pipeline, what: str, log: Optional[logging.Logger] = None):
    """Run a built pipeline to completion; raise BeamError with the cause's last line on failure."""
    name = runner_name(pipeline.options)
    mode = pipeline.options.view_as(DirectOptions)
    dask = name == beam_dask.DASK_RUNNER
    if log is not None:
        detail = f", {mode.direct_running_mode} x{mode.direct_num_workers}" if name in LOCAL_RUNNERS else ""
        detail = f", {beam_dask.describe(pipeline.options)}" if dask else detail
        log.info("%s: running on %s%s", what, name, detail)
    try:
        if dask:
            given = beam_dask.given_address(pipeline.options)
            name = f"{beam_dask.DASK_RUNNER} ({given})" if given else name
            with beam_dask.cluster(pipeline.options, log) as address:
                name = f"{beam_dask.DASK_RUNNER} ({address})"
                result = pipeline.run()
                beam_dask.finish(result)
            state = result.state
        else:
            result = pipeline.run()
            state = result.wait_until_finish()
    except Exception as exc:
        raise BeamError(f"{what}: Beam pipeline failed on {name}: {_short_message(exc)}") from exc
    if state is not None and str(state) not in ("DONE", "PipelineState.DONE"):
        raise BeamError(f"{what}: Beam pipeline ended in state {state} on {name}")
    return result
