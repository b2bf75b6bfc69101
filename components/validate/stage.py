"""validate: check an Examples artifact against its own schema before anything trains on it.

Reads every record of every split once and looks for what would break or mislead training:
records that do not decode, images whose size differs from the schema, labels, box labels and
mask ids outside the class range, boxes outside [0, 1] or inverted, missing features, empty splits,
classes with fewer than `validate.min_examples_per_class` train examples, and a train class
imbalance above `validate.max_class_imbalance`.

The report is written as JSON (anomalies.json, schema.json) and as tensorflow_metadata `Schema` and
`Anomalies` protos in text format (schema.pbtxt, anomalies.pbtxt), the files TFDV users read.
With `validate.on_anomaly: fail` any anomaly fails the stage with a readable report; with `warn`
it is logged and the run goes on.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from components import examples as ex
from pipeline.config import PipelineConfig
from pipeline.stage import ExecutionContext, Stage, StageError

ANOMALIES_FILE = "anomalies.json"
SCHEMA_JSON = "schema.json"
SCHEMA_PBTXT = "schema.pbtxt"
ANOMALIES_PBTXT = "anomalies.pbtxt"
EXAMPLE_IDS = 5
"""Ids quoted per anomaly."""

# kind -> (feature path it concerns, None for the whole dataset; tensorflow_metadata AnomalyInfo.Type)
KINDS = {
    "unreadable_shard": (None, "CUSTOM_VALIDATION"),
    "undecodable": (ex.IMAGE, "LOW_SUPPORTED_IMAGE_FRACTION"),
    "missing_feature": (None, "SCHEMA_MISSING_COLUMN"),
    "image_size": (ex.HEIGHT, "INVALID_FEATURE_SHAPE"),
    "mixed_image_sizes": (ex.HEIGHT, "INVALID_FEATURE_SHAPE"),
    "num_frames": (ex.NUM_FRAMES, "INVALID_FEATURE_SHAPE"),
    "label_range": (ex.LABEL, "INT_TYPE_BIG_INT"),
    "box_range": (ex.BOX_KEYS[0], "FLOAT_TYPE_BIG_FLOAT"),
    "box_order": (ex.BOX_KEYS[0], "CUSTOM_VALIDATION"),
    "box_label_range": (ex.BOX_LABEL, "INT_TYPE_BIG_INT"),
    "mask_range": (ex.MASK, "CUSTOM_VALIDATION"),
    "mask_size": (ex.MASK, "INVALID_FEATURE_SHAPE"),
    "empty_split": (None, "DATASET_LOW_NUM_EXAMPLES"),
    "split_count": (None, "CUSTOM_VALIDATION"),
    "empty_class": (None, "CUSTOM_VALIDATION"),
    "class_imbalance": (None, "CUSTOM_VALIDATION"),
}


@dataclass
class Anomaly:
    kind: str
    message: str
    feature: Optional[str] = None
    split: Optional[str] = None
    count: int = 1
    example_ids: list[str] = field(default_factory=list)

    def line(self) -> str:
        where = f" [{self.split}]" if self.split else ""
        ids = f" (e.g. {', '.join(self.example_ids)})" if self.example_ids else ""
        times = f" x{self.count}" if self.count > 1 else ""
        return f"{self.kind}{where}{times}: {self.message}{ids}"


class _Collector:
    """Groups per-record findings by (kind, split, message) so a thousand bad labels are one line."""

    def __init__(self):
        self.groups: dict[tuple, Anomaly] = {}

    def add(self, kind: str, message: str, split: Optional[str] = None, example_id: Optional[str] = None,
            feature: Optional[str] = None):
        key = (kind, split, message)
        anomaly = self.groups.get(key)
        if anomaly is None:
            anomaly = self.groups[key] = Anomaly(kind, message, feature or KINDS[kind][0], split, 0)
        anomaly.count += 1
        if example_id is not None and len(anomaly.example_ids) < EXAMPLE_IDS:
            anomaly.example_ids.append(example_id)

    def anomalies(self) -> list[Anomaly]:
        return list(self.groups.values())


# ------------------------------------------------------------------------------------------------
# what the schema promises
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expectations:
    task: str
    num_classes: int
    num_mask_classes: int
    ignore_value: Optional[int]
    image_size: Optional[tuple[int, int, int]]
    num_frames: Optional[int]
    required: tuple[str, ...]

    @classmethod
    def from_schema(cls, schema: dict) -> "Expectations":
        task = schema["task"]
        names = schema["class_names"]
        mask_names = schema.get("mask_class_names", names)
        required = {"classification": ("image", "label"), "segmentation": ("image", "mask"),
                    "detection": ("image", "boxes"), "multitask": ("image",), "video": ("frames", "label")}[task]
        size = schema.get("image_size")
        return cls(task=task, num_classes=len(names), num_mask_classes=len(mask_names),
                   ignore_value=schema.get("ignore_value"), image_size=tuple(size) if size else None,
                   num_frames=schema.get("num_frames"), required=required)


def check_record(record: dict, expect: Expectations, split: str, found: _Collector) -> None:
    rid = record["id"]
    for key in expect.required:
        if key not in record:
            found.add("missing_feature", f"task {expect.task} needs '{key}'", split, rid)
    pixels = record.get("frames", record.get("image"))
    if pixels is not None and expect.image_size is not None and tuple(pixels.shape[-3:]) != expect.image_size:
        found.add("image_size", f"expected {list(expect.image_size)} (schema image_size), got {list(pixels.shape[-3:])}",
                  split, rid)
    if "frames" in record and expect.num_frames is not None and len(record["frames"]) != expect.num_frames:
        found.add("num_frames", f"expected {expect.num_frames} frames, got {len(record['frames'])}", split, rid)
    if "label" in record and not 0 <= record["label"] < expect.num_classes:
        found.add("label_range", f"expected a label in [0, {expect.num_classes}), got {record['label']}", split, rid)
    if "boxes" in record and len(record["boxes"]):
        boxes = record["boxes"]
        outside = ~np.isfinite(boxes).all(axis=1) | (boxes < 0).any(axis=1) | (boxes > 1).any(axis=1)
        if outside.any():
            found.add("box_range", "expected box coordinates in [0, 1], got "
                      f"{np.round(boxes[np.argmax(outside)], 4).tolist()}", split, rid)
        inverted = (boxes[:, 0] >= boxes[:, 2]) | (boxes[:, 1] >= boxes[:, 3])
        if inverted.any():
            found.add("box_order", "expected xmin < xmax and ymin < ymax, got "
                      f"{np.round(boxes[np.argmax(inverted)], 4).tolist()}", split, rid)
        labels = record["box_labels"]
        bad = labels[(labels < 0) | (labels >= expect.num_classes)]
        if len(bad):
            found.add("box_label_range", f"expected box labels in [0, {expect.num_classes}), got {sorted(set(bad.tolist()))}",
                      split, rid)
    if "mask" in record:
        mask = record["mask"]
        if pixels is not None and mask.shape != pixels.shape[:2]:
            found.add("mask_size", f"expected a mask of the image's size {list(pixels.shape[:2])}, got {list(mask.shape)}",
                      split, rid)
        values = [int(v) for v in np.unique(mask) if v >= expect.num_mask_classes and v != expect.ignore_value]
        if values:
            allowed = f"[0, {expect.num_mask_classes})" + ("" if expect.ignore_value is None else f" or {expect.ignore_value}")
            found.add("mask_range", f"expected mask ids in {allowed}, got {values}", split, rid)


def class_presence(record: dict, task: str) -> list[int]:
    """The classes one record gives examples of (what 'examples per class' counts)."""
    if task in ("classification", "video", "multitask") and "label" in record:
        return [record["label"]]
    if task == "detection" and "boxes" in record:
        return sorted(set(int(v) for v in record["box_labels"]))
    if task == "segmentation" and "mask" in record:
        return [int(v) for v in np.unique(record["mask"])]
    return []


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------
def scan(examples_dir: Path, schema: dict, found: _Collector) -> tuple[dict[str, int], dict[str, Counter]]:
    """Check every record; returns records per split and class presence per split."""
    import tensorflow as tf

    expect = Expectations.from_schema(schema)
    counts: dict[str, int] = {}
    classes: dict[str, Counter] = defaultdict(Counter)
    for split in ex.SPLITS:
        counts[split] = 0
        for path in ex.shard_files(examples_dir, split):
            try:
                for index, serialized in enumerate(
                        tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator()):
                    counts[split] += 1
                    try:
                        record = ex.decode_example(serialized)
                    except Exception as exc:  # a record that does not parse or decode
                        found.add("undecodable", f"{type(exc).__name__}: {exc}", split, f"{Path(path).name}#{index}")
                        continue
                    check_record(record, expect, split, found)
                    classes[split].update(class_presence(record, expect.task))
            except tf.errors.OpError as exc:
                found.add("unreadable_shard", f"{path}: {exc.message.splitlines()[0]}", split)
    return counts, classes


def dataset_checks(schema: dict, counts: dict[str, int], classes: dict[str, Counter], section, found: _Collector):
    for split, count in counts.items():
        fraction = schema.get("splits", {}).get(split)
        if count == 0 and (fraction is None or fraction > 0):  # a split asked for, yet empty
            found.add("empty_split", f"split '{split}' has no records"
                      + (f" (ingest.splits.{split}={fraction:g})" if fraction is not None else ""), split)
        promised = schema.get("split_counts", {}).get(split)
        if promised is not None and promised != count:
            found.add("split_count", f"schema.json says {promised} records, the shards hold {count}", split)
    if schema.get("image_sizes"):
        found.add("mixed_image_sizes", f"images of several sizes {schema['image_sizes']}: set ingest.image_size "
                  "to resize them to one")
    names = schema.get("mask_class_names", schema["class_names"]) if schema["task"] == "segmentation" \
        else schema["class_names"]
    train = classes.get("train", Counter())
    per_class = {name: train.get(k, 0) for k, name in enumerate(names)}
    too_few = {name: n for name, n in per_class.items() if n < section.min_examples_per_class}
    for name, n in too_few.items():
        found.add("empty_class", f"class '{name}' has {n} train examples, fewer than "
                  f"validate.min_examples_per_class={section.min_examples_per_class}", "train")
    present = [n for n in per_class.values() if n > 0]
    if section.max_class_imbalance is not None and len(present) > 1:
        ratio = max(present) / min(present)
        if ratio > section.max_class_imbalance:
            most = max(per_class, key=per_class.get)
            least = min((k for k in per_class if per_class[k] > 0), key=per_class.get)
            found.add("class_imbalance", f"'{most}' has {per_class[most]} train examples and '{least}' "
                      f"{per_class[least]}: ratio {ratio:.2f} > validate.max_class_imbalance="
                      f"{section.max_class_imbalance:g}", "train")
    return per_class


# ------------------------------------------------------------------------------------------------
# tensorflow_metadata protos
# ------------------------------------------------------------------------------------------------
def schema_proto(schema: dict):
    """The Examples schema as a TFDV-compatible `Schema` proto."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    proto = schema_pb2.Schema()
    num_classes = len(schema["class_names"])

    def add(name, kind, required=True, count=None):
        feature = proto.feature.add(name=name, type=kind)
        if required:
            feature.presence.min_fraction = 1.0
            feature.presence.min_count = 1
        if count is not None:
            feature.value_count.min = feature.value_count.max = count
        return feature

    features = set(schema.get("features", []))
    add(ex.ID, schema_pb2.BYTES, count=1)
    add(ex.SOURCE, schema_pb2.BYTES, count=1)
    height, width, channels = schema.get("image_size") or (0, 0, 0)
    for key, value in ((ex.HEIGHT, height), (ex.WIDTH, width), (ex.CHANNELS, channels)):
        feature = add(key, schema_pb2.INT, count=1)
        feature.int_domain.min = feature.int_domain.max = int(value)
    add(ex.IMAGE_FORMAT, schema_pb2.BYTES, count=1)
    if ex.VIDEO in features:
        add(ex.VIDEO, schema_pb2.BYTES, count=schema.get("num_frames")).image_domain.SetInParent()
        frames = add(ex.NUM_FRAMES, schema_pb2.INT, count=1)
        if schema.get("num_frames"):
            frames.int_domain.min = frames.int_domain.max = int(schema["num_frames"])
    if ex.IMAGE in features:
        add(ex.IMAGE, schema_pb2.BYTES, count=1).image_domain.SetInParent()
    for key in (ex.LABEL, ex.VIDEO_LABEL):
        if key in features:
            label = add(key, schema_pb2.INT, count=1)
            label.int_domain.min, label.int_domain.max = 0, num_classes - 1
            label.int_domain.is_categorical = True
    if ex.MASK in features:
        add(ex.MASK, schema_pb2.BYTES, count=1).image_domain.SetInParent()
    if ex.BOX_LABEL in features:
        for key in ex.BOX_KEYS:
            box = add(key, schema_pb2.FLOAT, required=False)
            box.float_domain.min, box.float_domain.max = 0.0, 1.0
        labels = add(ex.BOX_LABEL, schema_pb2.INT, required=False)
        labels.int_domain.min, labels.int_domain.max = 0, num_classes - 1
        labels.int_domain.is_categorical = True
    proto.dataset_constraints.min_examples_count = 1
    return proto


def anomalies_proto(anomalies: list[Anomaly], baseline):
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    proto = anomalies_pb2.Anomalies()
    proto.baseline.CopyFrom(baseline)
    proto.anomaly_name_format = anomalies_pb2.Anomalies.SERIALIZED_PATH
    for anomaly in anomalies:
        reason_type = anomalies_pb2.AnomalyInfo.Type.Value(KINDS[anomaly.kind][1])
        reason = anomalies_pb2.AnomalyInfo.Reason(type=reason_type, short_description=anomaly.kind,
                                                  description=anomaly.line())
        if anomaly.feature:
            info = proto.anomaly_info[anomaly.feature]
            info.path.step[:] = [anomaly.feature]
        else:
            info = proto.dataset_anomaly_info
        info.severity = anomalies_pb2.AnomalyInfo.ERROR
        info.reason.append(reason)
        info.short_description = anomaly.kind if len(info.reason) == 1 else "Multiple errors"
        info.description = " ".join(r.description for r in info.reason)
    return proto


# ------------------------------------------------------------------------------------------------
# the stage
# ------------------------------------------------------------------------------------------------
def validate_examples(examples_dir: Path, section) -> tuple[list[Anomaly], dict, dict, dict]:
    """(anomalies, schema, records per split, train examples per class) of one Examples artifact."""
    schema = ex.read_schema(examples_dir)
    found = _Collector()
    counts, classes = scan(examples_dir, schema, found)
    per_class = dataset_checks(schema, counts, classes, section, found)
    return found.anomalies(), schema, counts, per_class


def report_text(anomalies: list[Anomaly], examples_dir: Path) -> str:
    lines = [f"validate: {len(anomalies)} anomal{'y' if len(anomalies) == 1 else 'ies'} in {examples_dir}:"]
    lines += ["  " + a.line() for a in anomalies]
    lines.append("Fix the source or ingest settings, or set validate.on_anomaly=warn to go on anyway.")
    return "\n".join(lines)


def run_validate(ctx: ExecutionContext) -> None:
    from google.protobuf import text_format

    section = ctx.config.section("validate")
    examples_dir = Path(ctx.inputs["examples"].uri)
    out = Path(ctx.outputs["report"])
    out.mkdir(parents=True, exist_ok=True)
    anomalies, schema, counts, per_class = validate_examples(examples_dir, section)

    document = {"examples": str(examples_dir), "split_counts": counts, "train_examples_per_class": per_class,
                "passed": not anomalies, "anomalies": [a.__dict__ for a in anomalies]}
    (out / ANOMALIES_FILE).write_text(json.dumps(document, indent=2))
    (out / SCHEMA_JSON).write_text(json.dumps(schema, indent=2, sort_keys=True))
    baseline = schema_proto(schema)
    (out / SCHEMA_PBTXT).write_text(text_format.MessageToString(baseline))
    (out / ANOMALIES_PBTXT).write_text(text_format.MessageToString(anomalies_proto(anomalies, baseline)))
    ctx.properties["report"] = {"passed": not anomalies, "num_anomalies": len(anomalies),
                                "kinds": sorted({a.kind for a in anomalies})}

    if not anomalies:
        ctx.log.info("validate: %d records in %s, no anomalies", sum(counts.values()), examples_dir)
        return
    text = report_text(anomalies, examples_dir)
    if section.on_anomaly == "fail":
        raise StageError(text)
    ctx.log.warning("%s\n(validate.on_anomaly=warn: going on)", text)


def _parameters(config: PipelineConfig) -> dict:
    return config.section("validate").model_dump(mode="json")


STAGE = Stage(
    name="validate",
    outputs={"report": "ExampleValidation"},
    executor=run_validate,
    parameters=_parameters,
    inputs={"examples": "ingest.examples"},
    module=__name__,
)
