"""tfds: any TensorFlow Datasets dataset, read from a prepared `data_dir`.

The dataset must already be prepared there (`tfds build`, or an earlier run with `download: true`
on a machine with network); with `download: false` a missing dataset is an error that says so
instead of a silent download. Records from every split in `splits` are read and re-split by a hash
of their id, like every other source, so the Examples splits do not depend on how TFDS cut them.

`features` maps our field names to TFDS feature paths (nested with "/"):
    image, label, mask (an image of class ids), boxes (a BBoxFeature), box_labels, frames (Video)
for example {"image": "image", "boxes": "objects/bbox", "box_labels": "objects/label"}.
Boxes arrive in TFDS's order (ymin, xmin, ymax, xmax) and leave as our rel_xyxy.
Items are slices of at most ITEMS_PER_SLICE records of one split, read with TFDS's slicing API.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from components.examples import RecordError

TASKS = ("classification", "segmentation", "detection", "multitask", "video")
ITEMS_PER_SLICE = 256
FIELDS = ("image", "label", "mask", "boxes", "box_labels", "frames")


class TfdsDataMissing(FileNotFoundError):
    """The dataset is not prepared in data_dir and may not (or cannot) be downloaded."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


class Reader:
    def __init__(self, source_config, ingest_config):
        self.source = source_config
        self.task = ingest_config.task
        unknown = sorted(set(source_config.features) - set(FIELDS))
        if unknown:
            raise ValueError(f"ingest.source.features: expected keys among {list(FIELDS)}, got {unknown}")
        self._builder = None

    # -- the builder -----------------------------------------------------------------------------
    def _open(self):
        """The TFDS builder as found in data_dir, prepared or not (never downloads)."""
        import tensorflow_datasets as tfds

        try:
            return tfds.builder(self.source.dataset, data_dir=self.source.data_dir)
        except Exception as exc:
            raise TfdsDataMissing(
                f"ingest.source.dataset: TFDS dataset {self.source.dataset!r} is neither a registered builder nor "
                f"prepared in {self._where()} ({type(exc).__name__}: {_first_line(exc)})") from None

    def _where(self) -> str:
        return self.source.data_dir or "the default TFDS data_dir (~/tensorflow_datasets)"

    def builder(self):
        """The TFDS builder; prepares the data first only when `download` allows it."""
        if self._builder is not None:
            return self._builder
        builder = self._open()
        where = self._where()
        if not builder.is_prepared():
            if not self.source.download:
                raise TfdsDataMissing(
                    f"TFDS dataset {self.source.dataset!r} is not prepared in {where} (looked in {builder.data_dir}) "
                    "and ingest.source.download is false: prepare it there (`tfds build`) or set "
                    "ingest.source.download=true on a machine with network access")
            try:
                builder.download_and_prepare()
            except Exception as exc:
                raise TfdsDataMissing(
                    f"TFDS dataset {self.source.dataset!r} is not prepared in {where} and downloading it failed "
                    f"(no network?): {type(exc).__name__}: {_first_line(exc)}") from None
        self._builder = builder
        return builder

    def __getstate__(self):  # builders hold open file handles and TF objects: rebuild on the worker
        state = dict(self.__dict__)
        state["_builder"] = None
        return state

    def _feature(self, field: str):
        name = self.source.features.get(field)
        if name is None:
            return None
        feature = self.builder().info.features
        for part in name.split("/"):
            try:
                feature = feature[part]
            except (KeyError, TypeError):
                raise ValueError(f"ingest.source.features.{field}: TFDS dataset {self.source.dataset!r} has no feature "
                                 f"{name!r}; it has {list(self.builder().info.features.keys())}") from None
        return getattr(feature, "feature", feature)  # Sequence(ClassLabel) -> ClassLabel

    # -- the Reader contract ---------------------------------------------------------------------
    def class_names(self) -> list[str]:
        field = "box_labels" if self.task == "detection" else "label"
        feature = self._feature(field) or self._feature("box_labels")
        names = list(getattr(feature, "names", None) or [])
        if not names and feature is not None and getattr(feature, "num_classes", None):
            names = [str(i) for i in range(feature.num_classes)]
        if self.task == "segmentation" and not names:
            raise ValueError("ingest.source.features: a TFDS segmentation source needs a 'label' ClassLabel feature "
                             "naming the mask classes (background first)")
        if not names:
            raise ValueError(f"ingest.source.features: no ClassLabel feature mapped to '{field}' in "
                             f"{self.source.dataset!r}: cannot tell the class names")
        return names

    def list_items(self) -> list[tuple[str, int, int]]:
        splits = self.builder().info.splits
        items = []
        for name in sorted(set(self.source.splits.values())):
            try:
                total = splits[name].num_examples
            except (KeyError, ValueError) as exc:
                raise ValueError(f"ingest.source.splits: TFDS dataset {self.source.dataset!r} has splits "
                                 f"{list(splits.keys())}, got {name!r} ({exc})") from None
            items += [(name, start, min(start + ITEMS_PER_SLICE, total)) for start in range(0, total, ITEMS_PER_SLICE)]
        return items

    def read(self, item: tuple[str, int, int]) -> Iterator[dict]:
        import tensorflow_datasets as tfds

        split, start, stop = item
        builder = self.builder()
        dataset = builder.as_dataset(split=f"{split}[{start}:{stop}]", shuffle_files=False,
                                     read_config=tfds.ReadConfig(add_tfds_id=True))
        for example in tfds.as_numpy(dataset):
            yield self._record(example, split)

    def _value(self, example: dict, field: str):
        name = self.source.features.get(field)
        if name is None:
            return None
        value = example
        for part in name.split("/"):
            value = value[part]
        return value

    def _record(self, example: dict, split: str) -> dict:
        tfds_id = example["tfds_id"].decode() if isinstance(example["tfds_id"], bytes) else str(example["tfds_id"])
        record = {"id": f"{self.source.dataset}/{tfds_id}", "source": f"tfds:{self.source.dataset}/{split}/{tfds_id}"}
        for field in FIELDS:
            value = self._value(example, field)
            if value is None:
                continue
            if field == "boxes":
                from models.detection.boxes import convert

                boxes = np.asarray(value, np.float32).reshape(-1, 4)
                value = np.asarray(convert(boxes, "rel_yxyx", "rel_xyxy"), np.float32) if len(boxes) else boxes
            elif field == "mask":
                value = np.asarray(value, np.uint8)
                if value.ndim == 3:
                    if value.shape[-1] != 1:
                        raise RecordError(f"{record['source']}: mask expected one channel, got shape {value.shape}")
                    value = value[..., 0]
            elif field == "label":
                value = int(value)
            elif field == "box_labels":
                value = np.asarray(value, np.int64).reshape(-1)
            else:
                value = np.asarray(value)
            record[field] = value
        return record

    def fingerprint(self) -> str:
        settings = json.dumps(self.source.model_dump(mode="json"), sort_keys=True)
        digest = hashlib.sha256(settings.encode())
        builder = self._open()
        if not builder.is_prepared():  # fingerprinting never downloads; ingest prepares it when allowed
            return "tfds:not-prepared:" + digest.hexdigest()[:16]
        digest.update(builder.info.full_name.encode())
        for path in sorted(Path(builder.data_dir).glob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return "tfds:" + digest.hexdigest()[:16]

    def schema_extras(self) -> dict:
        info = self.builder().info
        extras = {"tfds_name": info.full_name, "tfds_splits": dict(self.source.splits)}
        frames = self._feature("frames")
        if frames is not None and getattr(frames, "shape", None) and frames.shape[0]:
            extras["num_frames"] = int(frames.shape[0])
        return extras
