"""Data sources for ingest, chosen by the config's `ingest.source.name`.

Each source module defines a `Reader(source_config, ingest_config)` with:
  class_names() -> list[str]
  list_items() -> list            small picklable keys (paths, index ranges); Beam creates from these
  read(item) -> Iterable[dict]    record dicts (see components/examples/); raises
                                  components.examples.RecordError naming the item for bad input
  fingerprint() -> str            changes when the data changes (file list, sizes, mtimes; or the config)
  schema_extras() -> dict         extra fields for schema.json (e.g. num_frames, length rule)

The Reader is pickled and shipped to Beam workers, so keep open handles out of its state (or drop
them in __getstate__). schema_extras keys that ingest and validate act on:
  num_frames: int                 frames per clip (video)
  mask_class_names: list[str]     mask ids' names when they differ from class_names (multitask)
  ignore_value: int               a mask id allowed besides 0..num_mask_classes-1 (e.g. 255)
A source module may define TASKS = ("classification", ...): ingest's config check then refuses
other values of ingest.task before anything runs.
"""
from __future__ import annotations

import importlib

SOURCE_MODULES = {
    "synthetic": "components.sources.synthetic",
    "image_folder": "components.sources.image_folder",
    "tfds": "components.sources.tfds",
    "coco": "components.sources.coco",
    "voc": "components.sources.voc",
    "yolo": "components.sources.yolo",
    "mask_folder": "components.sources.mask_folder",
    "video_folder": "components.sources.video_folder",
}


def make_reader(source_config, ingest_config):
    module = importlib.import_module(SOURCE_MODULES[source_config.name])
    return module.Reader(source_config, ingest_config)
