"""validate finds each kind of anomaly in hand-made Examples and writes JSON and TFMD reports."""
import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2

from components import examples as ex
from components.validate import stage as validate
from components.sources.synthetic import synthetic_record
from pipeline.config import SyntheticSource, parse_config
from pipeline.stage import Artifact, ExecutionContext, StageError

SOURCE = SyntheticSource(num_classes=3, image_size=8, max_shapes=2)


def write_examples(root: Path, splits: dict[str, list], schema: dict) -> Path:
    """Shards of already-serialized Examples (or records, encoded here), plus schema.json."""
    for split, items in splits.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        with tf.io.TFRecordWriter(str(root / split / "data-00000-of-00001.tfrecord.gz"), "GZIP") as writer:
            for item in items:
                writer.write(item if isinstance(item, bytes) else ex.encode_example(item))
    counts = {split: len(items) for split, items in splits.items()}
    (root / ex.SCHEMA_FILE).write_text(json.dumps({"split_counts": counts, **schema}))
    return root


def multitask_schema(features):
    return {"task": "multitask", "class_names": ["circle", "square", "triangle"],
            "mask_class_names": ["background", "circle", "square", "triangle"],
            "image_size": [8, 8, 3], "features": features}


def good_multitask(n, start=0):
    return [synthetic_record(i, SOURCE, "multitask") for i in range(start, start + n)]


def run(examples_dir: Path, tmp_path: Path, **validate_settings):
    config = parse_config({"validate": {"on_anomaly": "warn", **validate_settings}})
    ctx = ExecutionContext(
        config=config, params={}, inputs={"examples": Artifact(1, "Examples", examples_dir, "f")},
        outputs={"report": tmp_path / "report"}, work_dir=tmp_path / "work", root=tmp_path, run_id=1,
        execution_id=2, log=logging.getLogger("test"))
    validate.STAGE.executor(ctx)
    return json.loads((tmp_path / "report" / validate.ANOMALIES_FILE).read_text()), ctx


def kinds(document):
    return {(a["kind"], a["split"]) for a in document["anomalies"]}




def _features():
    return sorted(tf.train.Example.FromString(ex.encode_example(good_multitask(1)[0])).features.feature.keys())


def test_clean_examples_pass_and_the_protos_parse(tmp_path):
    root = write_examples(tmp_path / "ex", {"train": good_multitask(9), "eval": good_multitask(3, 9),
                                            "test": good_multitask(3, 12)}, multitask_schema(_features()))
    document, ctx = run(root, tmp_path)
    assert document["anomalies"] == [] and document["passed"]
    assert document["split_counts"] == {"train": 9, "eval": 3, "test": 3}
    assert document["train_examples_per_class"] == {"circle": 3, "square": 3, "triangle": 3}
    assert ctx.properties["report"] == {"passed": True, "num_anomalies": 0, "kinds": []}
    schema = text_format.Parse((tmp_path / "report" / "schema.pbtxt").read_text(), schema_pb2.Schema())
    by_name = {f.name: f for f in schema.feature}
    assert by_name[ex.LABEL].int_domain.max == 2 and by_name[ex.LABEL].int_domain.is_categorical
    assert by_name[ex.HEIGHT].int_domain.min == by_name[ex.HEIGHT].int_domain.max == 8
    assert by_name[ex.BOX_KEYS[2]].float_domain.max == 1.0
    assert by_name[ex.MASK].HasField("image_domain")


def test_every_record_level_anomaly_is_found(tmp_path):
    records = good_multitask(12)
    records[0]["label"] = 7                                     # label_range
    records[1]["boxes"] = records[1]["boxes"].copy()
    records[1]["boxes"][0, 2] = 1.25                            # box_range
    records[2]["boxes"] = records[2]["boxes"].copy()
    records[2]["boxes"][0, [0, 2]] = [0.75, 0.5]                # box_order
    records[3]["box_labels"] = records[3]["box_labels"].copy()
    records[3]["box_labels"][0] = 3                             # box_label_range
    records[4]["mask"] = records[4]["mask"].copy()
    records[4]["mask"][0, 0] = 9                                # mask_range
    small = synthetic_record(5, SOURCE.model_copy(update={"image_size": 6}), "multitask")
    records[5] = small                                          # image_size
    garbage = tf.train.Example.FromString(ex.encode_example(records[6]))
    garbage.features.feature[ex.IMAGE].bytes_list.value[0] = b"not an image"
    records[6] = garbage.SerializeToString()                    # undecodable
    root = write_examples(tmp_path / "ex", {"train": records, "eval": good_multitask(3, 20), "test": []},
                          multitask_schema(_features()))
    document, _ = run(root, tmp_path)
    assert kinds(document) == {(k, "train") for k in (
        "label_range", "box_range", "box_order", "box_label_range", "mask_range", "image_size", "undecodable")} \
        | {("empty_split", "test")}
    by_kind = {a["kind"]: a for a in document["anomalies"]}
    assert by_kind["label_range"]["example_ids"] == ["synthetic-0000000"]
    assert "expected a label in [0, 3), got 7" in by_kind["label_range"]["message"]
    assert "got [9]" in by_kind["mask_range"]["message"]
    assert "expected [8, 8, 3] (schema image_size), got [6, 6, 3]" in by_kind["image_size"]["message"]
    assert by_kind["undecodable"]["example_ids"] == ["data-00000-of-00001.tfrecord.gz#6"]
    anomalies = text_format.Parse((tmp_path / "report" / "anomalies.pbtxt").read_text(), anomalies_pb2.Anomalies())
    assert anomalies.anomaly_info[ex.LABEL].reason[0].type == anomalies_pb2.AnomalyInfo.INT_TYPE_BIG_INT
    assert anomalies.anomaly_info[ex.BOX_KEYS[0]].short_description == "Multiple errors"
    assert anomalies.dataset_anomaly_info.reason[0].type == anomalies_pb2.AnomalyInfo.DATASET_LOW_NUM_EXAMPLES


def test_a_split_set_to_zero_may_be_empty(tmp_path):
    schema = {**multitask_schema(_features()), "splits": {"train": 0.8, "eval": 0.2, "test": 0.0}}
    root = write_examples(tmp_path / "ex", {"train": good_multitask(6), "eval": good_multitask(2, 6), "test": []},
                          schema)
    document, _ = run(root, tmp_path)
    assert document["anomalies"] == []


def test_dataset_level_anomalies(tmp_path):
    def classification(i, label):
        record = synthetic_record(i, SOURCE, "classification")
        record["label"] = label
        return record

    train = [classification(i, 0) for i in range(6)] + [classification(6, 1)]  # no 'triangle', 6:1 imbalance
    unlabelled = synthetic_record(7, SOURCE, "classification")
    del unlabelled["label"]
    schema = {"task": "classification", "class_names": ["circle", "square", "triangle"], "image_size": [8, 8, 3],
              "features": [], "image_sizes": {"8x8x3": 8, "6x6x3": 1}}
    root = write_examples(tmp_path / "ex", {"train": train, "eval": [unlabelled], "test": [classification(8, 1)]},
                          schema)
    (root / ex.SCHEMA_FILE).write_text(json.dumps({**schema, "split_counts": {"train": 7, "eval": 1, "test": 5}}))
    document, _ = run(root, tmp_path, max_class_imbalance=4.0, min_examples_per_class=1)
    assert kinds(document) == {("missing_feature", "eval"), ("empty_class", "train"), ("class_imbalance", "train"),
                               ("split_count", "test"), ("mixed_image_sizes", None)}
    by_kind = {a["kind"]: a for a in document["anomalies"]}
    assert "'triangle' has 0 train examples" in by_kind["empty_class"]["message"]
    assert "ratio 6.00 > validate.max_class_imbalance=4" in by_kind["class_imbalance"]["message"]
    assert "schema.json says 5 records, the shards hold 1" in by_kind["split_count"]["message"]


def test_fail_mode_raises_a_readable_report(tmp_path):
    records = good_multitask(12)
    records[0]["label"] = 5
    records[3]["label"] = 5
    root = write_examples(tmp_path / "ex", {"train": records, "eval": good_multitask(2, 12),
                                            "test": good_multitask(2, 14)}, multitask_schema(_features()))
    with pytest.raises(StageError) as error:
        run(root, tmp_path, on_anomaly="fail")
    message = str(error.value)
    assert message.startswith("validate: 1 anomaly in")
    assert "label_range [train] x2: expected a label in [0, 3), got 5 (e.g. synthetic-0000000, synthetic-0000003)" \
        in message
    assert "validate.on_anomaly=warn" in message


def test_corrupt_shard_is_reported_not_raised(tmp_path):
    root = write_examples(tmp_path / "ex", {"train": good_multitask(4), "eval": good_multitask(2, 4),
                                            "test": good_multitask(2, 6)}, multitask_schema(_features()))
    shard = root / "train" / "data-00000-of-00001.tfrecord.gz"
    shard.write_bytes(shard.read_bytes()[:-40])
    document, _ = run(root, tmp_path)
    assert ("unreadable_shard", "train") in kinds(document)
