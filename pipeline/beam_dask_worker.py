"""What each worker of convpipe's LocalCluster does as it starts (a dask `preload`, before it takes tasks).

The data stages' tasks need Beam and TensorFlow (tf.train.Example, the TFRecord writer). Imported
inside the first task instead, TensorFlow's import (about 8 s of CPU each) held the worker's
GIL while it ran a task, and the two workers of a fresh cluster met it one after the other:
a 16-example ingest on a fresh 2-worker cluster took 21.8 and 13.6 s without this preload, 10.3
and 11.5 s with it (alternated, this 2-core machine at load 4.4-5.3, so roughly). Here both
workers import them side by side while the cluster starts, when nothing else waits on them.

A worker process that holds TensorFlow takes seconds to finalize after its worker has closed
(TensorFlow's C++ teardown), longer than the 4 s its nanny waits before killing it, so closing a
cluster cost 4.2 s and a warning. Once the worker has closed, nothing is left to finish: the
process then ends at once (stdio flushed, exit status 0); a worker that did not close cleanly
finalizes as usual. Closing the 2-worker cluster went from 4.2 s to 0.1 s.

Beam's import logs "apitools not found ..." on the root logger, which the worker would print on
the user's terminal; convpipe never uses BigQuery (convpipe/cli.py drops the same line in the
main process).
"""
from __future__ import annotations

import atexit
import importlib
import logging
import os
import sys

MODULES = ("apache_beam", "tensorflow")


def _drop_beam_bigquery_notice(record: logging.LogRecord) -> bool:
    return not (record.name == "root" and str(record.msg).startswith("apitools not found"))


def _end_when_closed(worker) -> None:
    from distributed.core import Status

    if worker is not None and worker.status == Status.closed:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def dask_setup(worker=None) -> None:
    """Called by distributed in each worker process (and only there) before the worker starts."""
    logging.getLogger().addFilter(_drop_beam_bigquery_notice)
    atexit.register(_end_when_closed, worker)
    for name in MODULES:
        importlib.import_module(name)
