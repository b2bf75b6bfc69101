"""The formats of `export.formats` besides the SavedModel, written into the version directory
before it is renamed into place, so a version appears with all its files or not at all.

    <version>/saved_model.pb, variables/   the SavedModel (TF Serving)
    <version>/model.tflite                 export.formats has "tflite"
    <version>/model.onnx                   export.formats has "onnx"

Each file is converted from the version's float signature (`serving_images`: float32 images in
[0, 1] of the training size; the bytes signature's image decoding has no TFLite or ONNX op), run
in a fresh process by the runtime a user would load it with (LiteRT's interpreter, onnxruntime)
on the evaluation's probe images, and compared with the Keras model run in this process on the
same images. The largest absolute difference over every output goes into the version's metadata
(`assets.extra/convpipe.json` "formats") and pushed.json; above the format's tolerance
(`export.format_tolerance`) the format is refused and nothing is pushed. Integer outputs (class
ids, detection counts) count their difference like any other number; strings must be equal.

What the detectors' in-graph NMS (`CombinedNonMaxSuppression`) becomes:
- ONNX: ONNX `NonMaxSuppression` with the gathers and top-k around it (tf2onnx's rewrite); the
  file gives the SavedModel's outputs, boxes_xyxy, scores, classes, num_detections.
- TFLite: nothing. The op has no TFLite builtin (it would need TF Select ops, which neither the
  pip LiteRT interpreter nor a phone without the Select-ops library runs), so the file holds the
  network without post-processing, on the same float images: its raw outputs (for the one-stage
  detector `box_deltas`, `class_logits`, `anchors`), which the app decodes and suppresses itself;
  the metadata says so ("graph": "network").
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from components.export import format_check, onnx, tflite

IMAGE_TASKS = ("classification", "segmentation", "detection", "multitask")
FLOAT_SIGNATURE = "serving_images"
FLOAT_INPUT = "images"
NETWORK_SIGNATURE = "network"
FILES = {"tflite": "model.tflite", "onnx": "model.onnx"}


class FormatRefused(RuntimeError):
    """A format whose file disagrees with the Keras model beyond its tolerance."""


def _numpy(outputs) -> dict:
    """A signature's or a Keras model's outputs as {name: numpy}."""
    import tensorflow as tf

    if isinstance(outputs, dict):
        return {key: np.asarray(tf.convert_to_tensor(value)) for key, value in outputs.items()}
    flat = tf.nest.flatten(outputs)
    return {f"output_{i}": np.asarray(value) for i, value in enumerate(flat)}


def _as_text(value: np.ndarray) -> np.ndarray:
    return format_check._as_text(value)


def difference(expected: dict, found: dict, where: str) -> float:
    """The largest |difference| over every output; a missing output or unequal strings refuse."""
    missing = sorted(set(expected) - set(found))
    if missing:
        raise FormatRefused(f"{where} lacks the outputs {missing} (it has {sorted(found)})")
    worst = 0.0
    for key, value in expected.items():
        value, other = np.asarray(value), np.asarray(found[key])
        if value.shape != other.shape:
            raise FormatRefused(f"{where} output {key} has shape {list(other.shape)}, the Keras model's {list(value.shape)}")
        if value.dtype == object or value.dtype.kind in "SU":
            if not np.array_equal(_as_text(value), _as_text(other)):
                raise FormatRefused(f"{where} output {key} differs from the Keras model's: {_as_text(other).tolist()} "
                                    f"against {_as_text(value).tolist()}")
            continue
        if value.size:
            worst = max(worst, float(np.max(np.abs(value.astype(np.float64) - other.astype(np.float64)))))
    return worst


class _Graphs:
    """The two graphs a format may be converted from, each with its Keras reference outputs."""

    def __init__(self, saved_model: Path, model, task, info: dict, images: np.ndarray, scratch: Path):
        self.saved_model, self.model, self.task, self.info, self.images, self.scratch = \
            saved_model, model, task, info, images, scratch
        self._network_dir = None

    def signature_reference(self) -> dict:
        """The Keras model under the float signature's own pre- and post-processing."""
        import tensorflow as tf

        archive = self.task.export_archive(self.model, self.info)
        # ExportArchive keeps each endpoint's tf.function on its trackable (Keras 3): the
        # function add_endpoint returned, calling the live Keras model.
        endpoint = getattr(archive._tf_trackable, FLOAT_SIGNATURE)
        return _numpy(endpoint(tf.constant(self.images)))

    def network_dir(self) -> Path:
        """A SavedModel in scratch whose one signature is the bare network on float images."""
        if self._network_dir is None:
            import keras
            import tensorflow as tf

            model = self.model
            shape = [None, *(int(v) for v in self.info["input_shape"])]
            archive = keras.export.ExportArchive()
            archive.track(model)

            def network(images):
                outputs = model(images, training=False)
                return {k: tf.cast(v, tf.float32) for k, v in outputs.items()} if isinstance(outputs, dict) \
                    else {"output_0": tf.cast(outputs, tf.float32)}

            archive.add_endpoint(NETWORK_SIGNATURE, network,
                                 input_signature=[tf.TensorSpec(shape, tf.float32, name=FLOAT_INPUT)])
            self._network_dir = self.scratch / "network_saved_model"
            archive.write_out(str(self._network_dir), verbose=False)
        return self._network_dir

    def network_reference(self) -> dict:
        import tensorflow as tf

        outputs = self.model(tf.constant(self.images), training=False)
        reference = _numpy(outputs)
        if not isinstance(outputs, dict):
            reference = {"output_0": reference["output_0"]}
        return {k: v.astype(np.float32) for k, v in reference.items()}


def _tflite(graphs: _Graphs, quantization: str) -> tuple[bytes, str, dict, str]:
    """(file bytes, signature, Keras reference, what became of the post-processing)."""
    try:
        data = tflite.convert(graphs.saved_model, FLOAT_SIGNATURE, quantization)
        return data, FLOAT_SIGNATURE, graphs.signature_reference(), "the float signature, post-processing included"
    except tflite.NeedsSelectOps as exc:
        data = tflite.convert(graphs.network_dir(), NETWORK_SIGNATURE, quantization)
        return (data, NETWORK_SIGNATURE, graphs.network_reference(),
                f"the network without post-processing: {exc}, so decoding and non-max suppression are left "
                f"to the application")


def write_formats(formats: Sequence[str], version_dir: Path, model, task, info: dict, probe_images: np.ndarray,
                  section, scratch: Path, log) -> dict:
    """Write, check and describe every format but the SavedModel: {format: metadata}. Raises
    FormatRefused when a file disagrees with the Keras model beyond its tolerance."""
    wanted = [f for f in formats if f != "saved_model"]
    if not wanted:
        return {}
    if task.name not in IMAGE_TASKS:
        raise FormatRefused(f"export.formats {wanted}: only image tasks {list(IMAGE_TASKS)} convert to them, "
                            f"this model is {task.name!r}")
    graphs = _Graphs(version_dir, model, task, info, np.asarray(probe_images, np.float32), scratch)
    described = {}
    for kind in wanted:
        if kind == "tflite":
            quantization = section.tflite_quantization
            data, signature, reference, graph = _tflite(graphs, quantization)
            tolerance = getattr(section.format_tolerance, "tflite_int8" if quantization == "dynamic_int8" else "tflite")
            runtime = tflite.runtime_name()
        else:
            data, signature, reference = onnx.convert(version_dir, FLOAT_SIGNATURE), FLOAT_SIGNATURE, graphs.signature_reference()
            graph, quantization, tolerance, runtime = ("the float signature, post-processing included (non-max "
                                                       "suppression as ONNX NonMaxSuppression)"), "float32", \
                section.format_tolerance.onnx, onnx.runtime_name()
        path = version_dir / FILES[kind]
        path.write_bytes(data)
        found = format_check.run_in_fresh_process(kind, path, signature, {FLOAT_INPUT: graphs.images}, scratch)
        worst = difference(reference, found, f"{kind} ({path.name}, run by {runtime} in a fresh process)")
        if worst > tolerance:
            raise FormatRefused(f"{kind}: {path.name} run by {runtime} in a fresh process differs from the Keras model "
                                f"on the {len(graphs.images)} probe images by up to {worst:.3g} (expected <= "
                                f"export.format_tolerance.{'tflite_int8' if kind == 'tflite' and quantization == 'dynamic_int8' else kind} "
                                f"= {tolerance:g})")
        described[kind] = {"file": path.name, "bytes": len(data), "signature": signature, "graph": graph,
                           "inputs": {FLOAT_INPUT: [None, *info["input_shape"]]}, "outputs": sorted(found),
                           "quantization": quantization, "runtime": runtime, "probe_images": int(len(graphs.images)),
                           "max_abs_difference": worst, "tolerance": tolerance}
        log.info("export: %s written (%d bytes, %s), max |difference| from the Keras model %.3g (tolerance %g)",
                 path.name, len(data), runtime, worst, tolerance)
    return described


def record_in_info(version_dir: Path, info_file: Path, described: dict) -> None:
    """Add the formats' metadata to the version's assets.extra/convpipe.json."""
    path = version_dir / info_file
    info = json.loads(path.read_text())
    info["formats"] = {"saved_model": {"file": "saved_model.pb"}, **described}
    path.write_text(json.dumps(info, indent=2))
