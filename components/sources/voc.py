"""voc: a Pascal VOC tree (Annotations/*.xml, JPEGImages/, ImageSets/Main/), for detection.

    ingest.source = {"name": "voc", "path": "VOCdevkit/VOC2007", "image_set": "trainval"}

- Which images: the ids listed in `ImageSets/Main/<image_set>.txt` when that file is present,
  else every `Annotations/*.xml` (a default `image_set` that is absent falls back to all; one named
  in the config that is absent is a config error). Each XML names its image in `<filename>`,
  looked up in `JPEGImages/`.
- Boxes: VOC's `<bndbox>` is 1-based inclusive pixels; as detectron2 and the VOC devkit read it,
  the box is [xmin - 1, ymin - 1, xmax, ymax] in 0-based pixel edges, then normalised to the
  image (`rel_xyxy`, converted by models/boxes.py).
- Classes: `class_names` when given (VOC's 20), else the sorted object names found in the XMLs.
- `difficult` objects are ignored in mAP, as the VOC protocol says: they travel the path COCO's
  crowd regions travel (the record's `crowd_boxes` / `crowd_labels`, `image/object/is_crowd` = 1
  in the shards): never a training target, matched as "ignore" by the evaluation, so a detection
  of a difficult object counts neither as a true nor a false positive. The `difficult` and
  `truncated` flags are kept per box as fields (`box_flags`, `image/object/difficult` and
  `image/object/truncated` in the shards, TF Object Detection API keys).
- Bad input goes to the dead letter, only the bad part, each with its path and line number: an
  XML that does not parse, or lacks its size or file name, fails alone (`file/<id>`); an object
  whose name is unknown or whose box is empty, not numeric or outside its image is its own item
  (`object/<id>/<k>`) while its image is ingested without it; an image that is missing, cannot
  be decoded or does not have the size its XML states fails alone (`image/<id>`).

The example id is the annotation's id (its file stem), so splits stay put when images are added.
"""
from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from components.examples import RecordError, decode_image
from models.detection import boxes as box_ops

TASKS = ("detection",)
IMAGE_ITEM, OBJECT_ITEM, FILE_ITEM = "image/", "object/", "file/"
EDGE_TOLERANCE = 1.0
"""Pixels a box may overshoot its image before the object counts as bad (then it is clipped)."""
_OBJECT_TAG = re.compile(rb"<object[\s>]")


@dataclass
class _Object:
    name: str
    box: Optional[tuple] = None        # 0-based pixel edges xmin, ymin, xmax, ymax
    difficult: bool = False
    truncated: bool = False
    line: int = 0
    problem: Optional[str] = None


@dataclass
class _Annotation:
    """One XML, checked: its image, size and objects (each good, or bad with a reason)."""
    path: Path
    filename: str = ""
    width: int = 0
    height: int = 0
    objects: list = field(default_factory=list)


def _text(node, tag: str) -> Optional[str]:
    child = node.find(tag)
    return child.text.strip() if child is not None and child.text is not None else None


def _flag(node, tag: str) -> bool:
    value = _text(node, tag)
    if value in (None, ""):
        return False
    if value not in ("0", "1"):
        raise ValueError(f"<{tag}> expected 0 or 1, got {value!r}")
    return value == "1"


def parse_annotation(path: Path, class_names: Optional[list] = None) -> _Annotation:
    """Parse one VOC XML. Raises RecordError (path and line) when the file itself is unusable;
    a bad object is kept with its `problem` instead."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecordError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        line, column = exc.position
        raise RecordError(f"{path}:{line}: not valid XML ({exc.msg.split(':')[0]}, column {column})") from None
    if root.tag != "annotation":
        raise RecordError(f"{path}:1: expected a VOC <annotation> root element, got <{root.tag}>")
    annotation = _Annotation(path, filename=_text(root, "filename") or "")
    if not annotation.filename:
        raise RecordError(f"{path}: <filename> is missing; it names the image in JPEGImages/")
    size = root.find("size")
    try:
        annotation.width, annotation.height = int(_text(size, "width")), int(_text(size, "height"))
        if annotation.width <= 0 or annotation.height <= 0:
            raise ValueError
    except (TypeError, ValueError, AttributeError):
        raise RecordError(f"{path}: <size> expected positive integer <width> and <height>, got "
                          f"{None if size is None else (_text(size, 'width'), _text(size, 'height'))}") from None
    lines = [data.count(b"\n", 0, match.start()) + 1 for match in _OBJECT_TAG.finditer(data)]
    for k, node in enumerate(root.findall("object")):
        obj = _Object(name=_text(node, "name") or "", line=lines[k] if k < len(lines) else 0)
        obj.problem = _object_problem(obj, node, annotation, class_names)
        annotation.objects.append(obj)
    return annotation


def _object_problem(obj: _Object, node, annotation: _Annotation, class_names: Optional[list]) -> Optional[str]:
    """Fills obj's box and flags; returns why the object is bad, or None."""
    where = f"({annotation.filename}, {annotation.width}x{annotation.height})"
    if not obj.name:
        return "<name> is missing"
    if class_names is not None and obj.name not in class_names:
        return f"name {obj.name!r} is not among ingest.source.class_names {class_names}"
    try:
        obj.difficult = _flag(node, "difficult")
        obj.truncated = _flag(node, "truncated")
    except ValueError as exc:
        return str(exc)
    box = node.find("bndbox")
    values = [None if box is None else _text(box, tag) for tag in ("xmin", "ymin", "xmax", "ymax")]
    try:
        xmin, ymin, xmax, ymax = (float(v) for v in values)
        if not all(np.isfinite([xmin, ymin, xmax, ymax])):
            raise ValueError
    except (TypeError, ValueError):
        return f"<bndbox> expected numeric xmin, ymin, xmax, ymax, got {values}"
    x0, y0, x1, y1 = xmin - 1.0, ymin - 1.0, xmax, ymax
    if x1 <= x0 or y1 <= y0:
        return f"<bndbox> {values} is empty {where}"
    width, height = annotation.width, annotation.height
    if (x0 < -EDGE_TOLERANCE or y0 < -EDGE_TOLERANCE or x1 > width + EDGE_TOLERANCE or y1 > height + EDGE_TOLERANCE
            or min(x1, width) <= max(x0, 0.0) or min(y1, height) <= max(y0, 0.0)):
        return f"<bndbox> {values} lies outside its image {where}"
    obj.box = (x0, y0, x1, y1)
    return None


class Reader:
    def __init__(self, source_config, ingest_config):
        if ingest_config.task not in TASKS:
            raise ValueError(f"ingest.source: the voc source gives boxes, expected ingest.task in {TASKS}, "
                             f"got {ingest_config.task!r}")
        self.source = source_config
        self.root = Path(source_config.path).expanduser()
        self.given_names = list(source_config.class_names) if source_config.class_names else None
        self._ids = None
        self._names = None
        self._bad = None

    def __getstate__(self):  # Beam pickles the reader: workers parse only the files they read
        return {**self.__dict__, "_bad": None}

    # -- which files -----------------------------------------------------------------------------
    def _annotation_path(self, image_id: str) -> Path:
        return self.root / "Annotations" / f"{image_id}.xml"

    def ids(self) -> list[str]:
        if self._ids is None:
            annotations = self.root / "Annotations"
            if not annotations.is_dir():
                raise FileNotFoundError(f"ingest.source.path: expected a VOC tree with Annotations/ and JPEGImages/, "
                                        f"{annotations} is not a folder")
            image_set = self.source.image_set
            listing = self.root / "ImageSets" / "Main" / f"{image_set}.txt" if image_set else None
            if listing is not None and listing.is_file():
                ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
            elif listing is not None and "image_set" in self.source.model_fields_set:
                raise FileNotFoundError(f"ingest.source.image_set: {listing} not found (null: every Annotations/*.xml)")
            else:
                ids = [p.stem for p in annotations.glob("*.xml")]
            self._ids = sorted(set(ids))
        return list(self._ids)

    def _scan(self) -> None:
        """Parse every XML once (on the submitting side): the class names and the bad parts."""
        names, bad = set(), {}
        for image_id in self.ids():
            try:
                annotation = parse_annotation(self._annotation_path(image_id), self.given_names)
            except RecordError as exc:
                bad[f"{FILE_ITEM}{image_id}"] = str(exc)
                continue
            for k, obj in enumerate(annotation.objects):
                if obj.problem:
                    bad[f"{OBJECT_ITEM}{image_id}/{k}"] = f"{annotation.path}:{obj.line}: object {k}: {obj.problem}"
                else:
                    names.add(obj.name)
        self._names = self.given_names or sorted(names)
        self._bad = bad
        if not self._names:
            raise ValueError(f"ingest.source: no object names found under {self.root / 'Annotations'}; "
                             f"expected at least one good <object>, or ingest.source.class_names")

    def class_names(self) -> list[str]:
        if self._names is None:
            if self.given_names:
                self._names = list(self.given_names)
            else:
                self._scan()
        return list(self._names)

    def list_items(self) -> list[str]:
        if self._bad is None:
            self._scan()
        failed_files = {item[len(FILE_ITEM):] for item in self._bad if item.startswith(FILE_ITEM)}
        return [f"{IMAGE_ITEM}{i}" for i in self.ids() if i not in failed_files] + list(self._bad)

    # -- reading ---------------------------------------------------------------------------------
    def read(self, item: str) -> Iterator[dict]:
        if item.startswith(IMAGE_ITEM):
            yield self.record(item[len(IMAGE_ITEM):])
            return
        if item.startswith(FILE_ITEM):
            parse_annotation(self._annotation_path(item[len(FILE_ITEM):]), self.given_names)  # raises its reason
            raise RecordError(f"{item}: the annotation parses now; it did not when the items were listed")
        if item.startswith(OBJECT_ITEM):
            image_id, k = item[len(OBJECT_ITEM):].rsplit("/", 1)
            annotation = parse_annotation(self._annotation_path(image_id), self.class_names())
            obj = annotation.objects[int(k)]
            raise RecordError(f"{annotation.path}:{obj.line}: object {k}: {obj.problem or 'no longer bad'}")
        raise RecordError(f"{item}: expected an item 'image/<id>', 'object/<id>/<k>' or 'file/<id>'")

    def record(self, image_id: str) -> dict:
        """The record of one image: pixels, boxes and labels; difficult objects as ignore regions."""
        names = self.class_names()
        annotation = parse_annotation(self._annotation_path(image_id), names)
        path = self.root / "JPEGImages" / annotation.filename
        try:
            pixels = decode_image(path.read_bytes(), 3)
        except OSError as exc:
            raise RecordError(f"{path}: cannot be read ({exc.strerror or exc}); named by {annotation.path}") from None
        except RecordError as exc:
            raise RecordError(f"{path}: {exc}") from None
        height, width = pixels.shape[:2]
        if (height, width) != (annotation.height, annotation.width):
            raise RecordError(f"{path}: {annotation.path} says {annotation.width}x{annotation.height}, "
                              f"the file is {width}x{height}")
        good = [obj for obj in annotation.objects if obj.problem is None]
        pixel_boxes = np.array([obj.box for obj in good], np.float64).reshape(-1, 4)
        rel = box_ops.to_numpy(box_ops.clip(box_ops.convert(pixel_boxes, "xyxy", "rel_xyxy", (height, width)),
                                            "rel_xyxy")).reshape(-1, 4).astype(np.float32)
        labels = np.array([names.index(obj.name) for obj in good], np.int64)
        difficult = np.array([obj.difficult for obj in good], bool)
        truncated = np.array([obj.truncated for obj in good], bool)
        order = np.concatenate([np.flatnonzero(~difficult), np.flatnonzero(difficult)])  # storage order
        return {
            "id": image_id,
            "source": str(path),
            "image": pixels,
            "boxes": rel[~difficult],
            "box_labels": labels[~difficult],
            "crowd_boxes": rel[difficult],
            "crowd_labels": labels[difficult],
            "box_flags": {"difficult": difficult[order].astype(np.int64), "truncated": truncated[order].astype(np.int64)},
        }

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        digest.update(f"{self.source.image_set}\0{self.given_names}\n".encode())
        images = self.root / "JPEGImages"
        paths = [self._annotation_path(i) for i in self.ids()] + (sorted(images.iterdir()) if images.is_dir() else [])
        for path in paths:  # every annotation read and every image it may name
            try:
                stat = path.stat()
                digest.update(f"{path.parent.name}/{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{path.parent.name}/{path.name}\0missing\n".encode())
        return "voc:" + digest.hexdigest()[:16]

    def schema_extras(self) -> dict:
        return {"root": str(self.root), "image_set": self.source.image_set}
