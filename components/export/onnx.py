"""ONNX files through tf2onnx, and running them with onnxruntime.

tf2onnx converts a TensorFlow function, here the SavedModel's float signature loaded back, so the
ONNX graph holds the same pre- and post-processing as the SavedModel: softmax, argmax, the
detectors' `CombinedNonMaxSuppression` (which tf2onnx rewrites into ONNX `NonMaxSuppression`
plus the gathers and top-k around it). Output names are the signature's output keys.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

OPSET = 17
"""ONNX opset: 17 is read by onnxruntime 1.14 and later, and by most other runtimes of 2023 on."""


def convert(saved_model: str | Path, signature: str) -> bytes:
    """The SavedModel's `signature` as a serialized ONNX ModelProto, inputs and outputs named as
    the signature names them. tf2onnx's SavedModel loader freezes the variables and the captured
    constants (a classifier's class-name table) into the graph, as `from_function` on a loaded
    signature does not."""
    from tf2onnx import convert as tf2onnx_convert
    from tf2onnx import tf_loader

    graph_def, inputs, outputs, tensors_to_rename = tf_loader.from_saved_model(
        str(saved_model), None, None, tag="serve", signatures=[signature], return_tensors_to_rename=True)
    proto, _ = tf2onnx_convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs, opset=OPSET,
                                              tensors_to_rename=tensors_to_rename)
    return proto.SerializeToString()


def runtime_name() -> str:
    import onnxruntime
    return f"onnxruntime {onnxruntime.__version__}"


def run(path: str | Path, inputs: Mapping[str, np.ndarray]) -> dict:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {name: np.asarray(value) for name, value in inputs.items()})
    return dict(zip(names, values))
