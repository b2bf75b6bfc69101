"""Backups a killed or preempted training run resumes from: atomic, two generations, fallback.

Keras's `BackupAndRestore` overwrites one file in place, so a backup truncated by a full disk or
a kill leaves every restart failing. Here each backup is a new `tf.train.Checkpoint` prefix
(`ckpt-<n>.index` + data), which TensorFlow writes under a temporary name and then renames; the
two newest are kept, and a restore that cannot read the newest falls back to the one before.

Under MultiWorkerMirroredStrategy every worker must take part in a save (it is collective), but
only the chief's copy is kept: other workers save into a private temporary directory.
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
    def __init__(self, directory: str | Path, checkpoint, keep: int = 2, is_chief: bool = True):
        if keep < 1:
            raise ValueError(f"keep: expected at least 1 backup generation, got {keep}")
        self.directory = Path(directory)
        self.checkpoint = checkpoint
        self.keep = keep
        self.is_chief = is_chief
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
    def save(self) -> Path:
        """Write a new backup, then drop all but the `keep` newest; returns its prefix."""
        number = (self.numbers() or [0])[-1] + 1
        if not self.is_chief:
            if self._scratch is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="convpipe-worker-backup-"))
            target = self._scratch / f"{PREFIX}-{number}"
            self.checkpoint.write(str(target))
            for path in self._scratch.glob(f"{PREFIX}-*"):
                if not path.name.startswith(f"{PREFIX}-{number}."):
                    path.unlink(missing_ok=True)
            return target
        target = self.prefix(number)
        self.checkpoint.write(str(target))
        for old in self.numbers()[:-self.keep]:
            self._delete(old)
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
    """The weights of the best epoch so far, as `best-epoch-<n>.weights.h5` beside the backups.

    Written under a temporary name and renamed; the file name is recorded in the progress that
    the next backup saves, so a resumed run knows which file belongs to its history.
    """

    def __init__(self, directory: str | Path, model, is_chief: bool = True):
        self.directory = Path(directory)
        self.model = model
        self.is_chief = is_chief
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.directory / name

    def save(self, epoch: int) -> str:
        import os

        name = f"best-epoch-{epoch}.weights.h5"
        if not self.is_chief:
            return name
        temporary = self.directory / f".tmp-{name}"
        self.model.save_weights(str(temporary))
        os.replace(temporary, self.path(name))
        return name

    def prune(self, keep: Optional[str]) -> None:
        """Delete best-weight files other than `keep` (call after the backup that records `keep`)."""
        if not self.is_chief:
            return
        for path in self.directory.glob("best-epoch-*.weights.h5"):
            if path.name != keep:
                path.unlink(missing_ok=True)

    def load(self, name: str) -> None:
        path = self.path(name)
        if not path.exists():
            raise FileNotFoundError(f"{path}: best weights recorded in the backup are missing")
        self.model.load_weights(str(path))
