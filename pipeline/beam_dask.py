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


class ClusterOptions(PipelineOptions):
    """convpipe's own Dask flags (from `beam.dask`): the LocalCluster it starts when no scheduler
    address is given, and the size of the stage's first Create, which caps the partitions."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--dask_local_workers", type=int, default=2,
                            help="worker processes of the LocalCluster started when no --dask_client_address is given")
        parser.add_argument("--dask_local_threads_per_worker", type=int, default=1,
                            help="threads in each LocalCluster worker process")
        parser.add_argument("--dask_work_items", type=int, default=None,
                            help="how many items the stage's first Create holds (caps the default partitions)")


PARTITIONS_PER_THREAD = 2
"""Default dask.bag partitions per worker thread of the cluster. Each GroupByKey is a dask.bag
task shuffle whose cost grows with partitions squared: a 3,000-image ingest on one worker ran
2.4x faster in 4 partitions than in 47, one per work item (on this loaded 2-core machine)."""


def default_partitions(threads: int, work_items: Optional[int]) -> int:
    """PARTITIONS_PER_THREAD per cluster thread, never more than the Create has items."""
    partitions = max(1, PARTITIONS_PER_THREAD * threads)
    return min(partitions, work_items) if work_items else partitions


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
    if dask.partitions:
        args.append(f"--dask_npartitions={dask.partitions}")
    if parallelism:
        args.append(f"--dask_work_items={parallelism}")
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


def given_address(options: PipelineOptions) -> Optional[str]:
    """The scheduler address (or scheduler file) the options name; None: a LocalCluster will be started."""
    from apache_beam.runners.dask.dask_runner import DaskOptions

    dask_options = options.view_as(DaskOptions)
    return dask_options.address or dask_options.scheduler_file


def describe(options: PipelineOptions) -> str:
    from apache_beam.runners.dask.dask_runner import DaskOptions

    address = options.view_as(DaskOptions).address
    if address:
        return f"scheduler {address}"
    local = options.view_as(ClusterOptions)
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
    """The scheduler address the pipeline's client connects to; a LocalCluster lives for the block.

    Unless the options name a partitioning, Creates are cut into `default_partitions` of the
    cluster's worker threads (a running scheduler is asked how many it has).
    """
    from apache_beam.runners.dask.dask_runner import DaskOptions

    dask_options = options.view_as(DaskOptions)
    settings = options.view_as(ClusterOptions)
    chosen = dask_options.npartitions is not None or dask_options.partition_size is not None
    address = given_address(options)
    if address:
        if not chosen:
            dask_options.npartitions = default_partitions(_scheduler_threads(dask_options), settings.dask_work_items)
        try:
            yield address
        finally:
            if not chosen:
                dask_options.npartitions = None
        return
    import dask
    import distributed

    if settings.dask_local_workers < 1 or settings.dask_local_threads_per_worker < 1:
        raise ValueError(f"beam.dask: expected workers >= 1 and threads_per_worker >= 1, got "
                         f"{settings.dask_local_workers} and {settings.dask_local_threads_per_worker}")
    environ = {key: value for key, value in dask.config.get("distributed.nanny.pre-spawn-environ").items()
               if key != "MALLOC_TRIM_THRESHOLD_"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), \
            _quiet_worker_shutdown(), \
            distributed.LocalCluster(n_workers=settings.dask_local_workers,
                                     threads_per_worker=settings.dask_local_threads_per_worker, processes=True,
                                     host="127.0.0.1", dashboard_address=None,
                                     silence_logs=logging.ERROR) as local_cluster:
        if log is not None:
            log.info("dask: LocalCluster of %d worker processes at %s", settings.dask_local_workers,
                     local_cluster.scheduler_address)
        dask_options.address = local_cluster.scheduler_address
        if not chosen:
            threads = settings.dask_local_workers * settings.dask_local_threads_per_worker
            dask_options.npartitions = default_partitions(threads, settings.dask_work_items)
        try:
            yield local_cluster.scheduler_address
        finally:
            dask_options.address = None
            if not chosen:
                dask_options.npartitions = None


def _scheduler_threads(dask_options) -> int:
    """The worker threads of a running cluster, from its scheduler (one short-lived client)."""
    import distributed

    target = {"address": dask_options.address} if dask_options.address else \
        {"scheduler_file": dask_options.scheduler_file}
    if dask_options.timeout is not None:  # else distributed's connect timeout (30 s)
        target["timeout"] = dask_options.timeout
    with distributed.Client(**target, name="convpipe-sizing") as client:
        return max(1, sum(client.nthreads().values()))


def finish(result) -> None:
    """Wait for a DaskRunner result, then close its client (the runner never does)."""
    try:
        result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)
        if client is not None:
            client.close()
