"""The serving signatures of an exported version, and the decode they share with training.

  serving_default(image_bytes: string [batch])  -> probabilities [batch, K], class_id [batch], class_name [batch]
  serving_images(images: float32 [batch, H, W, C] in [0, 1]) -> the same outputs
The bytes signature decodes PNG/JPEG/GIF/BMP and resizes to the training size itself, so a client
sends files as they are. Each task's adapter (components/tasks/) builds its signatures with
`image_archive`; the classifier's are here (`export_archive`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from components.serving.layout import INFO_FILE

BYTES_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "serving_images"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
OUTPUTS = ("probabilities", "class_id", "class_name")


def decode_batch(image_bytes, image_size: Sequence[int]):
    """A [batch] string tensor of encoded images -> float32 [batch, H, W, C], decoded as the reader does."""
    import tensorflow as tf

    from components.examples import decode_image_tensor

    height, width, channels = (int(v) for v in image_size)
    return tf.map_fn(lambda data: decode_image_tensor(data, channels, (height, width)), image_bytes,
                     fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32))


def image_archive(model, image_size: Sequence[int], serve_images, serve_bytes=None):
    """An ExportArchive with the two image signatures every image task serves: `serving_default` on
    encoded image bytes (decoded in the graph, then `serve_images`, unless `serve_bytes` is given)
    and `serving_images` on float images of the training size."""
    import keras
    import tensorflow as tf

    height, width, channels = (int(v) for v in image_size)
    if serve_bytes is None:
        def serve_bytes(image_bytes):
            return serve_images(decode_batch(image_bytes, image_size))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(BYTES_SIGNATURE, serve_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    archive.add_endpoint(IMAGES_SIGNATURE, serve_images,
                         input_signature=[tf.TensorSpec([None, height, width, channels], tf.float32, name=IMAGES_INPUT)])
    return archive


def export_archive(model, class_names: Sequence[str], image_size: Sequence[int]):
    """A keras.export.ExportArchive with the two classification signatures."""
    import tensorflow as tf

    names = tf.constant(list(class_names))

    def serve_images(images):
        probabilities = tf.nn.softmax(tf.cast(model(images, training=False), tf.float32), axis=-1)
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"probabilities": probabilities, "class_id": class_id, "class_name": tf.gather(names, class_id)}

    return image_archive(model, image_size, serve_images)


def write_saved_model(model, class_names: Sequence[str], image_size: Sequence[int], path: str | Path, info: dict) -> None:
    """The classifier's SavedModel with its provenance (`assets.extra/convpipe.json`)."""
    write_archive(export_archive(model, class_names, image_size), path, info)


def write_archive(archive, path: str | Path, info: dict) -> None:
    """Any task's ExportArchive written as a SavedModel, with `info` as `assets.extra/convpipe.json`."""
    archive.write_out(str(path), verbose=False)
    target = Path(path) / INFO_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(info, indent=2))


def decode_images(encoded: Sequence[bytes], image_size: Sequence[int]) -> np.ndarray:
    """Encoded images -> float32 [N, H, W, C] in [0, 1], decoded exactly as the training reader does."""
    import tensorflow as tf

    from components.examples import decode_image_tensor

    height, width, channels = (int(v) for v in image_size)
    if not len(encoded):
        return np.zeros((0, height, width, channels), np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(tf.constant(list(encoded), dtype=tf.string)).map(
        lambda data: decode_image_tensor(data, channels, (height, width)))
    return np.concatenate([batch.numpy() for batch in dataset.batch(256)])
