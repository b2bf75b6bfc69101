"""The Examples artifact's names: feature keys (TF Object Detection API convention), split and
file names, and the error a record that breaks the contract raises. Everything else in this
package, and every stage, spells a key through these constants."""
from __future__ import annotations


SPLITS = ("train", "eval", "test")
SHARD_SUFFIX = ".tfrecord.gz"
SCHEMA_FILE = "schema.json"
STATS_FILE = "stats.json"
DEAD_LETTER_FILE = "dead_letter.jsonl"

ID = "example/id"
SOURCE = "example/source"
IMAGE = "image/encoded"
IMAGE_FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
CHANNELS = "image/channels"
LABEL = "image/class/label"
MASK = "image/segmentation/class/encoded"
BOX_KEYS = ("image/object/bbox/xmin", "image/object/bbox/ymin", "image/object/bbox/xmax", "image/object/bbox/ymax")
BOX_LABEL = "image/object/class/label"
BOX_CROWD = "image/object/is_crowd"
"""int64 per box, 1 for a crowd region (TF Object Detection API key). Crowd boxes are stored after
the others in the same bbox/label lists; the key is written only when a record has crowd boxes."""
BOX_FLAGS = {"difficult": "image/object/difficult", "truncated": "image/object/truncated"}
"""Optional int64 flags per box (TF Object Detection API keys, Pascal VOC's), in the bbox lists'
order (ordinary boxes, then crowd boxes); a record's `box_flags` {name: [N + C]}. Kept as data:
no stage trains or scores on them (a VOC difficult object is already an ignore region, stored as
a crowd box: components/sources/voc.py)."""
VIDEO = "video/encoded"
NUM_FRAMES = "video/num_frames"
VIDEO_LABEL = "video/class/label"

MAX_BOXES = 32
"""Boxes per image after padding in the reader (detection targets have a static shape)."""


class RecordError(ValueError):
    """A record that cannot become a valid Example; the message says which field and why."""
