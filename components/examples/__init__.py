"""The one place that knows the Example feature keys: encode, parse, decode, and the tf.data reader.

keys.py (feature keys, file names), images.py (PIL encode/decode), records.py (record dict <->
tf.train.Example), files.py (shards and schema.json on disk), dataset.py (the tf.data reader),
ordered_shards.py (Beam: shards in a stable order). The names below are the package's API
(`from components import examples as ex; ex.make_dataset(...)`).

Every stage that reads or writes Examples goes through this package, so the data contract of
DESIGN.md (TF Object Detection API keys, gzip TFRecord shards per split, `schema.json`) lives in
one file. A record, before encoding and after decoding, is a plain dict:

    id: str, source: str,
    image: uint8 [H, W, C]                      (all tasks but video)
    label: int                                  (classification, video)
    mask: uint8 [H, W] class ids                (segmentation)
    boxes: float32 [N, 4] xmin, ymin, xmax, ymax normalised to [0, 1]; box_labels: int64 [N]
    crowd_boxes: float32 [C, 4]; crowd_labels: int64 [C]   (detection, optional: COCO `iscrowd`
                                                regions, never training targets, matched as
                                                "ignore" by the evaluation)
    box_flags: {"difficult", "truncated": int64 [N + C]}  (detection, optional: VOC's flags per
                                                box, boxes then crowd boxes; kept, not used)
    frames: uint8 [T, H, W, C]                  (video)
"""
from components.examples.keys import (  # noqa: F401
    BOX_CROWD, BOX_FLAGS, BOX_KEYS, BOX_LABEL, CHANNELS, DEAD_LETTER_FILE, HEIGHT, ID, IMAGE, IMAGE_FORMAT, LABEL, MASK, MAX_BOXES,
    NUM_FRAMES, RecordError, SCHEMA_FILE, SHARD_SUFFIX, SOURCE, SPLITS, STATS_FILE, VIDEO, VIDEO_LABEL, WIDTH)
from components.examples.images import (  # noqa: F401
    decode_image, decode_mask, encode_image)
from components.examples.records import (  # noqa: F401
    decode_example, encode_example)
from components.examples.files import (  # noqa: F401
    iter_records, read_schema, shard_files, shard_pattern)
from components.examples.dataset import (  # noqa: F401
    decode_compact, decode_image_tensor, decoded_split, expand_compact, feature_spec, make_dataset, parse_example)
