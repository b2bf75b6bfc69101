"""The work between epochs (backups, TensorBoard scalars, the sample-prediction picture), off the step path.

Measured on the default CNN (benchmarks/trainer_overhead, 2 shared cores): a backup costs ~19 ms,
the sample picture ~45 ms (predict 13, draw 10, summary 22), against an epoch of ~320 ms; done on
the training thread they made the stage 0.80x plain `fit`. None of that work changes the weights,
so it can run beside the next epoch, provided it sees the state *of the epoch it describes*:

- `Mirror` is a second instance of every checkpointed object (model, optimizer, progress, best
  weights, loss state), built by the same code as the live one, so its checkpoint has the same keys
  and a resumed run restores it into the live objects as usual. At the end of an epoch one compiled
  function copies every live variable into the mirror (~1 ms); the background thread then writes
  the backup and draws the picture from the mirror while training goes on.
- `BackgroundEndOfEpoch` runs those jobs in order on one thread with a queue of one: before the
  mirror is overwritten the training thread waits until the previous job has finished, so at most
  one epoch's state is in flight and nothing the thread reads changes under it.

Preemption safety is that of `Backups.save` on the thread: each backup is a new `ckpt-<n>` whose
index TensorFlow writes last, and older ones are deleted only after it is complete, so a SIGKILL
during a background backup resumes from the newest complete one. `close()` (always called, also
when training raises) waits for the last job, so a finished or failed trial leaves its backups on
disk exactly as the inline order did.

`EndOfEpoch` is the same work on the training thread: for multi-device and multi-worker
strategies, where a save is collective and must happen on every worker at the same step.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Optional


class EndOfEpoch:
    """Backups and TensorBoard writes on the training thread, in the loop's order."""

    background = False

    def __init__(self, backups, logs, log: logging.Logger, samples: Optional[Callable] = None, model=None):
        """`samples(model, epoch)` writes the sample-prediction picture of `model` (None: no picture)."""
        self.backups, self.logs, self.log, self.samples, self.model = backups, logs, log, samples, model

    def step_backup(self, progress, epoch: int, step: int) -> None:
        progress.sync()
        self._step_backup(self.backups.checkpoint, epoch, step)

    def epoch_end(self, progress, epoch: int, train: dict, evaluation: dict, learning_rate: float) -> None:
        progress.sync()
        self._epoch_end(self.model, self.backups.checkpoint, epoch, train, evaluation, learning_rate)

    def wait(self) -> None:
        """Wait until the queued work is done (none is queued here)."""

    def close(self) -> None:
        """Wait for every pending job (none here)."""

    # -- the jobs, shared by both ------------------------------------------------------------------
    def _step_backup(self, checkpoint, epoch: int, step: int) -> None:
        saved = self.backups.save(checkpoint)
        self.log.info("step backup %s at epoch %d, step %d", saved.name, epoch, step)

    def _epoch_end(self, model, checkpoint, epoch, train, evaluation, learning_rate) -> None:
        self.logs.scalars(epoch, train, evaluation, learning_rate)
        if self.samples is not None:
            self.samples(model, epoch)
        self.backups.save(checkpoint)


class BackgroundEndOfEpoch(EndOfEpoch):
    """The same jobs on one background thread, each reading the `Mirror` taken when it was queued."""

    background = True

    def __init__(self, backups, logs, log: logging.Logger, mirror: "Mirror", samples: Optional[Callable] = None):
        super().__init__(backups, logs, log, samples, mirror.model)
        self.mirror = mirror
        self._jobs: queue.Queue = queue.Queue(maxsize=1)
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="convpipe-end-of-epoch", daemon=True)
        self._thread.start()

    def step_backup(self, progress, epoch: int, step: int) -> None:
        progress.sync()
        self._submit(lambda: self._step_backup(self.mirror.checkpoint, epoch, step))

    def epoch_end(self, progress, epoch, train, evaluation, learning_rate) -> None:
        progress.sync()
        self._submit(lambda: self._epoch_end(self.mirror.model, self.mirror.checkpoint, epoch, train, evaluation,
                                             learning_rate))

    def wait(self) -> None:
        """Wait until the queued job is done; raises what it raised."""
        self._jobs.join()
        self._raise()

    def close(self) -> None:
        """Wait for the last job and stop the thread; raises what a job raised."""
        if self._thread.is_alive():
            self._jobs.join()
            self._jobs.put(None)
            self._thread.join()
        self._raise()

    def _submit(self, job: Callable[[], None]) -> None:
        self._jobs.join()  # the previous job has read the mirror: now it may change
        self._raise()
        self.mirror.update()
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    job()
            except BaseException as exc:  # handed to the training thread at its next submit or close
                self._error = exc
            finally:
                self._jobs.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


class MirrorMismatch(RuntimeError):
    """The mirror's variables do not match the live checkpoint's one for one."""


class Mirror:
    """A snapshot of the live checkpoint's variables into a second, identically built checkpoint."""

    def __init__(self, live_checkpoint, mirror_checkpoint, model):
        """`model`: the mirror's model (the sample picture is drawn from it)."""
        import tensorflow as tf

        self.checkpoint, self.model = mirror_checkpoint, model
        live, mirror = checkpoint_variables(live_checkpoint), checkpoint_variables(mirror_checkpoint)
        if len(live) != len(mirror):
            raise MirrorMismatch(f"the mirror has {len(mirror)} variables, the live checkpoint {len(live)}")
        for index, (a, b) in enumerate(zip(live, mirror)):
            if tuple(a.shape) != tuple(b.shape) or _dtype(a) != _dtype(b):
                raise MirrorMismatch(f"variable {index}: live {a.shape} {_dtype(a)} vs mirror {b.shape} {_dtype(b)}")
        pairs = [(_tf_variable(b), _tf_variable(a)) for a, b in zip(live, mirror)]

        @tf.function(autograph=False)
        def copy():
            for target, source in pairs:
                target.assign(source.read_value())

        self._copy = copy

    def update(self) -> None:
        self._copy()


def checkpoint_variables(checkpoint) -> list:
    """Every variable a checkpoint saves, in the breadth-first order of its object graph (the same
    order for two checkpoints built by the same code)."""
    import keras
    import tensorflow as tf

    return [t for t in tf.train.TrackableView(checkpoint).descendants()
            if isinstance(t, (tf.Variable, keras.Variable))]


def _tf_variable(variable):
    import keras

    return variable.value if isinstance(variable, keras.Variable) else variable


def _dtype(variable) -> str:
    return str(getattr(variable.dtype, "name", variable.dtype))


def end_of_epoch(placement, backups, logs, log: logging.Logger, samples: Optional[Callable], model,
                 build_mirror: Callable[[], tuple], live_checkpoint) -> EndOfEpoch:
    """In the background on one device (default and one_device strategies); on the training thread
    where saves are collective (mirrored, multi_worker) or a mirror cannot be built.
    `build_mirror()` returns (model, loss, optimizer, best, checkpoint) built as the live ones."""
    if placement.kind not in ("default", "one_device") or not placement.is_chief:
        return EndOfEpoch(backups, logs, log, samples, model)
    try:
        mirror_model, _, _, _, mirror_checkpoint = build_mirror()
        mirror = Mirror(live_checkpoint, mirror_checkpoint, mirror_model)
    except MirrorMismatch as exc:
        log.warning("end-of-epoch work stays on the training thread: %s", exc)
        return EndOfEpoch(backups, logs, log, samples, model)
    log.info("backups and TensorBoard writes run beside the next epoch (a mirror of %d variables)",
             len(checkpoint_variables(mirror_checkpoint)))
    return BackgroundEndOfEpoch(backups, logs, log, mirror, samples)
