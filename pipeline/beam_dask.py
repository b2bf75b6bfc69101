"""Beam's DaskRunner against a dask.distributed cluster: a running scheduler, or a LocalCluster.

`beam.runner: "dask"` (or "DaskRunner") runs a data stage's Beam pipeline on Beam 2.77's own
DaskRunner, which turns the pipeline into dask.bag operations and submits them to a
`distributed.Client`. The cluster is either
- a scheduler that is already running: `beam.dask.address` (or `--dask_client_address` in
  `beam.args`), whose workers must be able to import convpipe, the same version; or
- a `distributed.LocalCluster` of `beam.dask.workers` worker processes on this machine, its
  scheduler on 127.0.0.1 only, shared by every Beam pipeline of this process: started by the
  first pipeline that needs one, reused by the next ones with the same size (ingest and augment
  of one `convpipe run` pay its start-up once: 17-38 s here, mostly the workers importing
  TensorFlow), replaced when a pipeline asks for another size or finds it broken, and closed when
  the process ends (atexit: a normal end, an error, or SIGTERM, which the CLI turns into an
  exception; a worker also exits by itself when this process dies, through distributed's
  parent-alive pipe). Its workers import Beam and TensorFlow as they start
  (pipeline/beam_dask_worker.py) and get the nanny's usual environment (one BLAS/OpenMP thread each)
  less `MALLOC_TRIM_THRESHOLD_=65536`: with it, the per-record PIL and protobuf work ran about
  1.5x slower in a worker than in this process (measured here on a loaded 2-core machine, so
  roughly).
The runner's own default (a LocalCluster sized to every core, started inside the runner and
never closed) is never used.

The DaskRunner translates only part of the Beam model; the stages are built from the part it
translates (pipeline/beam_portable.py says which, and why).
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import threading
from dataclasses import dataclass
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
    """Beam's DaskRunner with capped GroupByKey shuffles (pipeline/beam_dask_runner.py); says what
    to install when dask or distributed is missing."""
    try:
        import dask.bag  # noqa: F401  (the runner's translation needs it)
        import distributed  # noqa: F401

        from pipeline.beam_dask_runner import DaskRunner
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
    """A worker process that holds TensorFlow can outlive the nanny's 4 s close and be killed, which the
    nanny logs as a warning (pipeline/beam_dask_worker.py ends a cleanly closed worker's process at
    once; one that was busy or broken may still take that way out): a normal end here."""
    nanny = logging.getLogger("distributed.nanny")
    level = nanny.level
    nanny.setLevel(logging.ERROR)
    try:
        yield
    finally:
        nanny.setLevel(level)


@dataclass(frozen=True)
class Size:
    """What makes two LocalClusters interchangeable: `beam.dask.workers` and `threads_per_worker`."""
    workers: int
    threads_per_worker: int

    @property
    def threads(self) -> int:
        return self.workers * self.threads_per_worker


class SharedClusters:
    """This process's LocalClusters, one per Size, each kept for every later pipeline of that size.

    A pipeline holds its cluster while it runs (`use`); a cluster of another size is closed when
    no pipeline holds it, so a process keeps at most one idle cluster (workers hold TensorFlow:
    hundreds of MB each). `close_all` runs at exit.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._clusters: dict = {}  # Size -> distributed.LocalCluster
        self._users: dict = {}  # Size -> pipelines running on it now
        self._exit_hook = False

    @contextlib.contextmanager
    def use(self, size: Size, log: Optional[logging.Logger] = None) -> Iterator[str]:
        """The scheduler address of the LocalCluster of `size`, started if there is none (or it broke)."""
        with self._lock:
            local = self._clusters.get(size)
            if local is not None and not _healthy(local, size):
                _say(log, "dask: the LocalCluster at %s has stopped or lost workers; starting a new one",
                     local.scheduler_address)
                self._close(size)
                local = None
            if local is None:
                for other in [s for s in self._clusters if s != size and not self._users.get(s)]:
                    _say(log, "dask: closing the LocalCluster of %d worker process(es) (this pipeline asks for %d "
                              "x %d threads)", other.workers, size.workers, size.threads_per_worker)
                    self._close(other)
                local = self._clusters[size] = _start(size)
                if not self._exit_hook:  # after distributed's own atexit hook, so it runs before it
                    atexit.register(self.close_all)
                    self._exit_hook = True
                _say(log, "dask: LocalCluster of %d worker process(es) at %s (kept for this process's later "
                          "Beam pipelines)", size.workers, local.scheduler_address)
            else:
                _say(log, "dask: reusing the LocalCluster of %d worker process(es) at %s (started by an earlier "
                          "Beam pipeline of this process)", size.workers, local.scheduler_address)
            self._users[size] = self._users.get(size, 0) + 1
        try:
            yield local.scheduler_address
        finally:
            with self._lock:
                self._users[size] -= 1

    def addresses(self) -> dict:
        """Size -> scheduler address of each cluster this process holds now."""
        with self._lock:
            return {size: local.scheduler_address for size, local in self._clusters.items()}

    def close_all(self) -> None:
        """Close every cluster (its workers end). Safe to call more than once."""
        with self._lock:
            for size in list(self._clusters):
                self._close(size)

    def _close(self, size: Size) -> None:
        local = self._clusters.pop(size)
        self._users.pop(size, None)
        with _quiet_worker_shutdown():
            try:
                local.close(timeout=20)
            except Exception as exc:  # at exit or after a crash: the workers go with this process anyway
                logging.getLogger(__name__).debug("closing the LocalCluster at %s: %s", local.scheduler_address, exc)


SHARED = SharedClusters()
"""The LocalClusters of this process (every Beam pipeline without a scheduler address uses them)."""


def _say(log: Optional[logging.Logger], message: str, *args) -> None:
    if log is not None:
        log.info(message, *args)


def _healthy(local, size: Size) -> bool:
    """The cluster runs and has all its workers (a nanny restarts a dead one; until then: not healthy)."""
    from distributed.core import Status

    try:
        return local.status == Status.running and len(local.scheduler_info.get("workers", {})) == size.workers
    except Exception:
        return False


WORKER_PRELOAD = "pipeline.beam_dask_worker"
"""Imports Beam and TensorFlow in each LocalCluster worker as it starts (that module says why)."""


def _start(size: Size):
    import dask
    import distributed

    environ = {key: value for key, value in dask.config.get("distributed.nanny.pre-spawn-environ").items()
               if key != "MALLOC_TRIM_THRESHOLD_"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):  # read by each Nanny as it is made
        return distributed.LocalCluster(n_workers=size.workers, threads_per_worker=size.threads_per_worker,
                                        processes=True, host="127.0.0.1", dashboard_address=None,
                                        silence_logs=logging.ERROR, preload=[WORKER_PRELOAD])


@contextlib.contextmanager
def cluster(options: PipelineOptions, log: Optional[logging.Logger] = None) -> Iterator[str]:
    """The scheduler address the pipeline's client connects to, for the block.

    Without a scheduler address in the options, this process's shared LocalCluster of the
    options' size (`SHARED`). Unless the options name a partitioning, Creates are cut into
    `default_partitions` of the cluster's worker threads (a running scheduler is asked how many
    it has).
    """
    from apache_beam.runners.dask.dask_runner import DaskOptions

    dask_options = options.view_as(DaskOptions)
    settings = options.view_as(ClusterOptions)
    chosen = dask_options.npartitions is not None or dask_options.partition_size is not None
    address = given_address(options)
    with contextlib.ExitStack() as stack:
        if address:
            threads = None if chosen else _scheduler_threads(dask_options)
        else:
            if settings.dask_local_workers < 1 or settings.dask_local_threads_per_worker < 1:
                raise ValueError(f"beam.dask: expected workers >= 1 and threads_per_worker >= 1, got "
                                 f"{settings.dask_local_workers} and {settings.dask_local_threads_per_worker}")
            size = Size(settings.dask_local_workers, settings.dask_local_threads_per_worker)
            dask_options.address = stack.enter_context(SHARED.use(size, log))
            stack.callback(setattr, dask_options, "address", None)
            threads = size.threads
        if not chosen:
            dask_options.npartitions = default_partitions(threads, settings.dask_work_items)
            stack.callback(setattr, dask_options, "npartitions", None)
        yield dask_options.address


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
