"""The augment stage on DirectRunner: originals plus seeded copies in train, eval and test untouched."""
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from components.augment import beam_job, stage as augment
from components.augment.augmentations import augment_record, copy_seed
from components.examples import decode_example, encode_example, iter_records, shard_files
from components.sources.synthetic import pixel_box, synthetic_record
from pipeline.config import ConfigError, PipelineConfig, SyntheticSource
from pipeline.stage import Artifact, ExecutionContext


def _write_shards(directory: Path, split: str, serialized: list[bytes], num_shards: int) -> None:
    import tensorflow as tf

    (directory / split).mkdir(parents=True)
    for shard in range(num_shards):
        path = directory / split / f"data-{shard:05d}-of-{num_shards:05d}.tfrecord.gz"
        with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
            for record in serialized[shard::num_shards]:
                writer.write(record)


def _read_raw(directory: Path, split: str) -> list[bytes]:
    import tensorflow as tf

    return [bytes(r) for path in shard_files(directory, split)
            for r in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator()]


@pytest.fixture
def detection_examples(tmp_path):
    """A tiny ingest-like Examples artifact: 6 train, 2 eval, 2 test synthetic detection records."""
    source = SyntheticSource(image_size=16, max_shapes=2, min_shape_size=0.25, max_shape_size=0.4)
    records = [encode_example(synthetic_record(i, source, "detection")) for i in range(10)]
    root = tmp_path / "ingest"
    _write_shards(root, "train", records[:6], 2)
    _write_shards(root, "eval", records[6:8], 1)
    _write_shards(root, "test", records[8:], 1)
    schema = {"task": "detection", "class_names": ["circle", "square", "triangle"], "image_size": [16, 16, 3],
              "split_counts": {"train": 6, "eval": 2, "test": 2}, "features": [], "source": {"name": "synthetic"}}
    (root / "schema.json").write_text(json.dumps(schema))
    (root / "stats.json").write_text('{"train": {"num_examples": 6}}\n')
    (root / "dead_letter.jsonl").write_text('{"source": "x", "reason": "y"}\n')
    return root


def _context(tmp_path, input_dir, **augment_cfg) -> ExecutionContext:
    config = PipelineConfig.model_validate({"augment": augment_cfg})
    output = tmp_path / "out" / "examples"
    output.mkdir(parents=True)
    return ExecutionContext(
        config=config, params=augment.STAGE.parameters(config),
        inputs={"examples": Artifact(id=1, type="Examples", uri=input_dir, fingerprint="f")},
        outputs={"examples": output}, work_dir=tmp_path / "work", root=tmp_path, run_id=1, execution_id=7,
        log=logging.getLogger("test_augment"))


def test_stage_writes_originals_and_seeded_copies(tmp_path, detection_examples):
    cfg = {"copies": 2, "horizontal_flip": True, "random_resized_crop": {"enabled": True, "scale": [0.7, 1.0]},
           "brightness": 0.1, "contrast": 0.1}
    ctx = _context(tmp_path, detection_examples, **cfg)
    augment.STAGE.executor(ctx)
    out = ctx.outputs["examples"]

    # train: the 6 originals byte for byte, plus copies #aug1 and #aug2 of each
    raw_in, raw_out = _read_raw(detection_examples, "train"), _read_raw(out, "train")
    assert len(shard_files(out, "train")) == 2
    assert len(raw_out) == 18 and set(raw_in) <= set(raw_out)
    originals = {r["id"]: r for r in iter_records(detection_examples, "train")}
    written = {r["id"]: r for r in iter_records(out, "train")}
    assert sorted(written) == sorted([i for o in originals for i in (o, f"{o}#aug1", f"{o}#aug2")])

    # each copy is the pure function of (id, k): the same as augmenting here
    section = ctx.config.augment
    for example_id, original in originals.items():
        for k in (1, 2):
            expected = augment_record(original, section, copy_seed(example_id, k))
            copy = written[f"{example_id}#aug{k}"]
            np.testing.assert_array_equal(copy["image"], expected["image"])
            np.testing.assert_allclose(copy["boxes"], expected["boxes"], atol=1e-7)
            np.testing.assert_array_equal(copy["box_labels"], expected["box_labels"])
            assert np.all((copy["boxes"] >= 0) & (copy["boxes"] <= 1))
            assert np.all(copy["boxes"][:, :2] < copy["boxes"][:, 2:])

    # eval and test: the same shard files, byte for byte
    for split in ("eval", "test"):
        for a, b in zip(shard_files(detection_examples, split), shard_files(out, split), strict=True):
            assert Path(a).name == Path(b).name and Path(a).read_bytes() == Path(b).read_bytes()

    schema = json.loads((out / "schema.json").read_text())
    assert schema["split_counts"] == {"train": 18, "eval": 2, "test": 2}
    assert schema["augmentation"]["copies"] == 2 and schema["augmentation"]["original_train_count"] == 6
    assert schema["augmentation"]["config"]["random_resized_crop"]["scale"] == [0.7, 1.0]
    assert schema["task"] == "detection" and schema["image_size"] == [16, 16, 3]
    assert (out / "stats.json").read_text() == (detection_examples / "stats.json").read_text()
    assert (out / "dead_letter.jsonl").exists()
    assert ctx.properties["examples"]["split_counts"]["train"] == 18


def test_stage_flipped_copies_still_frame_whole_shapes(tmp_path):
    # squares only (class 1), so a square's box is its pixel rectangle: a flipped copy's boxes must
    # equal the extent of the shape pixels, which differ from the background in the decoded image.
    source = SyntheticSource(image_size=16, max_shapes=1, min_shape_size=0.4, max_shape_size=0.5, noise=0.0)
    record = synthetic_record(1, source, "classification")
    mask = np.any(record["image"] != record["image"][0, 0], axis=-1)
    record.update(boxes=pixel_box(mask)[None], box_labels=np.array([0]))
    del record["label"]
    root = tmp_path / "ingest"
    _write_shards(root, "train", [encode_example(record)], 1)
    (root / "schema.json").write_text(json.dumps({"task": "detection", "split_counts": {"train": 1}}))
    ctx = _context(tmp_path, root, copies=3, horizontal_flip=True, vertical_flip=True, brightness=0.0, contrast=0.0)
    augment.STAGE.executor(ctx)
    copies = [r for r in iter_records(ctx.outputs["examples"], "train") if "#aug" in r["id"]]
    assert len(copies) == 3
    for copy in copies:
        shape = np.any(copy["image"] != copy["image"][0, 0], axis=-1)
        np.testing.assert_allclose(copy["boxes"][0], pixel_box(shape), atol=1e-6)
    assert any(not np.allclose(c["boxes"][0], record["boxes"][0]) for c in copies)  # some copy moved the box
    assert not (Path(ctx.outputs["examples"]) / "eval").exists()


def test_stage_declaration_and_config_check():
    stage = augment.STAGE
    assert stage.name == "augment" and stage.inputs == {"examples": "ingest.examples"}
    assert stage.outputs == {"examples": "Examples"}
    assert stage.enabled(PipelineConfig())
    assert not stage.enabled(PipelineConfig.model_validate({"augment": {"copies": 0}}))
    assert not stage.enabled(PipelineConfig.model_validate({"augment": {"enabled": False}}))
    params = stage.parameters(PipelineConfig.model_validate({"augment": {"copies": 3}}))
    assert params["copies"] == 3 and json.dumps(params)
    with pytest.raises(ConfigError, match=r"augment.random_resized_crop.scale: expected 0 < min <= max, got \[0.9, 0.5\]"):
        stage.check(PipelineConfig.model_validate({"augment": {"random_resized_crop": {"scale": [0.9, 0.5]}}}))
    with pytest.raises(ConfigError, match="ratio"):
        stage.check(PipelineConfig.model_validate({"augment": {"random_resized_crop": {"ratio": [0.0, 1.0]}}}))


def test_missing_train_shards_is_a_clear_error(tmp_path):
    root = tmp_path / "ingest"
    root.mkdir()
    (root / "schema.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no train shards"):
        augment.STAGE.executor(_context(tmp_path, root, copies=1))


def test_with_copies_yields_the_original_first_then_named_copies():
    record = {"id": "r", "source": "s", "image": np.zeros((4, 4, 3), np.uint8), "label": 1}
    serialized = encode_example(record)
    cfg = PipelineConfig.model_validate({"augment": {"copies": 2}}).augment
    out = list(beam_job.with_copies(serialized, cfg))
    assert out[0] == serialized
    assert [decode_example(s)["id"] for s in out] == ["r", "r#aug1", "r#aug2"]
    assert [decode_example(s)["label"] for s in out] == [1, 1, 1]
