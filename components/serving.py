"""The served classifier: the SavedModel signatures, the TF Serving layout, and TF Serving's REST mapping.

Shared by export (writes a version), evaluate (compares with the version served now) and predict
(runs a version on image files). A model directory `<serving_root>/<model_name>/` holds numeric
version directories; TF Serving loads any numeric directory it sees, so a version is written
under a hidden temporary name and renamed into place only once complete and checked.

Signatures of an exported version:
  serving_default(image_bytes: string [batch])  -> probabilities [batch, K], class_id [batch], class_name [batch]
  serving_images(images: float32 [batch, H, W, C] in [0, 1]) -> the same outputs
The bytes signature decodes PNG/JPEG/GIF/BMP and resizes to the training size itself, so a client
sends files as they are. `assets.extra/convpipe.json` records where the version came from.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

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
def export_archive(model, class_names: Sequence[str], image_size: Sequence[int]):
    """A keras.export.ExportArchive with the two classification signatures."""
    import keras
    import tensorflow as tf

    from components.examples import decode_image_tensor

    height, width, channels = (int(v) for v in image_size)
    names = tf.constant(list(class_names))

    def postprocess(logits):
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"probabilities": probabilities, "class_id": class_id, "class_name": tf.gather(names, class_id)}

    def serve_images(images):
        return postprocess(model(images, training=False))

    def serve_bytes(image_bytes):
        images = tf.map_fn(lambda data: decode_image_tensor(data, channels, (height, width)), image_bytes,
                           fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32))
        return serve_images(images)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(BYTES_SIGNATURE, serve_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    archive.add_endpoint(IMAGES_SIGNATURE, serve_images,
                         input_signature=[tf.TensorSpec([None, height, width, channels], tf.float32, name=IMAGES_INPUT)])
    return archive


def write_saved_model(model, class_names: Sequence[str], image_size: Sequence[int], path: str | Path, info: dict) -> None:
    export_archive(model, class_names, image_size).write_out(str(path), verbose=False)
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
    """A loaded version: call `classify_bytes` / `classify_images` with numpy batches."""

    def __init__(self, path: str | Path):
        import tensorflow as tf

        self.path = Path(path)
        self.loaded = tf.saved_model.load(str(self.path))
        missing = [name for name in (BYTES_SIGNATURE, IMAGES_SIGNATURE) if name not in self.loaded.signatures]
        if missing:
            raise ValueError(f"{self.path}: expected signatures {BYTES_SIGNATURE} and {IMAGES_SIGNATURE}, "
                             f"missing {missing} (found {sorted(self.loaded.signatures)})")
        self.info = read_info(self.path)

    def classify_bytes(self, encoded: Sequence[bytes], batch_size: int = 64) -> dict:
        import tensorflow as tf

        signature = self.loaded.signatures[BYTES_SIGNATURE]
        return _batched(lambda chunk: signature(**{BYTES_INPUT: tf.constant(list(chunk), dtype=tf.string)}),
                        list(encoded), batch_size)

    def classify_images(self, images: np.ndarray, batch_size: int = 64) -> dict:
        import tensorflow as tf

        signature = self.loaded.signatures[IMAGES_SIGNATURE]
        return _batched(lambda chunk: signature(**{IMAGES_INPUT: tf.constant(np.asarray(chunk, np.float32))}),
                        np.asarray(images, np.float32), batch_size)


def _batched(call, values, batch_size: int) -> dict:
    parts: dict[str, list] = {}
    for start in range(0, len(values), batch_size):
        for key, value in call(values[start:start + batch_size]).items():
            parts.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(chunks) for key, chunks in parts.items()}


# ------------------------------------------------------------------------------------------------
# TF Serving's REST predict API, mapped onto a signature
# ------------------------------------------------------------------------------------------------
class RestError(ValueError):
    """A request TF Serving would reject with 400; the message says what was expected."""


def _decode_value(value):
    """`{"b64": "..."}` becomes bytes (TF Serving's rule for binary values); lists recurse."""
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise RestError(f"expected a binary value as {{\"b64\": \"...\"}}, got an object with keys {sorted(value)}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (ValueError, TypeError) as exc:
            raise RestError(f"b64: not valid base64 ({exc})") from None
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    return value


def _encode_value(value):
    """Outputs as JSON: strings whose name ends in _bytes go back as b64, like TF Serving."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, np.ndarray):
        return [_encode_value(v) for v in value] if value.dtype == object else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def rest_predict(signature, request: dict) -> dict:
    """Answer a TF Serving REST `:predict` body the way TF Serving maps it onto `signature`.

    Row format `{"instances": [...]}`: each instance is the value of the single input, or an object
    of input name -> value; the answer is `{"predictions": [...]}` with one entry per instance (a
    bare value when the signature has one output, else an object). Columnar format
    `{"inputs": ...}` answers `{"outputs": ...}`. Binary values travel as `{"b64": "..."}`.
    """
    import tensorflow as tf

    if not isinstance(request, dict) or ("instances" in request) == ("inputs" in request):
        raise RestError('expected a JSON object with exactly one of "instances" (row format) or "inputs" (columnar)')
    positional, named_specs = signature.structured_input_signature
    input_specs = dict(named_specs) or {spec.name: spec for spec in positional}
    input_names = sorted(input_specs)
    outputs_spec = signature.structured_outputs

    def tensor(name, values):
        spec = input_specs[name]
        try:
            return tf.constant(values, dtype=spec.dtype)
        except (TypeError, ValueError) as exc:
            raise RestError(f"input {name!r}: expected values of type {spec.dtype.name} and shape {spec.shape}; {exc}") from None

    if "instances" in request:
        instances = request["instances"]
        if not isinstance(instances, list) or not instances:
            raise RestError('"instances": expected a non-empty list')
        named = all(isinstance(i, dict) and "b64" not in i for i in instances)
        if named:
            columns = {name: [_decode_value(i.get(name)) for i in instances] for name in input_names}
            missing = [name for name, column in columns.items() if any(v is None for v in column)]
            if missing:
                raise RestError(f"instances: every instance must name the inputs {input_names}; missing {missing}")
        else:
            if len(input_names) != 1:
                raise RestError(f"instances: the signature has inputs {input_names}; name them in each instance")
            columns = {input_names[0]: [_decode_value(i) for i in instances]}
        result = signature(**{name: tensor(name, values) for name, values in columns.items()})
        result = {key: value.numpy() for key, value in result.items()}
        count = len(instances)
        if len(outputs_spec) == 1:
            only = next(iter(result.values()))
            return {"predictions": [_encode_value(only[i]) for i in range(count)]}
        return {"predictions": [{key: _encode_value(value[i]) for key, value in result.items()} for i in range(count)]}

    inputs = request["inputs"]
    if not isinstance(inputs, dict):
        if len(input_names) != 1:
            raise RestError(f"inputs: the signature has inputs {input_names}; give an object naming each")
        inputs = {input_names[0]: inputs}
    unknown = sorted(set(inputs) - set(input_names))
    if unknown:
        raise RestError(f"inputs: unknown input(s) {unknown}; the signature takes {input_names}")
    result = signature(**{name: tensor(name, _decode_value(value)) for name, value in inputs.items()})
    result = {key: _encode_value(value.numpy()) for key, value in result.items()}
    return {"outputs": next(iter(result.values())) if len(result) == 1 else result}


# ------------------------------------------------------------------------------------------------
# checking a version in a fresh process
# ------------------------------------------------------------------------------------------------
def probe_in_fresh_process(saved_model: str | Path, encoded: Sequence[bytes], images: np.ndarray, scratch: str | Path,
                           timeout: float = 600) -> dict:
    """Load `saved_model` in a new Python process and run both signatures; returns their outputs.

    A fresh process proves the SavedModel stands alone: nothing from this process (registered
    Keras objects, live variables, traced functions) can leak into the check.
    """
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    request, answer = scratch / "probe_in.npz", scratch / "probe_out.npz"
    encoded = [bytes(e) for e in encoded]
    np.savez(request, encoded=np.frombuffer(b"".join(encoded), np.uint8),
             lengths=np.array([len(e) for e in encoded], np.int64), images=np.asarray(images, np.float32))
    project = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=project + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
               TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    process = subprocess.run([sys.executable, "-m", "components.serving", str(saved_model), str(request), str(answer)],
                             capture_output=True, text=True, env=env, timeout=timeout)
    if process.returncode != 0:
        tail = "\n".join((process.stdout + process.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{saved_model}: loading in a fresh process failed (exit {process.returncode}):\n{tail}")
    with np.load(answer, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _probe_main(argv: Sequence[str]) -> int:
    saved_model, request, answer = argv
    with np.load(request, allow_pickle=False) as data:
        flat, lengths, images = data["encoded"].tobytes(), data["lengths"], data["images"]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    encoded = [flat[offsets[i]:offsets[i + 1]] for i in range(len(lengths))]
    served = ServedModel(saved_model)
    from_bytes = served.classify_bytes(encoded)
    from_images = served.classify_images(images)
    np.savez(answer, bytes_probabilities=from_bytes["probabilities"], bytes_class_id=from_bytes["class_id"],
             bytes_class_name=np.array([n.decode() for n in from_bytes["class_name"]]), images_probabilities=from_images["probabilities"],
             images_class_id=from_images["class_id"])
    return 0


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))
