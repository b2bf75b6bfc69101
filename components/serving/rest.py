"""TF Serving's REST predict API (`{"instances": [{"b64": ...}]}`), mapped onto a SavedModel signature.

No TF Serving binary can be installed here, so tests and clients without one feed REST bodies
through `rest_predict`, which maps them onto a signature the way TF Serving does.
"""
from __future__ import annotations

import base64

import numpy as np


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
