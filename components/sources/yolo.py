"""yolo: an Ultralytics/Darknet YOLO tree (images/, labels/*.txt, data.yaml), for detection.

    ingest.source = {"name": "yolo", "path": "datasets/coco8"}

    path/data.yaml                names: [person, car]   (or {0: person, 1: car}); nc optional
    path/images/train/0001.jpg    any depth below images/
    path/labels/train/0001.txt    the same relative path, .txt: one "class cx cy w h" per line

- Boxes: each line is a class id and the box's centre, width and height normalised to the image;
  records hold xyxy normalised (`rel_xyxy`), converted by models/boxes.py. A coordinate past the
  image by at most `EDGE_TOLERANCE` (rounding in exported labels) is clipped to it.
- Classes: `names` in `data.yaml` (`ingest.source.data_yaml`, default `<path>/data.yaml`); label k
  is the k-th name. YOLO's own train/val lists are not used: splits come from the id hash as for
  every source, over every image below images/.
- An image without a label file, or with an empty one, is a negative (no boxes), as in YOLO.
- Bad input goes to the dead letter, only the bad part, with its path and line number: a label
  line that is not five numbers, names a class outside data.yaml or whose box is empty or outside
  the image is its own item (`line/<label path>:<n>`) while its image is ingested without it; a
  label file with no image beside it is an item of its own (`label/<path>`); an image that cannot
  be decoded fails alone (`image/<path>`).

The example id is the image's path below images/, so splits stay put when images are added.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from components.examples import RecordError, decode_image
from models.detection import boxes as box_ops

TASKS = ("detection",)
IMAGE_ITEM, LINE_ITEM, LABEL_ITEM = "image/", "line/", "label/"
EDGE_TOLERANCE = 1e-3
"""How far (as a fraction of the image) a box may overshoot before its line counts as bad."""


def read_names(path: Path) -> list[str]:
    """Class names from a YOLO data.yaml: `names` as a list, or a {id: name} mapping with ids 0..K-1."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"ingest.source.data_yaml: {path} not found (it names the classes: names: [...])") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ValueError(f"ingest.source.data_yaml: {path}{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        ids = sorted(names)
        if ids != list(range(len(ids))):
            raise ValueError(f"ingest.source.data_yaml: {path} names expected ids 0..{len(ids) - 1}, got {ids}")
        names = [names[i] for i in ids]
    if not isinstance(names, list) or not names:
        raise ValueError(f"ingest.source.data_yaml: {path} expected `names` as a non-empty list or {{id: name}} "
                         f"mapping, got {names!r}")
    if isinstance(data.get("nc"), int) and data["nc"] != len(names):
        raise ValueError(f"ingest.source.data_yaml: {path} says nc: {data['nc']} but lists {len(names)} names")
    return [str(n) for n in names]


def parse_line(text: str, num_classes: int) -> tuple:
    """One label line -> (class id, rel_xyxy box); ValueError with the reason when it is bad."""
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields 'class cx cy w h', got {len(fields)}: {text.strip()!r}")
    try:
        class_id = int(fields[0])
    except ValueError:
        raise ValueError(f"class expected an integer id, got {fields[0]!r}") from None
    if not 0 <= class_id < num_classes:
        raise ValueError(f"class {class_id} expected in 0..{num_classes - 1} (the names in data.yaml)")
    try:
        cx, cy, w, h = (float(v) for v in fields[1:])
    except ValueError:
        raise ValueError(f"cx cy w h expected numbers, got {fields[1:]}") from None
    if not all(np.isfinite([cx, cy, w, h])):
        raise ValueError(f"cx cy w h expected finite numbers, got {fields[1:]}")
    if w <= 0 or h <= 0:
        raise ValueError(f"box is empty (w {w:g}, h {h:g})")
    box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    if min(box) < -EDGE_TOLERANCE or max(box) > 1 + EDGE_TOLERANCE:
        raise ValueError(f"box (cx {cx:g}, cy {cy:g}, w {w:g}, h {h:g}) lies outside the image "
                         f"(expected normalised coordinates in [0, 1])")
    return class_id, box


class Reader:
    def __init__(self, source_config, ingest_config):
        if ingest_config.task not in TASKS:
            raise ValueError(f"ingest.source: the yolo source gives boxes, expected ingest.task in {TASKS}, "
                             f"got {ingest_config.task!r}")
        self.source = source_config
        self.root = Path(source_config.path).expanduser()
        self.data_yaml = Path(source_config.data_yaml).expanduser() if source_config.data_yaml else self.root / "data.yaml"
        self.extensions = {e.lower() if e.startswith(".") else "." + e.lower() for e in source_config.extensions}
        self._names: Optional[list] = None

    # -- which files -----------------------------------------------------------------------------
    def class_names(self) -> list[str]:
        if self._names is None:
            self._names = read_names(self.data_yaml)
        return list(self._names)

    def _images(self) -> list[Path]:
        images = self.root / "images"
        if not images.is_dir():
            raise FileNotFoundError(f"ingest.source.path: expected a YOLO tree with images/ and labels/, "
                                    f"{images} is not a folder")
        return sorted(p for p in images.rglob("*")
                      if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in self.extensions)

    def _label_path(self, image: Path) -> Path:
        return (self.root / "labels" / image.relative_to(self.root / "images")).with_suffix(".txt")

    def _lines(self, label: Path) -> list[tuple]:
        """(line number, text) of each non-blank line; [] when the file is absent (a negative)."""
        try:
            text = label.read_text()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise RecordError(f"{label}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
        return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]

    def list_items(self) -> list[str]:
        num_classes = len(self.class_names())
        images = self._images()
        items = [f"{IMAGE_ITEM}{p.relative_to(self.root / 'images').as_posix()}" for p in images]
        for image in images:
            label = self._label_path(image)
            try:
                lines = self._lines(label)
            except RecordError:
                continue  # the image's own read reports it
            for number, text in lines:
                try:
                    parse_line(text, num_classes)
                except ValueError:
                    items.append(f"{LINE_ITEM}{label.relative_to(self.root).as_posix()}:{number}")
        labels_dir = self.root / "labels"
        expected = {self._label_path(p) for p in images}
        if labels_dir.is_dir():
            items += [f"{LABEL_ITEM}{p.relative_to(self.root).as_posix()}" for p in sorted(labels_dir.rglob("*.txt"))
                      if p not in expected]
        return items

    # -- reading ---------------------------------------------------------------------------------
    def read(self, item: str) -> Iterator[dict]:
        if item.startswith(IMAGE_ITEM):
            yield self.record(self.root / "images" / item[len(IMAGE_ITEM):])
            return
        if item.startswith(LINE_ITEM):
            relative, number = item[len(LINE_ITEM):].rsplit(":", 1)
            label = self.root / relative
            text = dict(self._lines(label)).get(int(number), "")
            try:
                parse_line(text, len(self.class_names()))
            except ValueError as exc:
                raise RecordError(f"{label}:{number}: {exc}") from None
            raise RecordError(f"{label}:{number}: the line parses now; it did not when the items were listed")
        if item.startswith(LABEL_ITEM):
            label = self.root / item[len(LABEL_ITEM):]
            raise RecordError(f"{label}: no image below images/ has this label file's path "
                              f"(expected images/{label.relative_to(self.root / 'labels').with_suffix('.*')})")
        raise RecordError(f"{item}: expected an item 'image/<path>', 'line/<path>:<n>' or 'label/<path>'")

    def record(self, path: Path) -> dict:
        """The record of one image: pixels and the boxes of its good label lines."""
        try:
            pixels = decode_image(path.read_bytes(), 3)
        except OSError as exc:
            raise RecordError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        except RecordError as exc:
            raise RecordError(f"{path}: {exc}") from None
        num_classes = len(self.class_names())
        labels, boxes = [], []
        for _, text in self._lines(self._label_path(path)):
            try:
                class_id, box = parse_line(text, num_classes)
            except ValueError:
                continue  # its own item reports it
            labels.append(class_id)
            boxes.append(box)
        rel = np.array(boxes, np.float64).reshape(-1, 4)
        rel = box_ops.to_numpy(box_ops.clip(rel, "rel_xyxy")).reshape(-1, 4).astype(np.float32)
        keep = (rel[:, 2] > rel[:, 0]) & (rel[:, 3] > rel[:, 1])  # a sliver clipped to nothing
        return {
            "id": path.relative_to(self.root / "images").as_posix(),
            "source": str(path),
            "image": pixels,
            "boxes": rel[keep],
            "box_labels": np.array(labels, np.int64)[keep],
        }

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        paths = [self.data_yaml] + self._images()
        labels_dir = self.root / "labels"
        if labels_dir.is_dir():
            paths += sorted(labels_dir.rglob("*.txt"))
        for path in paths:
            try:
                stat = path.stat()
                name = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)
                digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{path}\0missing\n".encode())
        return "yolo:" + digest.hexdigest()[:16]

    def schema_extras(self) -> dict:
        return {"root": str(self.root), "data_yaml": str(self.data_yaml)}
