"""The voc source: 1-based pixel boxes normalised, difficult objects as ignore regions with their
flags kept, ImageSets respected, each bad file or object reported with its path and line."""
import json
import logging

import numpy as np
import pytest

from components import examples as ex
from components.ingest import stage as ingest
from components.examples import RecordError
from components.sources.voc import Reader
from pipeline.config import ConfigError, parse_config
from pipeline.stage import ExecutionContext
from tests.components.sources.trees import NAMES, write_voc

XML = """<annotation>
  <filename>{filename}</filename>
  <size><width>32</width><height>16</height><depth>3</depth></size>
  <object>
    <name>dog</name><truncated>1</truncated><difficult>0</difficult>
    <bndbox><xmin>5</xmin><ymin>3</ymin><xmax>12</xmax><ymax>8</ymax></bndbox>
  </object>
  <object>
    <name>cat</name><difficult>1</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>32</xmax><ymax>16</ymax></bndbox>
  </object>
  <object>
    <name>cat</name>
    <bndbox><xmin>40</xmin><ymin>1</ymin><xmax>50</xmax><ymax>8</ymax></bndbox>
  </object>
</annotation>
"""


def _config(root, **source):
    return {"ingest": {"task": "detection", "num_shards": 1, "max_bad_fraction": 0.9,
                       "source": {"name": "voc", "path": str(root), **source}}}


def _reader(root, **source):
    cfg = parse_config(_config(root, **source))
    return Reader(cfg.ingest.source, cfg.ingest)


@pytest.fixture()
def voc(tmp_path):
    from PIL import Image

    root = tmp_path / "VOC"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(np.full((16, 32, 3), 90, np.uint8)).save(root / "JPEGImages" / "a.jpg")
    (root / "Annotations" / "a.xml").write_text(XML.format(filename="a.jpg"))
    (root / "Annotations" / "broken.xml").write_text("<annotation>\n  <filename>x.jpg</filename>\n  <size>\n</annotation>\n")
    (root / "Annotations" / "nofile.xml").write_text(XML.format(filename="missing.jpg"))
    (root / "Annotations" / "unlisted.xml").write_text(XML.format(filename="a.jpg"))
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("a\nbroken\nnofile\n")
    return root


def test_boxes_difficult_and_truncated(voc):
    reader = _reader(voc)
    assert reader.class_names() == ["cat", "dog"]
    (record,) = reader.read("image/a")
    assert record["id"] == "a" and record["image"].shape == (16, 32, 3)
    # dog: <xmin>5 .. <xmax>12 (1-based, inclusive) -> pixel edges 4..12 of 32; y 2..8 of 16
    np.testing.assert_allclose(record["boxes"], [[4 / 32, 2 / 16, 12 / 32, 8 / 16]], atol=1e-6)
    assert record["box_labels"].tolist() == [1]
    # the difficult cat is an ignore region (the crowd path), the whole image
    np.testing.assert_allclose(record["crowd_boxes"], [[0, 0, 1, 1]], atol=1e-6)
    assert record["crowd_labels"].tolist() == [0]
    assert record["box_flags"]["difficult"].tolist() == [0, 1]
    assert record["box_flags"]["truncated"].tolist() == [1, 0]


def test_image_set_and_bad_parts_are_items_with_path_and_line(voc):
    reader = _reader(voc)
    items = reader.list_items()
    assert "image/unlisted" not in items  # not in ImageSets/Main/trainval.txt
    assert items == ["image/a", "image/nofile", "object/a/2", "file/broken", "object/nofile/2"]
    with pytest.raises(RecordError, match=r"broken.xml:4: not valid XML"):
        list(reader.read("file/broken"))
    with pytest.raises(RecordError, match=r"a.xml:12: object 2: <bndbox> \['40', '1', '50', '8'\] lies outside its image"):
        list(reader.read("object/a/2"))
    with pytest.raises(RecordError, match=r"missing.jpg: cannot be read .* named by .*nofile.xml"):
        list(reader.read("image/nofile"))
    assert "image/unlisted" in _reader(voc, image_set=None).list_items()
    with pytest.raises(FileNotFoundError, match="ImageSets/Main/test.txt not found"):
        _reader(voc, image_set="test").list_items()


def test_unknown_names_are_bad_objects_when_class_names_are_given(voc):
    reader = _reader(voc, class_names=["dog"])
    assert reader.class_names() == ["dog"]
    assert "object/a/1" in reader.list_items()
    with pytest.raises(RecordError, match=r"a.xml:8: object 1: name 'cat' is not among"):
        list(reader.read("object/a/1"))


def test_config_refuses_unknown_keys_and_other_tasks(voc):
    with pytest.raises(ConfigError, match="ingest.source.split: unknown key"):
        parse_config(_config(voc, split="train"))
    cfg = parse_config({"ingest": {"task": "classification", "source": {"name": "voc", "path": str(voc)}}})
    with pytest.raises(ValueError, match="the voc source gives boxes"):
        Reader(cfg.ingest.source, cfg.ingest)


def test_ingest_keeps_flags_and_reports_bad_parts(voc):
    root = voc.parent
    cfg = parse_config(_config(voc))
    out = root / "examples"
    ctx = ExecutionContext(config=cfg, params=ingest.STAGE.parameters(cfg), inputs={}, outputs={"examples": out},
                           work_dir=root / "work", root=root, run_id=1, execution_id=1, log=logging.getLogger("test"))
    ingest.STAGE.executor(ctx)
    dead = {d["item"]: d["reason"] for d in map(json.loads, (out / ex.DEAD_LETTER_FILE).read_text().splitlines())}
    assert set(dead) == {"file/broken", "object/a/2", "image/nofile", "object/nofile/2"}
    assert "broken.xml:4" in dead["file/broken"] and "a.xml:12" in dead["object/a/2"]
    (record,) = [r for split in ex.SPLITS for r in ex.iter_records(out, split)]
    assert record["box_labels"].tolist() == [1] and record["crowd_labels"].tolist() == [0]
    assert record["box_flags"]["difficult"].tolist() == [0, 1] and record["box_flags"]["truncated"].tolist() == [1, 0]


def test_a_written_tree_reads_back_the_synthetic_boxes(tmp_path):
    root = write_voc(tmp_path / "voc", count=6, difficult_every=3)
    reader = _reader(root)
    assert reader.class_names() == sorted(NAMES)
    records = [r for item in reader.list_items() for r in reader.read(item)]
    assert len(records) == 6
    difficult = sum(len(r["crowd_labels"]) for r in records)
    total = difficult + sum(len(r["box_labels"]) for r in records)
    assert difficult == total // 3


def test_augmented_copies_keep_the_flags_unless_a_crop_may_drop_boxes(voc):
    from components.augment.augmentations import Plan, apply_plan

    (record,) = _reader(voc).read("image/a")
    flipped = apply_plan(record, Plan(horizontal_flip=True))
    assert flipped["box_flags"]["difficult"].tolist() == [0, 1]
    ex.encode_example(flipped)  # still one flag per stored box
    cropped = apply_plan(record, Plan(crop=(0, 0, 8, 16), min_visible_fraction=0.5))
    assert "box_flags" not in cropped
    ex.encode_example(cropped)
    with pytest.raises(RecordError, match=r"box_flags.difficult: expected one of \['difficult', 'truncated'\] with 2"):
        ex.encode_example({**record, "box_flags": {"difficult": [1]}})
