"""image_folder: one sub-folder per class, image files inside (PNG, JPEG, GIF, BMP).

    path/cat/001.jpg
    path/dog/002.png

Class names are the sub-folder names in sorted order; label k is the k-th name. One item is one
file, so a truncated JPEG or a text file named .png fails alone, with its path and the reason, and
goes to the dead letter while the rest is ingested. Hidden files and files with other extensions
are skipped. The example id is the path relative to the root, so splits stay put when files are
added. Every image is decoded to `channels` (3: RGB, 1: grey), so a folder mixing modes still gives
one shape of input.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

from components.examples import RecordError, decode_image

TASKS = ("classification",)


class Reader:
    def __init__(self, source_config, ingest_config):
        self.source = source_config
        self.root = Path(source_config.path).expanduser()
        self.extensions = {e.lower() if e.startswith(".") else "." + e.lower() for e in source_config.extensions}
        self._names = None

    def _class_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"ingest.source.path: expected a folder with one sub-folder per class, "
                                    f"got {str(self.root)!r} (not a folder)")
        dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not dirs:
            raise FileNotFoundError(f"ingest.source.path: expected one sub-folder per class in {self.root}, found none")
        return dirs

    def class_names(self) -> list[str]:
        if self._names is None:
            self._names = [d.name for d in self._class_dirs()]
        return list(self._names)

    def _files(self) -> list[Path]:
        return sorted(
            f for d in self._class_dirs() for f in d.rglob("*")
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in self.extensions)

    def list_items(self) -> list[str]:
        return [str(f) for f in self._files()]

    def read(self, item: str) -> Iterator[dict]:
        path = Path(item)
        relative = path.relative_to(self.root)
        label = self.class_names().index(relative.parts[0])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RecordError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        try:
            image = decode_image(data, self.source.channels)
        except RecordError as exc:
            raise RecordError(f"{path}: {exc}") from None
        yield {"id": relative.as_posix(), "source": str(path), "image": image, "label": label}

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for f in self._files():
            stat = f.stat()
            digest.update(f"{f.relative_to(self.root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return "image_folder:" + digest.hexdigest()[:16]

    def schema_extras(self) -> dict:
        return {"root": str(self.root)}
