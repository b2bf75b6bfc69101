"""A copy of a multi-worker run's backups on its remote root, so that workers on other machines resume
from the same step as the chief.

On a shared filesystem every worker reads the chief's `<root>/train/.work/<key>/backups/`. On a remote
root (s3://) that directory is in the chief's local working copy, which no other machine sees: a
restarted chief would resume from backup n and a worker from nothing, and the two would train out of
step. So under MultiWorkerMirroredStrategy with a remote root the chief uploads each backup to
`<root>/train/.work/<key>/backups/` (its data files first, its `.index` last: a backup counts once its
index is there, as on disk), and every worker, the chief included, restores only from the backups
that are whole there, downloaded into its own local copy first. An upload cut short leaves a
generation without its index, which nobody restores; the train stage removes the copy when the
execution has completed.
"""
from __future__ import annotations

import re
from pathlib import Path

from pipeline.filesystem import url_fs

_FILE = re.compile(r"^(?P<prefix>[A-Za-z]+)-(?P<number>\d+)\.(?P<suffix>.+)$")


class BackupMirror:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.fs, self.path = url_fs(self.url)

    def _listing(self) -> dict[int, list[str]]:
        """Generation number -> its remote file names."""
        try:
            names = [n.rsplit("/", 1)[-1] for n in self.fs.ls(self.path, detail=False, refresh=True)]
        except FileNotFoundError:
            return {}
        found: dict[int, list[str]] = {}
        for name in names:
            match = _FILE.match(name)
            if match:
                found.setdefault(int(match.group("number")), []).append(name)
        return found

    def whole(self) -> list[int]:
        """Generations whose index is on the remote root, oldest first."""
        return sorted(n for n, names in self._listing().items() if any(x.endswith(".index") for x in names))

    def push(self, prefix: Path) -> None:
        """Upload the files of the local backup `prefix` (`.../ckpt-<n>`), its index last."""
        files = sorted(prefix.parent.glob(f"{prefix.name}.*"), key=lambda p: p.name.endswith(".index"))
        for file in files:
            self.fs.put_file(str(file), f"{self.path}/{file.name}")

    def drop_except(self, keep: list[int]) -> None:
        """Remove remote generations not in `keep`: the index first, so none is ever taken half-removed."""
        for number, names in self._listing().items():
            if number in keep:
                continue
            for name in sorted(names, key=lambda x: not x.endswith(".index")):
                self.fs.rm_file(f"{self.path}/{name}")

    def pull(self, directory: Path) -> list[int]:
        """Download every whole remote generation missing from `directory` (index last); returns them all."""
        directory.mkdir(parents=True, exist_ok=True)
        listing = self._listing()
        whole = sorted(n for n, names in listing.items() if any(x.endswith(".index") for x in names))
        for number in whole:
            names = sorted(listing[number], key=lambda x: x.endswith(".index"))
            for name in names:
                local = directory / name
                if not local.is_file() or local.stat().st_size != self.fs.size(f"{self.path}/{name}"):
                    partial = directory / f".{name}.part"
                    self.fs.get_file(f"{self.path}/{name}", str(partial))
                    partial.rename(local)
        return whole

    def remove_all(self) -> None:
        try:
            if self.fs.exists(self.path):
                self.fs.rm(self.path, recursive=True)
        except FileNotFoundError:
            pass
