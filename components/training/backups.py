"""Backups a killed or preempted training run resumes from: atomic, two generations, fallback.

Keras's `BackupAndRestore` overwrites one file in place, so a backup truncated by a full disk or
a kill leaves every restart failing. Here each backup is a new `tf.train.Checkpoint` prefix
(`ckpt-<n>.index` + data), which TensorFlow writes under a temporary name and then renames; the
two newest are kept, and a restore that cannot read the newest falls back to the one before.

Under MultiWorkerMirroredStrategy every worker must take part in a save (it is collective), but
only the chief's copy is kept: other workers save into a private temporary directory. On a remote
root the chief also uploads each backup, and every worker restores from those alone
(components/training/backup_mirror.py), since the chief's directory is on no other machine.
"""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

PREFIX = "ckpt"
_NUMBER = re.compile(rf"^{PREFIX}-(\d+)\.index$")


class Backups:
    def __init__(self, directory: str | Path, checkpoint, keep: int = 2, is_chief: bool = True, mirror=None):
        """`mirror`: a BackupMirror (components/training/backup_mirror.py) the chief uploads to and
        every worker restores from; None: this directory is all there is."""
        if keep < 1:
            raise ValueError(f"keep: expected at least 1 backup generation, got {keep}")
        self.directory = Path(directory)
        self.checkpoint = checkpoint
        self.keep = keep
        self.is_chief = is_chief
        self.mirror = mirror
        self._scratch: Optional[Path] = None
        self.directory.mkdir(parents=True, exist_ok=True)

    # -- listing --------------------------------------------------------------------------------
    def numbers(self) -> list[int]:
        """Backup numbers present on disk, oldest first (a backup counts once its index exists)."""
        found = []
        for path in self.directory.glob(f"{PREFIX}-*.index"):
            match = _NUMBER.match(path.name)
            if match:
                found.append(int(match.group(1)))
        return sorted(found)

    def prefix(self, number: int) -> Path:
        return self.directory / f"{PREFIX}-{number}"

    # -- writing --------------------------------------------------------------------------------
    def save(self, checkpoint=None) -> Path:
        """Write a new backup, then drop all but the `keep` newest; returns its prefix. `checkpoint`:
        another checkpoint of the same objects to write instead (epoch_end.Mirror's)."""
        checkpoint = self.checkpoint if checkpoint is None else checkpoint
        number = (self.numbers() or [0])[-1] + 1
        if not self.is_chief:
            if self._scratch is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="convpipe-worker-backup-"))
            target = self._scratch / f"{PREFIX}-{number}"
            checkpoint.write(str(target))
            for path in self._scratch.glob(f"{PREFIX}-*"):
                if not path.name.startswith(f"{PREFIX}-{number}."):
                    path.unlink(missing_ok=True)
            return target
        target = self.prefix(number)
        checkpoint.write(str(target))
        for old in self.numbers()[:-self.keep]:
            self._delete(old)
        if self.mirror is not None:
            self.mirror.push(target)
            self.mirror.drop_except(self.numbers())
        return target

    def _delete(self, number: int) -> None:
        for path in self.directory.glob(f"{PREFIX}-{number}.*"):
            path.unlink(missing_ok=True)

    def close(self) -> None:
        """Remove a non-chief worker's private backups."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    # -- reading --------------------------------------------------------------------------------
    def restore(self, log: logging.Logger) -> Optional[int]:
        """Restore the newest readable backup into the checkpoint's objects; returns its number.

        Returns None when there is no backup. A backup that cannot be read is logged and
        skipped in favour of the older one; when none can be read, the last error is raised.
        """
        numbers = self.numbers()
        if self.mirror is not None:  # what every worker can read: the generations whole on the remote root
            whole = set(self.mirror.pull(self.directory))
            for number in numbers:
                if number not in whole:
                    log.info("backup %s is not on %s (its upload did not finish); not resuming from it",
                             self.prefix(number).name, self.mirror.url)
                    self._delete(number)
            numbers = self.numbers()
        last_error: Optional[Exception] = None
        for number in reversed(numbers):
            try:
                self.checkpoint.read(str(self.prefix(number))).assert_existing_objects_matched()
                return number
            except Exception as exc:  # DataLossError, OutOfRangeError, NotFoundError, ValueError ...
                last_error = exc
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                log.warning("backup %s cannot be read (%s: %s); trying the one before",
                            self.prefix(number), type(exc).__name__, first_line[:200])
        if last_error is not None:
            raise BackupError(
                f"{self.directory}: none of the backups {[f'{PREFIX}-{n}' for n in numbers]} can be read; "
                f"delete the directory to start over (last error: {last_error})") from last_error
        return None


class BackupError(RuntimeError):
    """No backup in the directory can be read."""


class BestWeights:
    """The weights of the best epoch so far, as variables saved inside every backup.

    They were a `best-epoch-<n>.weights.h5` file beside the backups (19-36 ms an improving epoch on
    the default CNN, and a second file whose name the backup had to record). Copying the model's
    variables into these ones costs ~1 ms, and a backup holds the weights of its best epoch
    together with the history that names it, so a resumed run can never pair them wrongly.
    Created inside the strategy's scope, beside the model.
    """

    def __init__(self, model):
        import tensorflow as tf

        self.model = model
        self.variables = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name=f"best_{i}")
                          for i, v in enumerate(model.weights)]
        sources = [v.value for v in model.weights]

        @tf.function(autograph=False)
        def capture():
            for target, source in zip(self.variables, sources):
                target.assign(source.read_value())

        @tf.function(autograph=False)
        def load():
            for target, source in zip(sources, self.variables):
                target.assign(source.read_value())

        self._capture, self._load = capture, load

    def save(self, epoch: int) -> str:
        """Keep the model's weights as those of `epoch`; returns the name the progress records."""
        self._capture()
        return f"epoch-{epoch}"

    def load(self, name: str) -> None:
        """Put the kept weights (recorded as `name`) back into the model."""
        if not name:
            raise ValueError("best weights: no epoch was recorded as best")
        self._load()
