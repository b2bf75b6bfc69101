"""mask_folder: images/ and masks/ side by side, one mask per image with the same file name (stem).

    path/images/2007_000032.jpg      path/masks/2007_000032.png
    path/images/street/0001.png      path/masks/street/0001.png

A mask is a PNG whose pixel values are class ids: a single-channel PNG, or a palette PNG as in
Pascal VOC, whose palette indices are the ids (the colours are only for viewing and are never
mapped back). Ids are 0..num_classes-1 (0 usually the background); `ignore_value` (255 in VOC:
object borders) marks pixels that loss and metrics leave out, and is kept in the mask as it is.

One item is one image, so a bad pair fails alone and goes to the dead letter with its paths and the
reason: a missing mask, a mask that is not a PNG of ids, a mask whose size differs from its image,
or a mask holding an id outside the configured classes. The example id is the image path relative
to images/ without its extension, so splits stay put when files are added.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

import numpy as np

from components.examples import RecordError, decode_image, decode_mask

TASKS = ("segmentation",)
IMAGES_DIR = "images"
MASKS_DIR = "masks"


class Reader:
    def __init__(self, source_config, ingest_config):
        self.source = source_config
        self.root = Path(source_config.path).expanduser()
        self.images = self.root / IMAGES_DIR
        self.masks = self.root / MASKS_DIR
        self.extensions = {e.lower() if e.startswith(".") else "." + e.lower() for e in source_config.extensions}
        names = source_config.class_names
        if names is not None and len(names) != source_config.num_classes:
            raise ValueError(f"ingest.source.class_names: expected {source_config.num_classes} names "
                             f"(ingest.source.num_classes), got {len(names)}: {names}")
        ignore = source_config.ignore_value
        if ignore is not None and 0 <= ignore < source_config.num_classes:
            raise ValueError(f"ingest.source.ignore_value: expected a value outside the class ids "
                             f"0..{source_config.num_classes - 1} (or null), got {ignore}")

    def class_names(self) -> list[str]:
        if self.source.class_names is not None:
            return list(self.source.class_names)
        return ["background", *(f"class_{k}" for k in range(1, self.source.num_classes))]

    def _image_files(self) -> list[Path]:
        for folder in (self.images, self.masks):
            if not folder.is_dir():
                raise FileNotFoundError(f"ingest.source.path: expected {IMAGES_DIR}/ and {MASKS_DIR}/ folders in "
                                        f"{self.root}, but {folder} is not a folder")
        return sorted(f for f in self.images.rglob("*")
                      if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in self.extensions)

    def mask_path(self, image_path: Path) -> Path:
        """masks/<same relative folder>/<same stem>.png"""
        return (self.masks / image_path.relative_to(self.images)).with_suffix(".png")

    def list_items(self) -> list[str]:
        return [str(f) for f in self._image_files()]

    def read(self, item: str) -> Iterator[dict]:
        image_path = Path(item)
        mask_path = self.mask_path(image_path)
        if not mask_path.is_file():
            raise RecordError(f"{mask_path}: missing mask for image {image_path}")
        try:
            image = decode_image(_read(image_path), self.source.channels)
        except RecordError as exc:
            raise RecordError(f"{image_path}: {exc}") from None
        try:
            mask = decode_mask(_read(mask_path))
        except RecordError as exc:
            raise RecordError(f"{mask_path}: {exc}") from None
        if mask.shape != image.shape[:2]:
            raise RecordError(f"{mask_path}: mask size {mask.shape[0]}x{mask.shape[1]} differs from its image "
                              f"{image_path} of size {image.shape[0]}x{image.shape[1]}")
        ids = np.unique(mask)
        outside = [int(v) for v in ids if v >= self.source.num_classes and v != self.source.ignore_value]
        if outside:
            allowed = f"0..{self.source.num_classes - 1}"
            if self.source.ignore_value is not None:
                allowed += f" or the ignore value {self.source.ignore_value}"
            raise RecordError(f"{mask_path}: mask ids expected in {allowed}, got {outside}")
        relative = image_path.relative_to(self.images).with_suffix("")
        yield {"id": relative.as_posix(), "source": str(image_path), "image": image, "mask": mask}

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.source.model_dump_json().encode())
        for image_path in self._image_files():
            for path in (image_path, self.mask_path(image_path)):
                stat = path.stat() if path.is_file() else None
                size, mtime = (stat.st_size, stat.st_mtime_ns) if stat else (-1, -1)
                digest.update(f"{path.relative_to(self.root).as_posix()}\0{size}\0{mtime}\n".encode())
        return "mask_folder:" + digest.hexdigest()[:16]

    def schema_extras(self) -> dict:
        return {"root": str(self.root), "ignore_value": self.source.ignore_value}


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RecordError(f"cannot be read ({exc.strerror or exc})") from None
