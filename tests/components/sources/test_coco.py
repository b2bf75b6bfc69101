"""The coco source: boxes converted and normalised, ids to labels, crowds apart, negatives kept,
bad annotations reported on their own while their images are ingested."""
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components import examples as ex
from components.ingest import stage as ingest
from components.examples import RecordError
from components.sources.coco import Reader
from pipeline.config import parse_config
from pipeline.stage import ExecutionContext


def _write_png(path: Path, width: int, height: int, value: int) -> None:
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)


@pytest.fixture()
def coco(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _write_png(images / "a.png", 32, 16, 10)       # two objects and a crowd
    _write_png(images / "b.png", 16, 16, 20)       # no annotation: a negative
    _write_png(images / "c.png", 16, 16, 30)       # one object; one box outside it
    _write_png(images / "wrong_size.png", 8, 8, 40)
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 32, "height": 16},
            {"id": 2, "file_name": "b.png", "width": 16, "height": 16},
            {"id": 3, "file_name": "c.png", "width": 16, "height": 16},
            {"id": 4, "file_name": "wrong_size.png", "width": 16, "height": 16},
            {"id": 5, "file_name": "missing.png", "width": 16, "height": 16},
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [4, 2, 8, 6], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [16, 0, 16, 16], "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 3, "bbox": [0, 8, 8, 8], "iscrowd": 1},
            {"id": 13, "image_id": 3, "category_id": 3, "bbox": [2, 2, 4, 4], "iscrowd": 0},
            {"id": 14, "image_id": 3, "category_id": 7, "bbox": [10, 10, 20, 4], "iscrowd": 0},   # past the right edge
            {"id": 15, "image_id": 99, "category_id": 7, "bbox": [0, 0, 4, 4], "iscrowd": 0},     # unknown image
            {"id": 16, "image_id": 3, "category_id": 5, "bbox": [0, 0, 4, 4], "iscrowd": 0},      # unknown category
            {"id": 17, "image_id": 3, "category_id": 3, "bbox": [0, 0, 16.5, 16.4], "iscrowd": 0},  # rounding: clipped
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return tmp_path, path, images


def _config(path, images, max_bad_fraction=0.5):
    return {"ingest": {"task": "detection", "num_shards": 1, "max_bad_fraction": max_bad_fraction,
                       "source": {"name": "coco", "annotations": str(path), "images": str(images)}}}


def _reader(path, images):
    cfg = parse_config(_config(path, images))
    return Reader(cfg.ingest.source, cfg.ingest)


def test_classes_and_items(coco):
    _, path, images = coco
    reader = _reader(path, images)
    assert reader.class_names() == ["cat", "dog"]  # sorted by category id: 3 -> 0, 7 -> 1
    assert reader.schema_extras()["coco_category_ids"] == [3, 7]
    assert reader.list_items() == ["image/1", "image/2", "image/3", "image/4", "image/5",
                                   "annotation/14", "annotation/15", "annotation/16"]


def test_boxes_are_normalised_xyxy_and_crowds_kept_apart(coco):
    _, path, images = coco
    reader = _reader(path, images)
    (record,) = reader.read("image/1")
    assert record["id"] == "a.png" and record["image"].shape == (16, 32, 3)
    # [4, 2, 8, 6] in a 32 x 16 image -> x 4..12 / 32, y 2..8 / 16
    np.testing.assert_array_equal(record["boxes"], [[4 / 32, 2 / 16, 12 / 32, 8 / 16], [0.5, 0.0, 1.0, 1.0]])
    assert record["box_labels"].tolist() == [1, 0]
    np.testing.assert_array_equal(record["crowd_boxes"], [[0.0, 0.5, 0.25, 1.0]])
    (negative,) = reader.read("image/2")
    assert negative["boxes"].shape == (0, 4) and negative["box_labels"].shape == (0,)
    (clipped,) = reader.read("image/3")  # the valid boxes only; 16.5 x 16.4 is within a pixel: clipped
    np.testing.assert_array_equal(clipped["boxes"], [[2 / 16, 2 / 16, 6 / 16, 6 / 16], [0, 0, 1, 1]])


def test_bad_annotations_and_images_raise_with_reasons(coco):
    _, path, images = coco
    reader = _reader(path, images)
    with pytest.raises(RecordError, match=r"annotation 14: bbox \[10, 10, 20, 4\] lies outside its image \(image 3, c.png, 16x16\)"):
        list(reader.read("annotation/14"))
    with pytest.raises(RecordError, match="annotation 15: image_id 99 names no image"):
        list(reader.read("annotation/15"))
    with pytest.raises(RecordError, match=r"annotation 16: category_id 5 is not among the categories \[3, 7\]"):
        list(reader.read("annotation/16"))
    with pytest.raises(RecordError, match="the JSON says 16x16, the file is 8x8"):
        list(reader.read("image/4"))
    with pytest.raises(RecordError, match="image 5 .*missing.png.*cannot be read"):
        list(reader.read("image/5"))


def test_reader_refuses_other_tasks_and_bad_json(coco, tmp_path):
    _, path, images = coco
    config = _config(path, images)
    config["ingest"]["task"] = "classification"
    cfg = parse_config(config)
    with pytest.raises(ValueError, match="expected ingest.task in \\('detection',\\), got 'classification'"):
        Reader(cfg.ingest.source, cfg.ingest)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=r"expected COCO lists \['annotations', 'categories'\]"):
        _reader(broken, images).class_names()


def test_fingerprint_follows_the_files(coco):
    _, path, images = coco
    before = _reader(path, images).fingerprint()
    _write_png(images / "b.png", 16, 16, 21)
    (images / "b.png").touch()
    assert _reader(path, images).fingerprint() != before


def test_ingest_reports_bad_annotations_and_keeps_every_valid_image(coco):
    root, path, images = coco
    cfg = parse_config(_config(path, images, max_bad_fraction=0.9))  # 5 bad items of 8 in this tiny file
    out = root / "examples"
    ctx = ExecutionContext(config=cfg, params=ingest.STAGE.parameters(cfg), inputs={}, outputs={"examples": out},
                           work_dir=root / "work", root=root, run_id=1, execution_id=1, log=logging.getLogger("test"))
    ingest.STAGE.executor(ctx)
    dead = [json.loads(line) for line in (out / ex.DEAD_LETTER_FILE).read_text().splitlines()]
    reasons = {d["item"]: d["reason"] for d in dead}
    assert set(reasons) == {"annotation/14", "annotation/15", "annotation/16", "image/4", "image/5"}
    assert "lies outside its image" in reasons["annotation/14"] and "names no image" in reasons["annotation/15"]
    records = {r["id"]: r for split in ex.SPLITS for r in ex.iter_records(out, split)}
    assert set(records) == {"a.png", "b.png", "c.png"}
    assert records["c.png"]["box_labels"].tolist() == [0, 0]  # annotation 14 left out, 13 and 17 kept
    assert records["b.png"]["boxes"].shape == (0, 4)
    assert ex.read_schema(out)["class_names"] == ["cat", "dog"]
