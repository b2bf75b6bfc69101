"""The tfds source on a tiny dataset built here by a local GeneratorBasedBuilder (no download)."""
import logging

import numpy as np
import pytest
import tensorflow_datasets as tfds

from components import examples as ex
from components.ingest import stage as ingest
from components.sources.tfds import Reader, TfdsDataMissing
from pipeline.config import IngestSection, TfdsSource, parse_config
from pipeline.stage import ExecutionContext


class ConvpipeTinyObjects(tfds.core.GeneratorBasedBuilder):
    """Ten 8x8 images: a label per image and two boxes per image in TFDS's (ymin, xmin, ymax, xmax)."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(names=["zero", "one"]),
            "objects": tfds.features.Sequence({
                "bbox": tfds.features.BBoxFeature(),
                "label": tfds.features.ClassLabel(names=["zero", "one"]),
            }),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 6), "test": self._generate_examples(6, 10)}

    def _generate_examples(self, start, stop):
        for i in range(start, stop):
            image = np.full((8, 8, 3), i * 20, np.uint8)
            boxes = [tfds.features.BBox(ymin=0.125, xmin=0.25, ymax=0.5, xmax=0.75),
                     tfds.features.BBox(ymin=0.5, xmin=0.0, ymax=1.0, xmax=0.5)]
            yield f"ex{i}", {"image": image, "label": i % 2, "objects": {"bbox": boxes, "label": [i % 2, 1]}}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    ConvpipeTinyObjects(data_dir=str(path)).download_and_prepare()
    return str(path)


def _source(data_dir, **kw):
    return TfdsSource(dataset="convpipe_tiny_objects", data_dir=data_dir, **kw)


def test_reader_maps_features_and_converts_boxes(data_dir):
    source = _source(data_dir, features={"image": "image", "boxes": "objects/bbox", "box_labels": "objects/label"})
    reader = Reader(source, IngestSection(source=source, task="detection"))
    assert reader.class_names() == ["zero", "one"]
    items = reader.list_items()
    assert items == [("test", 0, 4), ("train", 0, 6)]
    records = [r for item in items for r in reader.read(item)]
    assert len({r["id"] for r in records}) == 10
    first = records[0]
    np.testing.assert_allclose(first["boxes"], [[0.25, 0.125, 0.75, 0.5], [0.0, 0.5, 0.5, 1.0]])
    assert first["box_labels"].tolist()[1] == 1 and first["image"].shape == (8, 8, 3)
    assert "label" not in first


def test_ingest_from_tfds_reads_every_split(data_dir, tmp_path):
    config = parse_config({"ingest": {"task": "classification", "num_shards": 1, "source": {
        "name": "tfds", "dataset": "convpipe_tiny_objects", "data_dir": data_dir,
        "splits": {"train": "train", "test": "test"}}}})
    ctx = ExecutionContext(config=config, params={}, inputs={}, outputs={"examples": tmp_path / "out"},
                           work_dir=tmp_path / "work", root=tmp_path, run_id=1, execution_id=1,
                           log=logging.getLogger("test"))
    ingest.STAGE.executor(ctx)
    schema = ex.read_schema(tmp_path / "out")
    assert schema["class_names"] == ["zero", "one"] and schema["image_size"] == [8, 8, 3]
    assert sum(schema["split_counts"].values()) == 10
    records = [r for s in ex.SPLITS for r in ex.iter_records(tmp_path / "out", s)]
    pixel_by_label = {(int(r["image"][0, 0, 0]) // 20, r["label"]) for r in records}
    assert pixel_by_label == {(i, i % 2) for i in range(10)}
    assert ingest.STAGE.external_fingerprint(config).startswith("tfds:")


def test_missing_data_without_download_says_so_plainly(tmp_path):
    source = _source(str(tmp_path / "empty"))
    reader = Reader(source, IngestSection(source=source))
    with pytest.raises(TfdsDataMissing, match=r"not prepared in .*empty.*ingest.source.download is false"):
        reader.list_items()
    assert reader.fingerprint().startswith("tfds:not-prepared:")


def test_unknown_feature_is_named(data_dir):
    source = _source(data_dir, features={"image": "picture", "label": "label"})
    reader = Reader(source, IngestSection(source=source))
    with pytest.raises(ValueError, match="features.image: .* has no feature 'picture'"):
        reader._feature("image")
