"""The yolo source: normalised centre boxes to rel_xyxy, names from data.yaml, negatives kept, each
bad line (and each label file without an image) reported with its path and line number."""
import json
import logging

import numpy as np
import pytest
from PIL import Image

from components import examples as ex
from components.ingest import stage as ingest
from components.examples import RecordError
from components.sources.yolo import Reader, read_names
from pipeline.config import parse_config
from pipeline.stage import ExecutionContext
from tests.components.sources.trees import NAMES, write_yolo


def _config(root, **source):
    return {"ingest": {"task": "detection", "num_shards": 1, "max_bad_fraction": 0.9,
                       "source": {"name": "yolo", "path": str(root), **source}}}


def _reader(root, **source):
    cfg = parse_config(_config(root, **source))
    return Reader(cfg.ingest.source, cfg.ingest)


@pytest.fixture()
def yolo(tmp_path):
    root = tmp_path / "yolo"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "data.yaml").write_text("names:\n  0: cat\n  1: dog\n")
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((16, 32, 3), 60, np.uint8)).save(root / "images" / "train" / f"{name}.png")
    (root / "images" / "train" / "d.png").write_bytes(b"not a png")
    (root / "labels" / "train" / "a.txt").write_text(
        "1 0.25 0.5 0.25 0.5\n"     # dog: x 0.125..0.375, y 0.25..0.75
        "\n"
        "0 0.5 0.5 1.0 1.0005\n"    # cat, the whole image (rounding overshoot clipped)
        "7 0.5 0.5 0.1 0.1\n"       # class 7 of 2
        "0 0.5 0.5 0.1\n"           # four fields
        "0 0.9 0.5 0.4 0.2\n")      # past the right edge
    (root / "labels" / "train" / "b.txt").write_text("")   # c.png has no label file: both negatives
    (root / "labels" / "train" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    return root


def test_names_from_data_yaml(yolo, tmp_path):
    assert _reader(yolo).class_names() == ["cat", "dog"]
    (tmp_path / "list.yaml").write_text("nc: 2\nnames: [a, b]\n")
    assert read_names(tmp_path / "list.yaml") == ["a", "b"]
    (tmp_path / "bad.yaml").write_text("nc: 3\nnames: [a, b]\n")
    with pytest.raises(ValueError, match="says nc: 3 but lists 2 names"):
        read_names(tmp_path / "bad.yaml")
    with pytest.raises(FileNotFoundError, match="ingest.source.data_yaml: .*missing.yaml not found"):
        _reader(yolo, data_yaml=str(tmp_path / "missing.yaml")).class_names()


def test_boxes_negatives_and_bad_lines(yolo):
    reader = _reader(yolo)
    items = reader.list_items()
    assert items == ["image/train/a.png", "image/train/b.png", "image/train/c.png", "image/train/d.png",
                     "line/labels/train/a.txt:4", "line/labels/train/a.txt:5", "line/labels/train/a.txt:6",
                     "label/labels/train/orphan.txt"]
    (record,) = reader.read("image/train/a.png")
    assert record["id"] == "train/a.png" and record["box_labels"].tolist() == [1, 0]
    np.testing.assert_allclose(record["boxes"], [[0.125, 0.25, 0.375, 0.75], [0, 0, 1, 1]], atol=1e-6)
    for item in ("image/train/b.png", "image/train/c.png"):
        (negative,) = reader.read(item)
        assert negative["boxes"].shape == (0, 4)
    reasons = {}
    for item in items[3:]:
        with pytest.raises(RecordError) as caught:
            list(reader.read(item))
        reasons[item] = str(caught.value)
    assert "d.png: image cannot be decoded" in reasons["image/train/d.png"]
    assert reasons["line/labels/train/a.txt:4"].endswith("a.txt:4: class 7 expected in 0..1 (the names in data.yaml)")
    assert "a.txt:5: expected 5 fields 'class cx cy w h', got 4" in reasons["line/labels/train/a.txt:5"]
    assert "a.txt:6: box (cx 0.9, cy 0.5, w 0.4, h 0.2) lies outside the image" in reasons["line/labels/train/a.txt:6"]
    assert "orphan.txt: no image below images/" in reasons["label/labels/train/orphan.txt"]


def test_fingerprint_follows_the_labels(yolo):
    before = _reader(yolo).fingerprint()
    (yolo / "labels" / "train" / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    assert _reader(yolo).fingerprint() != before


def test_ingest_reports_every_bad_line_and_keeps_the_images(yolo):
    root = yolo.parent
    cfg = parse_config(_config(yolo))
    out = root / "examples"
    ctx = ExecutionContext(config=cfg, params=ingest.STAGE.parameters(cfg), inputs={}, outputs={"examples": out},
                           work_dir=root / "work", root=root, run_id=1, execution_id=1, log=logging.getLogger("test"))
    ingest.STAGE.executor(ctx)
    dead = {d["item"]: d["reason"] for d in map(json.loads, (out / ex.DEAD_LETTER_FILE).read_text().splitlines())}
    assert set(dead) == {"image/train/d.png", "line/labels/train/a.txt:4", "line/labels/train/a.txt:5",
                         "line/labels/train/a.txt:6", "label/labels/train/orphan.txt"}
    records = {r["id"]: r for split in ex.SPLITS for r in ex.iter_records(out, split)}
    assert sorted(records) == ["train/a.png", "train/b.png", "train/c.png"]
    assert records["train/a.png"]["box_labels"].tolist() == [1, 0]


def test_a_written_tree_reads_back_the_synthetic_boxes(tmp_path):
    from components.sources.synthetic import synthetic_record
    from pipeline.config import SyntheticSource

    root = write_yolo(tmp_path / "yolo", count=4)
    reader = _reader(root)
    assert reader.class_names() == NAMES
    (record,) = reader.read("image/train/00002.jpg")
    truth = synthetic_record(2, SyntheticSource(num_examples=4, image_size=64, num_classes=3, max_shapes=3,
                                                min_shape_size=0.2, max_shape_size=0.45), "detection")
    np.testing.assert_allclose(record["boxes"], truth["boxes"], atol=1e-5)
    assert record["box_labels"].tolist() == truth["box_labels"].tolist()
