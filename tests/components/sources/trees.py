"""Small Pascal VOC and YOLO trees drawn from the synthetic detection data, for the voc and yolo
sources' tests and for configs/detection_voc.json and configs/detection_yolo.json.

    python -m tests.components.sources.trees voc data/voc      # then: convpipe run --config configs/detection_voc.json
    python -m tests.components.sources.trees yolo data/yolo

The images are the synthetic source's (shapes on noisy backgrounds, boxes exact), so a detector
trained on a tree learns the same thing as on `synthetic`; every `difficult_every`-th object is
marked difficult, and boxes touching an edge are marked truncated.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from components.sources.synthetic import class_names as synthetic_names
from components.sources.synthetic import synthetic_record
from pipeline.config import SyntheticSource

NAMES = synthetic_names(3, "detection")


def _records(count: int, image_size: int, seed: int):
    source = SyntheticSource(num_examples=count, image_size=image_size, num_classes=3, max_shapes=3,
                             min_shape_size=0.2, max_shape_size=0.45, noise=0.08, seed=seed)
    for index in range(count):
        yield index, synthetic_record(index, source, "detection")


def write_voc(root: Path, count: int = 40, image_size: int = 64, seed: int = 0, difficult_every: int = 5,
              image_set: str = "trainval") -> Path:
    """root/Annotations/<id>.xml, root/JPEGImages/<id>.jpg, root/ImageSets/Main/<image_set>.txt."""
    root = Path(root)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids, objects_seen = [], 0
    for index, record in _records(count, image_size, seed):
        image_id = f"{2007_000000 + index:06d}"
        ids.append(image_id)
        height, width = record["image"].shape[:2]
        Image.fromarray(record["image"]).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        objects = []
        for box, label in zip(record["boxes"], record["box_labels"]):
            x0, y0, x1, y1 = box * [width, height, width, height]
            difficult = int(difficult_every > 0 and objects_seen % difficult_every == difficult_every - 1)
            truncated = int(x0 <= 0 or y0 <= 0 or x1 >= width or y1 >= height)
            objects_seen += 1
            objects.append(f"""  <object>
    <name>{NAMES[int(label)]}</name>
    <pose>Unspecified</pose>
    <truncated>{truncated}</truncated>
    <difficult>{difficult}</difficult>
    <bndbox>
      <xmin>{int(round(x0)) + 1}</xmin>
      <ymin>{int(round(y0)) + 1}</ymin>
      <xmax>{int(round(x1))}</xmax>
      <ymax>{int(round(y1))}</ymax>
    </bndbox>
  </object>
""")
        (root / "Annotations" / f"{image_id}.xml").write_text(f"""<annotation>
  <folder>VOC2007</folder>
  <filename>{image_id}.jpg</filename>
  <size>
    <width>{width}</width>
    <height>{height}</height>
    <depth>3</depth>
  </size>
  <segmented>0</segmented>
{''.join(objects)}</annotation>
""")
    (root / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def write_yolo(root: Path, count: int = 40, image_size: int = 64, seed: int = 0) -> Path:
    """root/data.yaml, root/images/train/<n>.jpg and root/labels/train/<n>.txt (class cx cy w h)."""
    root = Path(root)
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/train\n"
                                    f"nc: {len(NAMES)}\nnames: [{', '.join(NAMES)}]\n")
    for index, record in _records(count, image_size, seed):
        stem = f"{index:05d}"
        Image.fromarray(record["image"]).save(root / "images" / "train" / f"{stem}.jpg", quality=95)
        lines = []
        for (x0, y0, x1, y1), label in zip(np.asarray(record["boxes"], np.float64), record["box_labels"]):
            lines.append(f"{int(label)} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} {y1 - y0:.6f}\n")
        (root / "labels" / "train" / f"{stem}.txt").write_text("".join(lines))
    return root


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("voc", "yolo"):
        sys.exit("usage: python -m tests.components.sources.trees voc|yolo DIRECTORY")
    written = (write_voc if sys.argv[1] == "voc" else write_yolo)(Path(sys.argv[2]))
    print(f"wrote a {sys.argv[1]} tree under {written}")
