"""ingest on the DirectRunner with tiny data: splits, shards, schema, stats, dead letters, failure."""
import io
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components import examples as ex
from components.ingest import records, stage as ingest
from components.sources.synthetic import synthetic_record
from pipeline.artifacts import fingerprint_dir
from pipeline.config import parse_config
from pipeline.stage import ExecutionContext, StageError


def run_stage(tmp_path: Path, config: dict, name: str = "examples") -> tuple[Path, ExecutionContext]:
    cfg = parse_config(config)
    ctx = ExecutionContext(
        config=cfg, params=ingest.STAGE.parameters(cfg), inputs={}, outputs={"examples": tmp_path / name},
        work_dir=tmp_path / f"{name}-work", root=tmp_path, run_id=1, execution_id=1, log=logging.getLogger("test"))
    ingest.STAGE.executor(ctx)
    return tmp_path / name, ctx


SYNTHETIC = {"ingest": {"task": "classification", "num_shards": 2,
                        "source": {"name": "synthetic", "num_examples": 30, "image_size": 12, "num_classes": 3},
                        "splits": {"train": 0.6, "eval": 0.2, "test": 0.2}}}


@pytest.fixture(scope="module")
def classification(tmp_path_factory):
    return run_stage(tmp_path_factory.mktemp("ingest"), SYNTHETIC)


def ids_by_split(examples_dir: Path) -> dict[str, set[str]]:
    return {split: {r["id"] for r in ex.iter_records(examples_dir, split)} for split in ex.SPLITS}


def test_split_is_the_hash_of_the_id():
    bounds = (0.6, 0.8)
    # the SHA-256 of "a" starts with ca978112...: 0xca978112 / 2**32 = 0.791 -> eval
    assert records.split_of("a", bounds) == "eval"
    counts = Counter(records.split_of(f"id-{i}", bounds) for i in range(3000))
    assert abs(counts["train"] / 3000 - 0.6) < 0.03 and abs(counts["test"] / 3000 - 0.2) < 0.03


def test_synthetic_classification_layout_counts_and_splits(classification):
    out, ctx = classification
    expected = {split: {f"synthetic-{i:07d}" for i in range(30)
                        if records.split_of(f"synthetic-{i:07d}", (0.6, 0.8)) == split} for split in ex.SPLITS}
    assert ids_by_split(out) == expected
    for split in ex.SPLITS:
        names = [Path(p).name for p in ex.shard_files(out, split)]
        assert names == ["data-00000-of-00002.tfrecord.gz", "data-00001-of-00002.tfrecord.gz"]
    assert (out / ex.DEAD_LETTER_FILE).read_text() == ""
    assert ctx.properties["examples"]["num_examples"] == 30
    assert ctx.properties["examples"]["split_counts"] == {s: len(v) for s, v in expected.items()}


def test_schema_describes_the_data(classification):
    out, _ = classification
    schema = ex.read_schema(out)
    assert schema["task"] == "classification"
    assert schema["class_names"] == ["circle", "square", "triangle"]
    assert schema["image_size"] == [12, 12, 3]
    assert sum(schema["split_counts"].values()) == 30
    assert ex.LABEL in schema["features"] and ex.MASK not in schema["features"]
    assert schema["source"]["num_examples"] == 30


def test_stats_match_the_records(classification):
    out, _ = classification
    stats = json.loads((out / ex.STATS_FILE).read_text())
    records = [r for split in ex.SPLITS for r in ex.iter_records(out, split)]
    pixels = np.stack([r["image"] for r in records]).reshape(-1, 3) / 255.0
    assert stats["total"]["num_examples"] == 30
    assert stats["total"]["class_counts"] == {"circle": 10, "square": 10, "triangle": 10}
    np.testing.assert_allclose(stats["total"]["pixel_mean"], pixels.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats["total"]["pixel_std"], pixels.std(axis=0), rtol=1e-6)
    assert stats["total"]["image_sizes"] == {"12x12x3": 30}
    train_labels = Counter(r["label"] for r in ex.iter_records(out, "train"))
    assert stats["splits"]["train"]["label_counts"] == {str(k): v for k, v in sorted(train_labels.items())}


def test_records_are_the_source_records(classification):
    out, _ = classification
    source = parse_config(SYNTHETIC).ingest.source
    for record in ex.iter_records(out, "eval"):
        expected = synthetic_record(int(record["id"].split("-")[1]), source, "classification")
        np.testing.assert_array_equal(record["image"], expected["image"])
        assert record["label"] == expected["label"]


def test_rerun_puts_every_example_in_the_same_split(classification, tmp_path):
    out, _ = classification
    again, _ = run_stage(tmp_path, SYNTHETIC)
    assert ids_by_split(again) == ids_by_split(out)


def test_detection_with_resize_keeps_boxes_and_counts_them(tmp_path):
    config = {"ingest": {"task": "multitask", "image_size": [8, 8], "num_shards": 1,
                         "source": {"name": "synthetic", "num_examples": 12, "image_size": 16, "max_shapes": 3}}}
    out, _ = run_stage(tmp_path, config)
    schema = ex.read_schema(out)
    assert schema["image_size"] == [8, 8, 3]
    assert schema["mask_class_names"] == ["background", "circle", "square", "triangle"]
    source = parse_config(config).ingest.source
    boxes = 0
    for split in ex.SPLITS:
        for record in ex.iter_records(out, split):
            expected = synthetic_record(int(record["id"].split("-")[1]), source, "multitask")
            np.testing.assert_allclose(record["boxes"], expected["boxes"])  # normalised boxes survive a resize
            assert record["image"].shape == (8, 8, 3) and record["mask"].shape == (8, 8)
            assert set(np.unique(record["mask"])) <= set(np.unique(expected["mask"]))  # nearest: no new ids
            boxes += len(record["boxes"])
    stats = json.loads((out / ex.STATS_FILE).read_text())
    assert stats["total"]["num_boxes"] == boxes
    assert sum(stats["total"]["boxes_per_image"].values()) == 12


def test_video_schema_has_frames(tmp_path):
    config = {"ingest": {"task": "video", "num_shards": 1,
                         "source": {"name": "synthetic", "num_examples": 6, "image_size": 8, "num_frames": 3}}}
    out, _ = run_stage(tmp_path, config)
    schema = ex.read_schema(out)
    assert schema["num_frames"] == 3 and schema["image_size"] == [8, 8, 3]
    assert schema["class_names"] == ["right", "left", "down"]
    frames = [r["frames"].shape for s in ex.SPLITS for r in ex.iter_records(out, s)]
    assert frames == [(3, 8, 8, 3)] * 6


# ------------------------------------------------------------------------------------------------
# image_folder with bad files
# ------------------------------------------------------------------------------------------------
def _png(colour, size=(10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(colour, size=(10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def folder_with_bad_files(tmp_path):
    root = tmp_path / "images"
    for name, colour in (("cat", (200, 10, 10)), ("dog", (10, 200, 10))):
        (root / name).mkdir(parents=True)
        for i in range(4):
            (root / name / f"{i}.png").write_bytes(_png(colour))
        (root / name / "extra.jpg").write_bytes(_jpeg(colour))
    Image.new("P", (10, 10), 3).save(root / "cat" / "palette.gif")
    Image.new("L", (10, 10), 77).save(root / "dog" / "grey.bmp")
    (root / "dog" / "truncated.jpg").write_bytes(_jpeg((1, 2, 3), (64, 64))[:300])
    (root / "cat" / "notes.png").write_text("this is not an image\n")
    (root / "cat" / "readme.txt").write_text("skipped: not an image extension\n")
    return root


def _folder_config(root: Path, max_bad_fraction: float) -> dict:
    return {"ingest": {"task": "classification", "num_shards": 1, "max_bad_fraction": max_bad_fraction,
                       "source": {"name": "image_folder", "path": str(root)}}}


def test_bad_images_go_to_the_dead_letter_and_the_rest_is_ingested(tmp_path, folder_with_bad_files):
    out, ctx = run_stage(tmp_path, _folder_config(folder_with_bad_files, 0.5))
    dead = [json.loads(line) for line in (out / ex.DEAD_LETTER_FILE).read_text().splitlines()]
    by_item = {Path(d["item"]).name: d for d in dead}
    assert set(by_item) == {"truncated.jpg", "notes.png"}
    assert str(folder_with_bad_files / "dog" / "truncated.jpg") in by_item["truncated.jpg"]["reason"]
    assert "truncated" in by_item["truncated.jpg"]["reason"].lower()
    assert "cannot identify image" in by_item["notes.png"]["reason"]
    ids = set().union(*ids_by_split(out).values())
    assert ids == {f"{c}/{i}.png" for c in ("cat", "dog") for i in range(4)} | {"cat/extra.jpg", "dog/extra.jpg", "cat/palette.gif", "dog/grey.bmp"}
    assert ex.read_schema(out)["class_names"] == ["cat", "dog"]
    labels = {r["id"]: r["label"] for s in ex.SPLITS for r in ex.iter_records(out, s)}
    assert labels["dog/0.png"] == 1 and labels["cat/3.png"] == 0
    grey = next(r for s in ex.SPLITS for r in ex.iter_records(out, s) if r["id"] == "dog/grey.bmp")
    assert grey["image"].shape == (10, 10, 3) and (grey["image"] == 77).all()  # decoded to RGB
    assert ctx.properties["examples"]["num_bad"] == 2


def test_any_bad_image_fails_when_max_bad_fraction_is_zero(tmp_path, folder_with_bad_files):
    with pytest.raises(StageError) as error:
        run_stage(tmp_path, _folder_config(folder_with_bad_files, 0.0))
    message = str(error.value)
    assert "2 of 14 records are bad" in message and "ingest.max_bad_fraction=0" in message
    assert "truncated.jpg" in message and "notes.png" in message


def test_external_fingerprint_changes_when_a_file_is_added(tmp_path, folder_with_bad_files):
    config = parse_config(_folder_config(folder_with_bad_files, 0.5))
    before = ingest.STAGE.external_fingerprint(config)
    (folder_with_bad_files / "cat" / "new.png").write_bytes(_png((0, 0, 255)))
    assert ingest.STAGE.external_fingerprint(config) != before


def test_check_refuses_a_task_the_source_cannot_provide(folder_with_bad_files):
    from pipeline.config import ConfigError

    config = _folder_config(folder_with_bad_files, 0.5)
    config["ingest"]["task"] = "detection"
    with pytest.raises(ConfigError, match="image_folder.*provides.*classification.*got 'detection'"):
        ingest.STAGE.check(parse_config(config))


# ------------------------------------------------------------------------------------------------
# multi-processing DirectRunner
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow  # two worker processes each import TensorFlow: 5 to 25 s here
def test_multi_processing_writes_the_same_examples(tmp_path, classification):
    out, _ = classification
    config = json.loads(json.dumps(SYNTHETIC))
    config["beam"] = {"direct_running_mode": "multi_processing", "direct_num_workers": 2}
    parallel, _ = run_stage(tmp_path, config)
    assert ids_by_split(parallel) == ids_by_split(out)
    # the statistics are added in the records' source order on any runner: equal to the last bit
    assert (parallel / ex.STATS_FILE).read_bytes() == (out / ex.STATS_FILE).read_bytes()
    assert fingerprint_dir(parallel) == fingerprint_dir(out)
