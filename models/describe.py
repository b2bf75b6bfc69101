"""Per-layer sizes, padding, stride, receptive field, jump and parameters, computed by the conv arithmetic.

    rows = describe_model("cnn", (32, 32, 3), 3, {"blocks": [...]})
    print(format_table(rows))

The model is built and run once on a batch of zeros while every layer call is recorded
(`trace_calls`), so the rows follow what the model really does: functional graphs with several
inputs and dict outputs, nested models, shared layers (one row per call), and subclassed models
whose `call` mixes layers with plain ops (the detectors). From the recording only the wiring is
taken (which call's output feeds which call) and the sizes of the inputs: every size, receptive
field and jump comes from models/arithmetic applied to each layer's configuration, never from
Keras's shapes. The test compares the two for every call. A non-zero `remainder` is the number of
pixels a floored division drops at the end of an axis, so the table shows what Keras would
silently lose. Channels-last layouts; 1D, 2D and 3D layers.

Where the walk stops following feature maps, a row says so (its `note`) and has no sizes:
- a Reshape that turns a map into rows (anchor outputs), and every layer after it on that branch;
- a layer whose input was made outside the layers (RoIAlign crops, resized pyramid levels in a
  detector's `call`): sizes from that input's shape, no receptive field;
- a layer the forward pass never calls (a loss weighting): its parameters, nothing else.
A layer that changes the spatial size and has no formula here raises, naming layer, class and sizes.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

import keras

from models import arithmetic, backbones
from models.arithmetic import Geometry
from models.layers.bed_of_nails import BedOfNails2D
from models.layers.max_pooling_with_argmax import MaxPoolingWithArgmax2D
from models.layers.max_unpooling import MaxUnpooling2D
from models.layers.nearest_upsampling import NearestUpsampling2D
from models.layers.select_frame import SelectFrame
from models.layers.sum_pooling import SumPooling2D

L = keras.layers
CONVS = (L.Conv1D, L.Conv2D, L.Conv3D, L.DepthwiseConv1D, L.DepthwiseConv2D, L.SeparableConv1D, L.SeparableConv2D)
POOLS = (L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D,
         L.AveragePooling3D, SumPooling2D, MaxPoolingWithArgmax2D)
TRANSPOSED = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
UPSAMPLINGS = (L.UpSampling1D, L.UpSampling2D, L.UpSampling3D, NearestUpsampling2D, BedOfNails2D)
GLOBALS = (L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
           L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D, L.Flatten)
PADDINGS = (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D)
CROPPINGS = (L.Cropping1D, L.Cropping2D, L.Cropping3D)
MERGES = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum, L.Concatenate)
FORMULAS = ("convolutions, transposed convolutions, pooling, upsampling (nearest, bilinear, bed of nails, max "
            "unpooling), resizing, zero padding, cropping, global pooling, flatten")


# ------------------------------------------------------------------------------------------------
# recording the calls
# ------------------------------------------------------------------------------------------------
@dataclass
class LayerCall:
    """One call of a layer during the forward pass."""
    layer: Any
    path: tuple[str, ...]
    """The models it ran inside, outermost first, without the model described."""
    number: int
    """1 for the layer's first call, 2 for its second (a shared layer), ..."""
    inputs: list
    outputs: list


@dataclass
class Trace:
    inputs: list = field(default_factory=list)
    """(name, tensor) of each model input."""
    calls: list = field(default_factory=list)
    uncalled: list = field(default_factory=list)
    """(path, layer) of the layers the forward pass never called."""


def trace_calls(model: keras.Model, input_shape=None) -> Trace:
    """Runs `model` once (training=False) on zeros of batch 1 and records every layer call.

    Models are containers: their own layers are recorded with the model's name in the path. Any
    other layer is recorded as one call, whatever sub-layers it uses inside. `input_shape` (without
    the batch) is needed for a model that is not functional; a functional one knows its own.
    """
    trace = Trace()
    structure = _zeros_like_inputs(model, input_shape)
    inputs = keras.tree.flatten(structure)
    names = [_input_name(t) for t in getattr(model, "inputs", None) or []] if _is_functional(model) else []
    trace.inputs = [(names[i] if i < len(names) else "input", t) for i, t in enumerate(inputs)]
    with _recording(trace.calls):
        model(structure, training=False)
    called = {id(call.layer) for call in trace.calls}
    trace.uncalled = [(path, layer) for path, layer in _leaf_layers(model, ()) if id(layer) not in called]
    return trace


def _is_functional(model) -> bool:
    try:
        return bool(model.inputs)
    except (AttributeError, ValueError):
        return False


def _zeros_like_inputs(model, input_shape):
    if input_shape is not None:
        return keras.ops.zeros((1, *tuple(input_shape)), "float32")
    if not _is_functional(model):
        raise ValueError(f"describe: model '{model.name}' ({type(model).__name__}) is not functional; "
                         f"pass its input_shape (without the batch axis)")

    def zeros(t):
        if any(d is None for d in t.shape[1:]):
            raise ValueError(f"describe: model '{model.name}' has input '{_input_name(t)}' of shape {tuple(t.shape)}. "
                             f"Expected known sizes (sizes come from the input size); pass input_shape.")
        return keras.ops.zeros((1, *t.shape[1:]), t.dtype)
    return keras.tree.map_structure(zeros, model.input)


def _input_name(tensor) -> str:
    history = getattr(tensor, "_keras_history", None)
    return history[0].name if history else getattr(tensor, "name", "input")


@contextmanager
def _recording(calls: list):
    """Every Layer.__call__ in the block appends a LayerCall (Keras has no public hook for this)."""
    original = keras.layers.Layer.__call__
    running: list = []      # models being run (the described one first), or None inside a recorded layer
    counts: dict = {}

    def recording_call(layer, *args, **kwargs):
        if running and running[-1] is None:
            return original(layer, *args, **kwargs)
        is_model = isinstance(layer, keras.Model)
        running.append(layer if is_model else None)
        try:
            outputs = original(layer, *args, **kwargs)
        finally:
            running.pop()
        if not is_model:
            counts[id(layer)] = counts.get(id(layer), 0) + 1
            calls.append(LayerCall(layer, tuple(m.name for m in running[1:]), counts[id(layer)],
                                   _tensors((args, kwargs)), _tensors(outputs)))
        return outputs

    keras.layers.Layer.__call__ = recording_call
    try:
        yield
    finally:
        keras.layers.Layer.__call__ = original


def _tensors(structure) -> list:
    return [t for t in keras.tree.flatten(structure) if keras.ops.is_tensor(t)]


def _leaf_layers(layer, path):
    for sub in layer.layers:
        if isinstance(sub, keras.Model):
            yield from _leaf_layers(sub, path + (sub.name,))
        elif not isinstance(sub, L.InputLayer):
            yield path, sub


# ------------------------------------------------------------------------------------------------
# the walk
# ------------------------------------------------------------------------------------------------
def describe_model(name: str, input_shape, num_classes: int, params: Optional[dict] = None) -> list[dict]:
    """Builds the registered model `name` and describes it layer by layer (see `describe_keras_model`);
    a backbone's weights file is not read (models/backbones: `architecture_only`)."""
    from models import build_model

    params = backbones.architecture_only(params or {})
    return describe_keras_model(build_model(name, input_shape, num_classes, **params), input_shape)


def describe_keras_model(model: keras.Model, input_shape=None) -> list[dict]:
    """One row per input, per layer call, and per layer never called: name, layer, path, call, kind,
    input_size, output_size, channels, padding, pads, stride, kernel, dilation, receptive_field, jump,
    remainder, parameters, note. Sizes are spatial (channels last excluded); None where the walk does
    not follow a feature map (the note says why)."""
    return _walk(model, input_shape)[0]


def output_geometries(model: keras.Model, input_shape=None) -> dict[str, Optional[Geometry]]:
    """The Geometry behind each row of `describe_keras_model` (keyed "path/name" as the table shows
    it; None where the walk does not follow a feature map): per axis, which input pixels every
    output cell reads, for checks finer than the receptive field."""
    return _walk(model, input_shape)[1]


def _walk(model, input_shape):
    trace = trace_calls(model, input_shape)
    walk = _Walk()
    rows = [walk.input_row(name, tensor) for name, tensor in trace.inputs]
    rows += [walk.call_row(call) for call in trace.calls]
    rows += [_uncalled_row(path, layer) for path, layer in trace.uncalled]
    return rows, walk.by_row


def _row(name: str, layer: str, path, number: int, kind: str) -> dict[str, Any]:
    return {"name": name, "layer": layer, "path": "/".join(path), "call": number, "kind": kind,
            "input_size": None, "output_size": None, "channels": None, "padding": None, "pads": None,
            "stride": None, "kernel": None, "dilation": None, "receptive_field": None, "jump": None,
            "remainder": None, "parameters": 0, "note": None}


def _uncalled_row(path, layer) -> dict:
    row = _row(layer.name, layer.name, path, 0, type(layer).__name__)
    row.update(parameters=layer.count_params() if layer.built else 0,
               note="not called by the forward pass (its parameters are still the model's)")
    return row


class _Walk:
    """Geometry of every tensor seen so far (None: not a feature map any more), keyed by id."""

    def __init__(self):
        self.geometry: dict[int, Optional[Geometry]] = {}
        self.maker: dict[int, tuple[str, Any]] = {}     # id -> (row name, layer) that made the tensor
        self.origin: dict[int, frozenset] = {}          # id -> the inputs (or outside tensors) it reads
        self.kept: list = []                            # the tensors, so their ids stay theirs
        self.by_row: dict[str, Optional[Geometry]] = {}

    def _remember(self, tensor, geometry: Optional[Geometry], name: str, layer=None, origin=None):
        self.geometry[id(tensor)] = geometry
        self.origin[id(tensor)] = frozenset({id(tensor)}) if origin is None else origin
        self.maker[id(tensor)] = (name, layer)
        self.kept.append(tensor)

    def input_row(self, name: str, tensor) -> dict:
        geometry = Geometry.of_input(_spatial(tensor.shape))
        self._remember(tensor, geometry, name)
        self.by_row[name] = geometry
        row = _row(name, name, (), 1, "InputLayer")
        row.update(input_size=geometry.size, output_size=geometry.size, channels=tensor.shape[-1],
                   receptive_field=geometry.receptive_field, jump=geometry.jump)
        return row

    def call_row(self, call: LayerCall) -> dict:
        layer = call.layer
        name = layer.name if call.number == 1 else f"{layer.name}#{call.number}"
        row = _row(name, layer.name, call.path, call.number, type(layer).__name__)
        row["parameters"] = layer.count_params() if call.number == 1 else 0
        row["channels"] = call.outputs[0].shape[-1] if call.outputs and len(call.outputs[0].shape) > 1 else None
        outside = [t for t in call.inputs if id(t) not in self.geometry]
        for tensor in outside:
            self._remember(tensor, Geometry(_spatial(tensor.shape)), "outside")
        geometries = [self.geometry[id(t)] for t in call.inputs]
        if outside:
            row["note"] = ("reads a tensor made outside the layers (in the model's call): sizes from its "
                           "shape, no receptive field")
        if not geometries or any(g is None for g in geometries):
            out = None      # after the end of the feature maps on this branch
        else:
            out, updates = self._formula(call, geometries)
            if row["note"] and updates.get("note"):
                updates["note"] = f"{row['note']}; {updates['note']}"
            row.update(updates)
            row["input_size"] = geometries[0].size
        if out is not None:
            row.update(output_size=out.size, receptive_field=out.receptive_field, jump=out.jump)
        origin = frozenset().union(*(self.origin[id(t)] for t in call.inputs))
        for tensor in call.outputs:
            self._remember(tensor, out, _qualified(row), layer, origin)
        self.by_row[_qualified(row)] = out
        return row

    def _formula(self, call: LayerCall, geometries: list[Geometry]) -> tuple[Optional[Geometry], dict]:
        layer, g = call.layer, geometries[0]
        rank = len(g.size)
        if isinstance(layer, CONVS + POOLS):
            is_conv = isinstance(layer, CONVS)
            kernel = layer.kernel_size if is_conv else layer.pool_size
            strides = layer.strides if layer.strides is not None else kernel
            dilation = layer.dilation_rate if is_conv else 1
            result = arithmetic.apply_window(g, kernel, strides, layer.padding, dilation, layer=layer.name)
            return result.geometry, {
                "padding": layer.padding, "pads": result.pads, "stride": arithmetic.as_tuple(strides, rank),
                "kernel": arithmetic.as_tuple(kernel, rank), "dilation": arithmetic.as_tuple(dilation, rank),
                "remainder": result.remainder}
        if isinstance(layer, TRANSPOSED):
            result = arithmetic.apply_transposed(g, layer.kernel_size, layer.strides, layer.padding,
                                                 layer.dilation_rate, layer.output_padding)
            return result.geometry, {
                "padding": f"{layer.padding} crop", "pads": result.pads, "stride": tuple(layer.strides),
                "kernel": tuple(layer.kernel_size), "dilation": arithmetic.as_tuple(layer.dilation_rate, rank)}
        if isinstance(layer, UPSAMPLINGS):
            return self._upsampling(layer, g)
        if isinstance(layer, MaxUnpooling2D):
            return self._unpooling(call, geometries)
        if isinstance(layer, L.Resizing):
            return self._resizing(layer, g)
        if isinstance(layer, PADDINGS + CROPPINGS):
            amounts = layer.padding if isinstance(layer, PADDINGS) else layer.cropping
            pairs = (amounts,) if rank == 1 else amounts
            sign = 1 if isinstance(layer, PADDINGS) else -1
            pads = tuple((sign * int(a), sign * int(b)) for a, b in pairs)
            return arithmetic.apply_padding(g, pads), {"padding": "explicit" if sign > 0 else "crop", "pads": pads}
        if isinstance(layer, GLOBALS):
            out = arithmetic.apply_global(g)
            return (arithmetic.spread(out, (1,) * rank) if getattr(layer, "keepdims", False) else out), {}
        if isinstance(layer, SelectFrame):
            # One frame of a clip: the time axis goes; the frame still sees one time step.
            return Geometry(g.size[1:], None if g.reads is None else g.reads[1:]), {}
        if isinstance(layer, MERGES) and self._merges_channels(layer, call):
            return self._merge(call, geometries)
        if isinstance(layer, L.Reshape) and any(_spatial(t.shape) != g.size for t in call.outputs):
            if g.size == ():    # a vector made into a map: every cell reads what the vector reads
                return arithmetic.spread(g, _spatial(call.outputs[0].shape)), {}
            shape = "x".join(str(d) for d in call.outputs[0].shape[1:])
            return None, {"note": f"reshapes the map into {shape}: not a feature map, the walk ends on this branch"}
        if all(_spatial(t.shape) == g.size for t in call.outputs):
            return g, {}    # batch norm, activation, dropout, dense per position or on a vector, ...
        raise ValueError(f"describe: layer '{layer.name}' ({type(layer).__name__}) changes the spatial size "
                         f"{g.size} -> {_spatial(call.outputs[0].shape)} and has no formula here. Expected one of: "
                         f"{FORMULAS}.")

    @staticmethod
    def _upsampling(layer, g: Geometry):
        rank = len(g.size)
        factor = arithmetic.as_tuple(layer.size if isinstance(layer.size, int) else tuple(layer.size), rank)
        updates = {"stride": factor, "kernel": factor}
        if isinstance(layer, BedOfNails2D):
            updates["padding"] = "nails at " + ",".join(map(str, layer.position))
            return arithmetic.apply_upsampling(g, factor, position=layer.position), updates
        interpolation = getattr(layer, "interpolation", "nearest")
        if interpolation == "nearest":
            return arithmetic.apply_upsampling(g, factor), updates
        if interpolation != "bilinear":
            raise ValueError(f"describe: layer '{layer.name}' ({type(layer).__name__}) upsamples with "
                             f"interpolation={interpolation!r} and has no receptive-field formula for it. "
                             f"Expected 'nearest' or 'bilinear'.")
        sizes = tuple(None if s is None else s * f for s, f in zip(g.size, factor))
        updates["padding"] = "bilinear"
        return arithmetic.apply_resize(g, sizes, "bilinear", layer=layer.name), updates

    def _unpooling(self, call: LayerCall, geometries):
        layer = call.layer
        pool = self.maker.get(id(call.inputs[1]), (None, None))[1] if len(call.inputs) > 1 else None
        if not isinstance(pool, MaxPoolingWithArgmax2D):
            raise ValueError(f"describe: layer '{layer.name}' (MaxUnpooling2D) reads an argmax that no "
                             f"MaxPoolingWithArgmax2D made here, so its pooling window is unknown. Expected "
                             f"[values, argmax, like] with argmax from MaxPoolingWithArgmax2D.")
        values = geometries[0]
        out_size = geometries[2].size if len(geometries) > 2 else tuple(layer.output_size)
        pads = tuple(arithmetic.axis_pads(pool.padding, size, pool.pool_size[a], pool.strides[a], 1, a, 2)
                     for a, size in enumerate(out_size))
        out = arithmetic.apply_unpooling(values, out_size, pool.pool_size, pool.strides, pads)
        return out, {"padding": "unpool", "stride": tuple(pool.strides),
                     "kernel": tuple(pool.pool_size)}

    @staticmethod
    def _resizing(layer, g: Geometry):
        if layer.crop_to_aspect_ratio or layer.pad_to_aspect_ratio:
            raise ValueError(f"describe: layer '{layer.name}' (Resizing) crops or pads to the aspect ratio and has "
                             f"no formula here. Expected crop_to_aspect_ratio=False and pad_to_aspect_ratio=False.")
        out_size = (layer.height, layer.width)
        shrinks = any(o < i for o, i in zip(out_size, g.size) if i is not None)
        if layer.antialias and shrinks:
            raise ValueError(f"describe: layer '{layer.name}' (Resizing) shrinks {g.size} -> {out_size} with "
                             f"antialias=True and has no formula for the widened kernel. Expected antialias=False.")
        try:
            out = arithmetic.apply_resize(g, out_size, layer.interpolation, layer=layer.name)
        except arithmetic.ConvArithmeticError as err:
            raise ValueError(f"describe: layer '{layer.name}' (Resizing): {err}") from None
        return out, {"padding": layer.interpolation}

    @staticmethod
    def _merges_channels(layer, call: LayerCall) -> bool:
        if not isinstance(layer, L.Concatenate):
            return True
        rank = len(call.inputs[0].shape)
        return layer.axis in (-1, rank - 1)

    def _merge(self, call: LayerCall, geometries):
        rank = len(geometries[0].size)
        disagree = any(len({g.size[a] for g in geometries} - {1}) > 1 for a in range(rank)) if all(
            len(g.size) == rank for g in geometries) else True
        if disagree:
            parts = ", ".join(f"{self.maker[id(t)][0]} {g.size}" for t, g in zip(call.inputs, geometries))
            raise ValueError(f"describe: layer '{call.layer.name}' ({type(call.layer).__name__}) joins feature maps "
                             f"of different spatial sizes: {parts}. Expected one size for every branch "
                             f"(or 1 on an axis, broadcast).")
        if len({self.origin[id(t)] for t in call.inputs}) > 1:
            return max(geometries, key=_widest), {
                "note": "joins branches that read different inputs: the receptive field of the widest branch"}
        out, exact = arithmetic.merge(geometries)
        updates = {} if exact else {"note": "joins branches that step differently (jumps " + ", ".join(
            _size(g.jump) for g in geometries) + "): the receptive field of the widest branch"}
        return out, updates


def _widest(geometry: Geometry) -> int:
    return -1 if geometry.receptive_field is None else sum(geometry.receptive_field)


def _spatial(shape) -> tuple:
    return tuple(shape[1:-1])


def _qualified(row: dict) -> str:
    return f"{row['path']}/{row['name']}" if row["path"] else row["name"]


# ------------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------------
def format_table(rows: list[dict]) -> str:
    """A plain-text table of `describe_*` rows, with the total parameter count, flooring notes and
    the notes of rows where the walk stops following feature maps."""
    columns = ("layer", "kind", "input", "output", "ch", "padding", "stride", "kernel", "rf", "jump", "params")
    lines = [[_qualified(r), r["kind"], _size(r["input_size"]), _size(r["output_size"]),
              "-" if r["channels"] is None else str(r["channels"]), _padding(r), _size(r["stride"]), _kernel(r),
              _size(r["receptive_field"]), _size(r["jump"]),
              "shared" if r["call"] > 1 else f"{r['parameters']:,}"] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(columns)]

    def fmt(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    out = [fmt(columns), fmt(["-" * w for w in widths]), *(fmt(line) for line in lines)]
    out.append(f"total parameters: {sum(r['parameters'] for r in rows):,}")
    for r in rows:
        if r["remainder"] and any(r["remainder"]):
            dropped = ", ".join(f"{n} px on axis {a}" for a, n in enumerate(r["remainder"]) if n)
            out.append(f"note: {_qualified(r)} floors its output size and ignores the last {dropped}")
    for r in rows:
        if r["note"]:
            out.append(f"note: {_qualified(r)} {r['note']}")
    return "\n".join(out)


def _size(values) -> str:
    if values is None:
        return "-"
    return "x".join("?" if v is None else str(v) for v in values) if values else "-"


def _kernel(row) -> str:
    if row["kernel"] is None:
        return "-"
    text = _size(row["kernel"])
    return text + (f" d{_size(row['dilation'])}" if row["dilation"] and any(d > 1 for d in row["dilation"]) else "")


def _padding(row) -> str:
    if row["padding"] is None:
        return "-"
    if row["pads"] is None or row["padding"] == "valid":
        return row["padding"]
    pads = ",".join("?" if p is None else f"{p[0]}+{p[1]}" for p in row["pads"])
    return f"{row['padding']} {pads}"


__all__ = ["LayerCall", "Trace", "describe_keras_model", "describe_model", "format_table", "output_geometries",
           "trace_calls"]
