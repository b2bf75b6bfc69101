"""coco: a COCO instances JSON and its image directory, for detection.

    ingest.source = {"name": "coco", "annotations": "annotations/instances_val2017.json", "images": "val2017"}

- Boxes: COCO's `bbox` is [x, y, width, height] in pixels; records hold xyxy normalised to the
  image (`rel_xyxy`), converted by models/detection/boxes.py. A box overshooting its image by at most
  `EDGE_TOLERANCE` pixels (rounding in real annotation files) is clipped to it.
- Classes: category ids, sorted, become contiguous labels 0..K-1; `class_names` are the category
  names and schema.json keeps the id of each label (`coco_category_ids`), so predictions can be
  written back in COCO ids.
- Crowd regions (`iscrowd: 1`) are left out of `boxes` (no training target) and kept in the
  record's `crowd_boxes` [C, 4] (rel_xyxy) and `crowd_labels` [C] for evaluation to match as
  ignore; the shards hold them with `image/object/is_crowd` = 1 (components/examples/).
- Images without any annotation are kept as negatives (no boxes).
- Bad input goes to the dead letter, and only the bad part: an image that is missing, cannot be
  decoded or does not have the size the JSON states fails alone; an annotation that names an
  unknown image or category, or whose box is empty or lies outside its image, is its own item
  (`annotation/<id>`) whose read raises RecordError with the reason, while its image is ingested
  without it.

One item is one image (`image/<id>`) or one bad annotation. The example id is the image's
`file_name`, so splits stay put when images are added.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np

from components.examples import RecordError, decode_image
from models.detection import boxes as box_ops

TASKS = ("detection",)
EDGE_TOLERANCE = 1.0
"""Pixels a box may overshoot its image before the annotation counts as bad (then it is clipped)."""
IMAGE_ITEM, ANNOTATION_ITEM = "image/", "annotation/"


class _Index:
    """The instances JSON, checked once: images by id, good annotations by image, bad ones with reasons."""

    def __init__(self, path: Path):
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"ingest.source.annotations: {path} not found") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"ingest.source.annotations: {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
        if missing:
            raise ValueError(f"ingest.source.annotations: {path} expected COCO lists {missing} at the top level, "
                             f"found keys {sorted(data)}")
        categories = sorted(data["categories"], key=lambda c: c["id"])
        if not categories:
            raise ValueError(f"ingest.source.annotations: {path} defines no categories")
        self.category_ids = [int(c["id"]) for c in categories]
        self.class_names = [str(c.get("name", c["id"])) for c in categories]
        self.label_of = {cid: k for k, cid in enumerate(self.category_ids)}
        self.images = {int(image["id"]): image for image in data["images"]}
        self.annotations = defaultdict(list)  # image id -> good annotations
        self.bad = {}  # annotation id -> reason
        for position, annotation in enumerate(data["annotations"]):
            ann_id = annotation.get("id", f"#{position}")
            reason = self._problem(annotation)
            if reason:
                self.bad[str(ann_id)] = f"annotation {ann_id}: {reason}"
            else:
                self.annotations[int(annotation["image_id"])].append(annotation)

    def _problem(self, annotation: dict):
        image = self.images.get(annotation.get("image_id"))
        if image is None:
            return f"image_id {annotation.get('image_id')!r} names no image in the file"
        if annotation.get("category_id") not in self.label_of:
            return (f"category_id {annotation.get('category_id')!r} is not among the categories "
                    f"{self.category_ids}")
        bbox = annotation.get("bbox")
        if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in bbox)):
            return f"bbox expected [x, y, width, height] of numbers, got {bbox!r}"
        x, y, w, h = (float(v) for v in bbox)
        width, height = float(image["width"]), float(image["height"])
        where = f"(image {image['id']}, {image.get('file_name')}, {image['width']}x{image['height']})"
        if w <= 0 or h <= 0:
            return f"bbox {list(bbox)} is empty {where}"
        overshoots = (x < -EDGE_TOLERANCE or y < -EDGE_TOLERANCE or x + w > width + EDGE_TOLERANCE
                      or y + h > height + EDGE_TOLERANCE)
        empty_inside = min(x + w, width) <= max(x, 0.0) or min(y + h, height) <= max(y, 0.0)
        if overshoots or empty_inside:
            return f"bbox {list(bbox)} lies outside its image {where}"
        return None


class Reader:
    def __init__(self, source_config, ingest_config):
        if ingest_config.task not in TASKS:
            raise ValueError(f"ingest.source: the coco source gives boxes, expected ingest.task in {TASKS}, "
                             f"got {ingest_config.task!r}")
        self.source = source_config
        self.annotations_path = Path(source_config.annotations).expanduser()
        self.images_dir = Path(source_config.images).expanduser()
        self._index = None

    def __getstate__(self):  # Beam pickles the reader: workers load the index themselves
        return {**self.__dict__, "_index": None}

    @property
    def index(self) -> _Index:
        if self._index is None:
            self._index = _Index(self.annotations_path)
        return self._index

    def class_names(self) -> list[str]:
        return list(self.index.class_names)

    def list_items(self) -> list[str]:
        return ([f"{IMAGE_ITEM}{image_id}" for image_id in sorted(self.index.images)]
                + [f"{ANNOTATION_ITEM}{ann_id}" for ann_id in self.index.bad])

    def read(self, item: str) -> Iterator[dict]:
        if item.startswith(ANNOTATION_ITEM):
            raise RecordError(self.index.bad.get(item[len(ANNOTATION_ITEM):], f"{item}: not a bad annotation"))
        if not item.startswith(IMAGE_ITEM):
            raise RecordError(f"{item}: expected an item 'image/<id>' or 'annotation/<id>'")
        yield self.record(int(item[len(IMAGE_ITEM):]))

    def record(self, image_id: int) -> dict:
        """The record of one image: pixels, boxes and labels, crowd regions apart."""
        image = self.index.images[image_id]
        path = self.images_dir / image["file_name"]
        try:
            pixels = decode_image(path.read_bytes(), 3)
        except OSError as exc:
            raise RecordError(f"image {image_id} ({path}): cannot be read ({exc.strerror or exc})") from None
        except RecordError as exc:
            raise RecordError(f"image {image_id} ({path}): {exc}") from None
        height, width = pixels.shape[:2]
        if (height, width) != (int(image["height"]), int(image["width"])):
            raise RecordError(f"image {image_id} ({path}): the JSON says {image['width']}x{image['height']}, "
                              f"the file is {width}x{height}")
        annotations = self.index.annotations.get(image_id, [])
        xywh = np.array([a["bbox"] for a in annotations], np.float64).reshape(-1, 4)
        rel = box_ops.to_numpy(box_ops.clip(box_ops.convert(xywh, "xywh", "rel_xyxy", (height, width)), "rel_xyxy"))
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in annotations], bool)
        labels = np.array([self.index.label_of[a["category_id"]] for a in annotations], np.int64)
        return {
            "id": str(image["file_name"]),
            "source": str(path),
            "image": pixels,
            "boxes": rel[~crowd].astype(np.float32).reshape(-1, 4),
            "box_labels": labels[~crowd],
            "crowd_boxes": rel[crowd].astype(np.float32).reshape(-1, 4),
            "crowd_labels": labels[crowd],
        }

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        stat = self.annotations_path.stat()
        digest.update(f"{self.annotations_path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        for image_id in sorted(self.index.images):
            path = self.images_dir / self.index.images[image_id]["file_name"]
            try:
                stat = path.stat()
                digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{path.name}\0missing\n".encode())
        return "coco:" + digest.hexdigest()[:16]

    def schema_extras(self) -> dict:
        return {"coco_category_ids": list(self.index.category_ids), "annotations": str(self.annotations_path),
                "images": str(self.images_dir)}
