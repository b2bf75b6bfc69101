"""Beam's DaskRunner against a dask.distributed cluster: a running scheduler, or a LocalCluster.

`beam.runner: "dask"` (or "DaskRunner") runs a data stage's Beam pipeline on Beam 2.77's own
DaskRunner, which turns the pipeline into dask.bag operations and submits them to a
`distributed.Client`. The cluster is either
- a scheduler that is already running: `beam.dask.address` (or `--dask_client_address` in
  `beam.args`), whose workers must be able to import convpipe, the same version; or
- a `distributed.LocalCluster` of `beam.dask.workers` worker processes on this machine, started
  for the pipeline and closed after it, its scheduler on 127.0.0.1 only. Its workers get the
  nanny's usual environment (one BLAS/OpenMP thread each) less `MALLOC_TRIM_THRESHOLD_=65536`:
  with it, the per-record PIL and protobuf work ran about 1.5x slower in a worker than in this
  process (measured here on a loaded 2-core machine, so roughly).
The runner's own default (a LocalCluster sized to every core, started inside the runner and
never closed) is never used.

The DaskRunner translates only part of the Beam model; the stages are built from the part it
translates (pipeline/beam_portable.py says which, and why).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Optional

from apache_beam.options.pipeline_options import PipelineOptions

DASK_RUNNER = "DaskRunner"
RUNNER_ALIASES = {"dask": DASK_RUNNER, "daskrunner": DASK_RUNNER}


class LocalClusterOptions(PipelineOptions):
    """The LocalCluster convpipe starts when no scheduler address is given (from `beam.dask`)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--dask_local_workers", type=int, default=2,
                            help="worker processes of the LocalCluster started when no --dask_client_address is given")
        parser.add_argument("--dask_local_threads_per_worker", type=int, default=1,
                            help="threads in each LocalCluster worker process")


def canonical_runner(name: str) -> str:
    """`dask` and other spellings of the Dask runner -> "DaskRunner"; any other name unchanged."""
    return RUNNER_ALIASES.get(name.lower(), name)


def option_args(section, parallelism: Optional[int]) -> list[str]:
    """The Dask flags from `beam.dask` (before `beam.args`, which may override them)."""
    from apache_beam.runners.dask import dask_runner  # noqa: F401  (defines DaskOptions: Beam parses its flags)

    dask = section.dask
    args = [f"--dask_local_workers={dask.workers}", f"--dask_local_threads_per_worker={dask.threads_per_worker}"]
    if dask.address:
        args.append(f"--dask_client_address={dask.address}")
    partitions = dask.partitions or parallelism
    if partitions:
        args.append(f"--dask_npartitions={partitions}")
    return args


def make_runner():
    """Beam's DaskRunner; says what to install when dask or distributed is missing."""
    try:
        import dask.bag  # noqa: F401  (the runner's translation needs it)
        import distributed  # noqa: F401
        from apache_beam.runners.dask.dask_runner import DaskRunner
    except ImportError as exc:
        raise ImportError(f"beam.runner=dask needs the dask and distributed packages ({exc}); "
                          f"install convpipe again with `pip install -e .`, which pins them") from exc
    return DaskRunner()


def describe(options: PipelineOptions) -> str:
    from apache_beam.runners.dask.dask_runner import DaskOptions

    address = options.view_as(DaskOptions).address
    if address:
        return f"scheduler {address}"
    local = options.view_as(LocalClusterOptions)
    return f"LocalCluster x{local.dask_local_workers} workers"


@contextlib.contextmanager
def _quiet_worker_shutdown() -> Iterator[None]:
    """A worker process that holds TensorFlow's threads outlives the nanny's 4 s close and is killed,
    which the nanny logs as a warning on every run; it is the normal end of a LocalCluster here."""
    nanny = logging.getLogger("distributed.nanny")
    level = nanny.level
    nanny.setLevel(logging.ERROR)
    try:
        yield
    finally:
        nanny.setLevel(level)


@contextlib.contextmanager
def cluster(options: PipelineOptions, log: Optional[logging.Logger] = None) -> Iterator[str]:
    """The scheduler address the pipeline's client connects to; a LocalCluster lives for the block."""
    from apache_beam.runners.dask.dask_runner import DaskOptions

    dask_options = options.view_as(DaskOptions)
    if dask_options.address or dask_options.scheduler_file:
        yield dask_options.address or dask_options.scheduler_file
        return
    import dask
    import distributed

    local = options.view_as(LocalClusterOptions)
    if local.dask_local_workers < 1 or local.dask_local_threads_per_worker < 1:
        raise ValueError(f"beam.dask: expected workers >= 1 and threads_per_worker >= 1, got "
                         f"{local.dask_local_workers} and {local.dask_local_threads_per_worker}")
    environ = {key: value for key, value in dask.config.get("distributed.nanny.pre-spawn-environ").items()
               if key != "MALLOC_TRIM_THRESHOLD_"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), \
            _quiet_worker_shutdown(), \
            distributed.LocalCluster(n_workers=local.dask_local_workers,
                                     threads_per_worker=local.dask_local_threads_per_worker, processes=True,
                                     host="127.0.0.1", dashboard_address=None,
                                     silence_logs=logging.ERROR) as local_cluster:
        if log is not None:
            log.info("dask: LocalCluster of %d worker processes at %s", local.dask_local_workers,
                     local_cluster.scheduler_address)
        dask_options.address = local_cluster.scheduler_address
        try:
            yield local_cluster.scheduler_address
        finally:
            dask_options.address = None


def finish(result) -> None:
    """Wait for a DaskRunner result, then close its client (the runner never does)."""
    try:
        result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)
        if client is not None:
            client.close()
