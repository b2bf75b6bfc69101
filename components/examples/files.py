"""The Examples artifact on disk: shard files per split, `schema.json`, and reading records back
eagerly (validation, tests, small reports)."""
from __future__ import annotations

import json
from pathlib import Path

from components.examples.keys import SCHEMA_FILE, SHARD_SUFFIX
from components.examples.records import decode_example


def shard_pattern(examples_dir: str | Path, split: str) -> str:
    return str(Path(examples_dir) / split / f"data-*{SHARD_SUFFIX}")


def shard_files(examples_dir: str | Path, split: str) -> list[str]:
    return sorted(str(p) for p in (Path(examples_dir) / split).glob(f"data-*{SHARD_SUFFIX}"))


def read_schema(examples_dir: str | Path) -> dict:
    path = Path(examples_dir) / SCHEMA_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: Examples artifact has no {SCHEMA_FILE}") from None


def iter_records(examples_dir: str | Path, split: str):
    """Yields decoded record dicts of one split (eager, for validation, tests and small reports)."""
    import tensorflow as tf

    for path in shard_files(examples_dir, split):
        for serialized in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            yield decode_example(serialized)
