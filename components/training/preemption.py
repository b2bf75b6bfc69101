"""A SIGTERM on any worker of a multi-worker run becomes one coordinated backup, then a clean exit.

Cluster managers announce a preemption with SIGTERM, usually to one machine. Saving there alone is
not enough: the workers train in lockstep, and a backup is only useful when every worker stops at
the same step. `tf.distribute.experimental.PreemptionCheckpointHandler` agrees on that step
through the coordination service; here it is given a `TerminationConfig` that

    - watches SIGTERM (its default off Google Cloud, which is also what works on CPU),
    - saves through our two-generation `Backups` (`save_fn`), so a preemption backup is an ordinary
      `ckpt-<n>` that the restarted cluster resumes from like any other,
    - raises `Preempted` instead of `sys.exit(42)` (`exit_fn`), so the worker exits with
      `PREEMPTED_EXIT` (143, as for SIGTERM) and the train stage says where it stopped.

The handler restores from its own checkpoint directory when created; that directory is a private
temporary one that stays empty (every save goes through `Backups`), and is removed by `close`.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

PREEMPTED_EXIT = 143
"""Exit status of a worker that saved a preemption backup (128 + SIGTERM, as the CLI uses)."""


STOP_WAIT_S = 5.0


class Preempted(Exception):
    """The cluster was told to stop (SIGTERM on some worker); a backup at `global_step` is on disk."""

    def __init__(self, epoch: int, step: int, global_step: int):
        self.epoch, self.step, self.global_step = epoch, step, global_step
        super().__init__(f"preempted (SIGTERM): every worker stopped after epoch {epoch}, step {step} "
                         f"(global step {global_step}) and the backup of that step is saved; rerun to resume")


class PreemptionBackups:
    """Call `after_step(epoch, step)` after every training step, on every worker, with `progress`
    already holding that step's counters; it returns at once unless the cluster is being preempted."""

    def __init__(self, strategy, checkpoint, progress, backups, log: logging.Logger):
        import tensorflow as tf

        self.progress, self.backups, self.log = progress, backups, log
        self._where = (0, 0)
        self._scratch = Path(tempfile.mkdtemp(prefix="convpipe-preemption-"))
        config = tf.distribute.experimental.TerminationConfig(exit_fn=self._exit, save_fn=self._save)
        self.handler = tf.distribute.experimental.PreemptionCheckpointHandler(
            strategy.cluster_resolver, checkpoint, str(self._scratch / "handler"), config)

    def after_step(self, epoch: int, step: int) -> None:
        self._where = (epoch, step)
        self.handler.save_checkpoint_if_preempted()

    def _save(self) -> None:
        self.progress.sync()
        saved = self.backups.save()
        epoch, step = self._where
        self.log.info("preemption backup %s at epoch %d, step %d (global step %d)",
                      saved.name, epoch, step, self.progress.global_step)

    def _exit(self) -> None:
        epoch, step = self._where
        raise Preempted(epoch, step, self.progress.global_step)

    def close(self) -> None:
        """Stop the handler's watcher thread now, while the other workers are still up (its `__del__`
        would do it later, when a finished chief may be gone and the wait never ends), then remove
        the scratch directory. A worker whose peers are dead gives the stop `STOP_WAIT_S`."""
        import threading

        stopper = threading.Thread(target=self.handler._stop_cluster_wise_termination_watcher_thread, daemon=True)
        stopper.start()
        stopper.join(timeout=STOP_WAIT_S)
        if stopper.is_alive():
            self.handler._cluster_wise_termination_watcher_thread = None  # its __del__ must not wait again
        shutil.rmtree(self._scratch, ignore_errors=True)
