"""mask_folder: id and palette masks read as they are; bad pairs fail alone, naming their paths."""
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components import examples as ex
from components.ingest import stage as ingest
from components.examples import RecordError
from components.sources.mask_folder import Reader
from pipeline.config import IngestSection, MaskFolderSource, parse_config
from pipeline.stage import ExecutionContext


def _save_image(path: Path, height: int, width: int, seed: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def _save_mask(path: Path, ids: np.ndarray, palette: bool = False):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(ids, np.uint8), mode="L")
    if palette:  # VOC style: indices are the ids, colours only for viewing
        image = image.convert("P")
        image.putpalette([(37 * i) % 256 for i in range(256 * 3)])
    image.save(path)


def _reader(root: Path, **kwargs) -> Reader:
    source = MaskFolderSource(path=str(root), num_classes=kwargs.pop("num_classes", 3), **kwargs)
    return Reader(source, IngestSection(task="segmentation", source=source))


MASK = np.array([[0, 1, 1, 2],
                 [0, 255, 2, 2],
                 [0, 0, 1, 0]], np.uint8)


def test_reads_id_masks_and_palette_masks_with_their_indices(tmp_path):
    pixels = _save_image(tmp_path / "images" / "a.png", 3, 4)
    _save_mask(tmp_path / "masks" / "a.png", MASK)
    _save_image(tmp_path / "images" / "sub" / "b.jpg", 3, 4, seed=1)
    _save_mask(tmp_path / "masks" / "sub" / "b.png", MASK[::-1], palette=True)
    assert Image.open(tmp_path / "masks" / "sub" / "b.png").mode == "P"
    reader = _reader(tmp_path)
    items = reader.list_items()
    assert [Path(i).relative_to(tmp_path).as_posix() for i in items] == ["images/a.png", "images/sub/b.jpg"]
    (a,), (b,) = (list(reader.read(item)) for item in items)
    assert a["id"] == "a" and b["id"] == "sub/b"
    assert a["source"] == str(tmp_path / "images" / "a.png")
    np.testing.assert_array_equal(a["image"], pixels)
    np.testing.assert_array_equal(a["mask"], MASK)  # the ignore value stays in the mask
    np.testing.assert_array_equal(b["mask"], MASK[::-1])
    assert b["image"].shape == (3, 4, 3)
    assert reader.class_names() == ["background", "class_1", "class_2"]
    assert reader.schema_extras()["ignore_value"] == 255


def test_mask_id_outside_the_classes_names_the_path_and_the_ids(tmp_path):
    _save_image(tmp_path / "images" / "a.png", 3, 4)
    bad = MASK.copy()
    bad[0, 0], bad[2, 3] = 3, 7
    _save_mask(tmp_path / "masks" / "a.png", bad)
    with pytest.raises(RecordError) as err:
        list(_reader(tmp_path).read(str(tmp_path / "images" / "a.png")))
    message = str(err.value)
    assert str(tmp_path / "masks" / "a.png") in message and "[3, 7]" in message and "0..2" in message
    # with no ignore value, 255 is an outside id too
    with pytest.raises(RecordError, match=r"\[255\]"):
        list(_reader(tmp_path, ignore_value=None, num_classes=8).read(str(tmp_path / "images" / "a.png")))


def test_mask_size_differing_from_its_image_names_both_paths(tmp_path):
    _save_image(tmp_path / "images" / "a.png", 4, 4)
    _save_mask(tmp_path / "masks" / "a.png", MASK)
    with pytest.raises(RecordError) as err:
        list(_reader(tmp_path).read(str(tmp_path / "images" / "a.png")))
    message = str(err.value)
    assert str(tmp_path / "masks" / "a.png") in message and str(tmp_path / "images" / "a.png") in message
    assert "3x4" in message and "4x4" in message


def test_missing_mask_and_rgb_mask(tmp_path):
    _save_image(tmp_path / "images" / "a.png", 3, 4)
    (tmp_path / "masks").mkdir()
    with pytest.raises(RecordError, match="missing mask") as err:
        list(_reader(tmp_path).read(str(tmp_path / "images" / "a.png")))
    assert str(tmp_path / "masks" / "a.png") in str(err.value)
    _save_image(tmp_path / "masks" / "a.png", 3, 4)  # an RGB picture, not ids
    with pytest.raises(RecordError, match="mode RGB") as err:
        list(_reader(tmp_path).read(str(tmp_path / "images" / "a.png")))
    assert str(tmp_path / "masks" / "a.png") in str(err.value)


def test_configuration_errors(tmp_path):
    with pytest.raises(ValueError, match="class_names: expected 3 names"):
        _reader(tmp_path, class_names=["bg", "cat"])
    with pytest.raises(ValueError, match="ignore_value"):
        _reader(tmp_path, ignore_value=1)
    with pytest.raises(FileNotFoundError, match="images/ and masks/"):
        _reader(tmp_path).list_items()
    assert _reader(tmp_path, class_names=["bg", "cat", "dog"]).class_names() == ["bg", "cat", "dog"]


def test_fingerprint_changes_when_a_mask_changes(tmp_path):
    _save_image(tmp_path / "images" / "a.png", 3, 4)
    _save_mask(tmp_path / "masks" / "a.png", MASK)
    before = _reader(tmp_path).fingerprint()
    assert _reader(tmp_path).fingerprint() == before
    _save_mask(tmp_path / "masks" / "a.png", np.zeros((5, 5), np.uint8))
    assert _reader(tmp_path).fingerprint() != before
    assert _reader(tmp_path, num_classes=4).fingerprint() != _reader(tmp_path).fingerprint()


def test_ingest_sends_bad_pairs_to_the_dead_letter_with_paths(tmp_path):
    root = tmp_path / "data"
    for i in range(6):
        _save_image(root / "images" / f"ok{i}.png", 3, 4, seed=i)
        _save_mask(root / "masks" / f"ok{i}.png", MASK, palette=i % 2 == 1)
    _save_image(root / "images" / "outside.png", 3, 4)
    _save_mask(root / "masks" / "outside.png", np.full((3, 4), 5, np.uint8))
    _save_image(root / "images" / "resized.png", 6, 8)
    _save_mask(root / "masks" / "resized.png", MASK)
    config = parse_config({"ingest": {"task": "segmentation", "num_shards": 1, "max_bad_fraction": 0.5,
                                      "source": {"name": "mask_folder", "path": str(root), "num_classes": 3}}})
    out = tmp_path / "examples"
    ctx = ExecutionContext(config=config, params=ingest.STAGE.parameters(config), inputs={}, outputs={"examples": out},
                           work_dir=tmp_path / "work", root=tmp_path, run_id=1, execution_id=1,
                           log=logging.getLogger("test"))
    ingest.STAGE.executor(ctx)
    dead = [json.loads(line) for line in (out / ex.DEAD_LETTER_FILE).read_text().splitlines()]
    reasons = {Path(d["item"]).name: d["reason"] for d in dead}
    assert set(reasons) == {"outside.png", "resized.png"}
    assert str(root / "masks" / "outside.png") in reasons["outside.png"] and "[5]" in reasons["outside.png"]
    assert str(root / "masks" / "resized.png") in reasons["resized.png"] and "differs" in reasons["resized.png"]
    records = [r for s in ex.SPLITS for r in ex.iter_records(out, s)]
    assert sorted(r["id"] for r in records) == [f"ok{i}" for i in range(6)]
    for record in records:
        np.testing.assert_array_equal(record["mask"], MASK)
    schema = ex.read_schema(out)
    assert schema["task"] == "segmentation" and schema["class_names"] == ["background", "class_1", "class_2"]
