"""The `video_folder` source: one sub-folder per class, one clip per entry inside it.

    <path>/<class>/<clip>.gif                       an animated GIF, or
    <path>/<class>/<clip>/frame_0001.png ...        a folder of numbered frames (PNG, JPEG, BMP)

Classes are the sub-folder names in sorted order (label = position). Every clip becomes exactly
`num_frames` RGB frames, by `length_policy`:

- `sample`: frames at evenly spaced positions over the whole clip, floor(i * (n - 1) / (T - 1) + 0.5)
  for i = 0..T-1; the first and last frames are always kept, a short clip repeats frames.
- `pad`: the clip's own frame rate: the first T frames, and a short clip repeats its last frame.

The rule is written into schema.json (`length_policy`, `length_rule`), so a model trained on these
clips can be fed the same way later. A clip that cannot be read whole raises RecordError naming its
path and the reason (ingest sends it to the dead-letter file): a truncated GIF, a frame folder with
a gap in its numbers, frames of different sizes, an entry that is neither a GIF nor a folder.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from components.examples import RecordError, decode_image

TASKS = ("video",)
"""Tasks this source can feed (ingest checks the config against it)."""
GIF_TRAILER = b"\x3b"
"""The byte that ends every complete GIF; a file cut short at a frame boundary lacks only this."""
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
FRAME_NAME = re.compile(r"^(?P<stem>.*?)(?P<number>\d+)$")
LENGTH_RULES = {
    "sample": "evenly spaced frames over the whole clip: index floor(i * (n - 1) / (T - 1) + 0.5) for i in 0..T-1 "
              "(first and last kept; a short clip repeats frames)",
    "pad": "the first T frames at the clip's own frame rate; a short clip repeats its last frame",
}


# ------------------------------------------------------------------------------------------------
# clip length
# ------------------------------------------------------------------------------------------------
def frame_indices(length: int, num_frames: int, policy: str) -> list[int]:
    """Which of a clip's `length` frames make up its `num_frames` frames under `policy`."""
    if length < 1:
        raise ValueError(f"length: expected a clip of at least one frame, got {length}")
    if policy == "sample":
        if num_frames == 1:
            return [(length - 1) // 2]
        positions = np.arange(num_frames) * (length - 1) / (num_frames - 1)
        return [int(i) for i in np.floor(positions + 0.5)]
    if policy == "pad":
        return [min(i, length - 1) for i in range(num_frames)]
    raise ValueError(f"length_policy: expected one of {sorted(LENGTH_RULES)}, got {policy!r}")


# ------------------------------------------------------------------------------------------------
# reading one clip
# ------------------------------------------------------------------------------------------------
def read_gif(path: Path) -> np.ndarray:
    """Every frame of an animated GIF, fully decoded, as uint8 [n, H, W, 3]."""
    from PIL import Image, ImageFile, ImageSequence

    data = path.read_bytes()
    if not data.rstrip(b"\x00").endswith(GIF_TRAILER):
        raise RecordError(f"{path}: truncated GIF: the file ends without the GIF trailer byte 0x3B "
                          f"({len(data)} bytes read)")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "GIF":
                raise RecordError(f"{path}: expected a GIF, got a {image.format} file")
            frames = [np.asarray(frame.convert("RGB"), dtype=np.uint8) for frame in ImageSequence.Iterator(image)]
    except RecordError:
        raise
    except Exception as exc:  # PIL raises OSError, IndexError, EOFError, SyntaxError for cut or bad bytes
        raise RecordError(f"{path}: truncated or corrupt GIF: {type(exc).__name__}: {exc}") from None
    if not frames:
        raise RecordError(f"{path}: GIF has no frames")
    return np.stack(frames)


def numbered_frames(folder: Path) -> list[tuple[int, Path]]:
    """(number, file) for the frame images of a clip folder, in order; a gap in the numbers is an error.

    Numbers must run without a gap from 0 or 1; every image file must carry a number at the end
    of its name. Files that are not images (notes, thumbnails' .db) are ignored.
    """
    numbered: dict[int, Path] = {}
    for file in sorted(folder.iterdir()):
        if file.name.startswith(".") or file.suffix.lower() not in FRAME_EXTENSIONS or not file.is_file():
            continue
        match = FRAME_NAME.match(file.stem)
        if match is None:
            raise RecordError(f"{file}: expected a numbered frame name such as frame_0001{file.suffix}, "
                              f"got {file.name}")
        number = int(match["number"])
        if number in numbered:
            raise RecordError(f"{folder}: frame number {number} appears twice ({numbered[number].name}, {file.name})")
        numbered[number] = file
    if not numbered:
        raise RecordError(f"{folder}: no frames (expected images named like frame_0001.png)")
    first, last = min(numbered), max(numbered)
    if first not in (0, 1):
        raise RecordError(f"{folder}: missing frame numbers {_ranges(range(1, first))}: "
                          f"frames start at {numbered[first].name}, expected numbering from 0 or 1")
    missing = [n for n in range(first, last + 1) if n not in numbered]
    if missing:
        raise RecordError(f"{folder}: missing frame number{'s' if len(missing) > 1 else ''} {_ranges(missing)} "
                          f"(found {len(numbered)} frames numbered {first}..{last})")
    return sorted(numbered.items())


def _ranges(numbers) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    numbers, parts = list(numbers), []
    start = prev = None
    for n in numbers + [None]:
        if n is not None and prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = n
    return ", ".join(parts)


def read_frame_folder(folder: Path) -> np.ndarray:
    """A folder of numbered frames as uint8 [n, H, W, 3]; every frame must have the first one's size."""
    frames = []
    for _, file in numbered_frames(folder):
        try:
            pixels = decode_image(file.read_bytes(), channels=3)
        except RecordError as exc:
            raise RecordError(f"{file}: {exc}") from None
        if frames and pixels.shape != frames[0].shape:
            raise RecordError(f"{file}: frame size {list(pixels.shape[:2])} differs from the clip's first frame "
                              f"{list(frames[0].shape[:2])}")
        frames.append(pixels)
    return np.stack(frames)


def read_clip(path: Path) -> np.ndarray:
    """A clip (GIF file or frame folder) with all its frames, uint8 [n, H, W, 3]."""
    if path.is_dir():
        return read_frame_folder(path)
    if path.suffix.lower() == ".gif":
        return read_gif(path)
    raise RecordError(f"{path}: expected an animated .gif or a folder of numbered frames, got a {path.suffix or 'plain'} file")


# ------------------------------------------------------------------------------------------------
# the Reader (components/sources/__init__.py)
# ------------------------------------------------------------------------------------------------
class Reader:
    """Items are clip paths (strings); the label is the index of the clip's parent folder name."""

    def __init__(self, source_config, ingest_config):
        self.source = source_config
        self.root = Path(source_config.path)
        if not self.root.is_dir():
            raise FileNotFoundError(f"ingest.source.path: expected a folder with one sub-folder per class, "
                                    f"got {self.root} (not a folder)")
        self._classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self._classes:
            raise FileNotFoundError(f"ingest.source.path: expected one sub-folder per class in {self.root}, found none")

    def class_names(self) -> list[str]:
        return list(self._classes)

    def list_items(self) -> list[str]:
        return [str(clip) for name in self._classes for clip in sorted((self.root / name).iterdir())
                if not clip.name.startswith(".")]

    def read(self, item: str) -> Iterator[dict]:
        path = Path(item)
        frames = read_clip(path)
        chosen = frame_indices(len(frames), self.source.num_frames, self.source.length_policy)
        yield {
            "id": f"video_folder/{path.parent.name}/{path.name}",
            "source": str(path),
            "frames": frames[chosen],
            "label": self._classes.index(path.parent.name),
        }

    def fingerprint(self) -> str:
        """Hash of the source settings and every file's relative path, size and mtime."""
        digest = hashlib.sha256(json.dumps(self.source.model_dump(mode="json"), sort_keys=True).encode())
        for file in sorted(p for p in self.root.rglob("*") if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.relative_to(self.root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return "video_folder:" + digest.hexdigest()[:16]

    def schema_extras(self) -> dict:
        return {"num_frames": self.source.num_frames, "length_policy": self.source.length_policy,
                "length_rule": LENGTH_RULES[self.source.length_policy]}
