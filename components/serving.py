"""Served models: the TF Serving layout, loading a version, and the classifier's SavedModel signatures.

Shared by export (writes a version), evaluate (compares with the version served now) and predict
(runs a version on image files); each task's signatures are built by its adapter
(components/tasks/), the classifier's here. TF Serving's REST mapping is in
components/serving_rest.py, the fresh-process check in components/serving_probe.py. A model directory `<serving_root>/<model_name>/` holds numeric
version directories; TF Serving loads any numeric directory it sees, so a version is written
under a hidden temporary name and renamed into place only once complete and checked.

Signatures of an exported version:
  serving_default(image_bytes: string [batch])  -> probabilities [batch, K], class_id [batch], class_name [batch]
  serving_images(images: float32 [batch, H, W, C] in [0, 1]) -> the same outputs
The bytes signature decodes PNG/JPEG/GIF/BMP and resizes to the training size itself, so a client
sends files as they are. `assets.extra/convpipe.json` records where the version came from.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from components.serving_rest import RestError, rest_predict  # noqa: F401  (re-exported: the REST mapping)

BYTES_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "serving_images"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
OUTPUTS = ("probabilities", "class_id", "class_name")
INFO_FILE = Path("assets.extra") / "convpipe.json"


# ------------------------------------------------------------------------------------------------
# the layout
# ------------------------------------------------------------------------------------------------
def versions(model_dir: str | Path) -> list[int]:
    """Numeric version directories, ascending (what TF Serving would consider loading)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def version_dir(model_dir: str | Path, version: Optional[int] = None) -> Path:
    """The directory of `version`, or of the latest version; FileNotFoundError names what exists."""
    model_dir = Path(model_dir)
    found = versions(model_dir)
    if not found:
        raise FileNotFoundError(f"{model_dir}: expected numeric version directories (TF Serving layout), found none")
    if version is None:
        return model_dir / str(found[-1])
    if version not in found:
        raise FileNotFoundError(f"{model_dir}: version {version} not found; versions present: {found}")
    return model_dir / str(version)


def read_info(path: str | Path) -> dict:
    """`assets.extra/convpipe.json` of a version ({} when absent or unreadable)."""
    try:
        return json.loads((Path(path) / INFO_FILE).read_text())
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------------------------
# building the SavedModel
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# running a version
# ------------------------------------------------------------------------------------------------
class ServedModel:
    """A loaded version: `run(signature, **inputs)` on numpy batches; `classify_bytes` / `classify_images`
    for the classifier's two signatures. `signatures` names those the version must have."""

    def __init__(self, path: str | Path, signatures: Sequence[str] = (BYTES_SIGNATURE, IMAGES_SIGNATURE)):
        import tensorflow as tf

        self.path = Path(path)
        self.loaded = tf.saved_model.load(str(self.path))
        missing = [name for name in signatures if name not in self.loaded.signatures]
        if missing:
            raise ValueError(f"{self.path}: expected signatures {list(signatures)}, "
                             f"missing {missing} (found {sorted(self.loaded.signatures)})")
        self.info = read_info(self.path)

    def run(self, signature: str, batch_size: int = 64, **inputs) -> dict:
        """Every output of `signature` on `inputs` (numpy arrays with one batch axis), in chunks."""
        import tensorflow as tf

        function = self.loaded.signatures[signature]
        specs = function.structured_input_signature[1]
        arrays = {name: np.asarray(value) for name, value in inputs.items()}
        count = len(next(iter(arrays.values()))) if arrays else 0
        parts: dict[str, list] = {}
        for start in range(0, count, batch_size):
            chunk = {name: tf.constant(value[start:start + batch_size].tolist() if specs[name].dtype == tf.string
                                       else value[start:start + batch_size], dtype=specs[name].dtype)
                     for name, value in arrays.items()}
            for key, value in function(**chunk).items():
                parts.setdefault(key, []).append(value.numpy())
        return {key: np.concatenate(chunks) for key, chunks in parts.items()}

    def classify_bytes(self, encoded: Sequence[bytes], batch_size: int = 64) -> dict:
        values = np.empty(len(encoded), dtype=object)
        values[:] = [bytes(e) for e in encoded]
        return self.run(BYTES_SIGNATURE, batch_size, **{BYTES_INPUT: values})

    def classify_images(self, images: np.ndarray, batch_size: int = 64) -> dict:
        return self.run(IMAGES_SIGNATURE, batch_size, **{IMAGES_INPUT: np.asarray(images, np.float32)})


# ------------------------------------------------------------------------------------------------
# checking a version in a fresh process
# ------------------------------------------------------------------------------------------------
def probe_in_fresh_process(saved_model: str | Path, encoded: Sequence[bytes], images: np.ndarray, scratch: str | Path,
                           timeout: float = 600) -> dict:
    """The classifier's two signatures run by a new Python process (components/serving_probe.py):
    bytes_probabilities, bytes_class_id, bytes_class_name, images_probabilities, images_class_id."""
    from components.serving_probe import run_in_fresh_process

    values = np.empty(len(encoded), dtype=object)
    values[:] = [bytes(e) for e in encoded]
    outputs = run_in_fresh_process(saved_model, {BYTES_SIGNATURE: {BYTES_INPUT: values},
                                                 IMAGES_SIGNATURE: {IMAGES_INPUT: np.asarray(images, np.float32)}},
                                   scratch, timeout)
    by_bytes, by_images = outputs[BYTES_SIGNATURE], outputs[IMAGES_SIGNATURE]
    return {"bytes_probabilities": by_bytes["probabilities"], "bytes_class_id": by_bytes["class_id"],
            "bytes_class_name": by_bytes["class_name"], "images_probabilities": by_images["probabilities"],
            "images_class_id": by_images["class_id"]}
