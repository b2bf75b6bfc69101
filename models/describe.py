"""Per-layer sizes, padding, stride, receptive field, jump and parameters, computed by the conv arithmetic.

    rows = describe_model("cnn", (32, 32, 3), 3, {"blocks": [...]})
    print(format_table(rows))

The model is built (so the rows follow the layers the builder really makes), but every size,
receptive field and jump comes from models/arithmetic applied to each layer's configuration, never
from Keras's shapes. The test compares the two for every layer. A non-zero `remainder` is the
number of pixels a floored division drops at the end of an axis, so the table shows what Keras
would silently lose. Channels-last layouts; 1D, 2D and 3D layers.
"""
from __future__ import annotations

from typing import Any, Optional

import keras

from models import arithmetic
from models.arithmetic import Geometry
from models.layers.select_frame import SelectFrame
from models.layers.sum_pooling import SumPooling2D

L = keras.layers
CONVS = (L.Conv1D, L.Conv2D, L.Conv3D, L.DepthwiseConv1D, L.DepthwiseConv2D, L.SeparableConv1D, L.SeparableConv2D)
POOLS = (L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D,
         L.AveragePooling3D, SumPooling2D)
GLOBALS = (L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
           L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D, L.Flatten)
PADDINGS = (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D)
CROPPINGS = (L.Cropping1D, L.Cropping2D, L.Cropping3D)


def describe_model(name: str, input_shape, num_classes: int, params: Optional[dict] = None) -> list[dict]:
    """Builds the registered model `name` and describes it layer by layer (see `describe_keras_model`)."""
    from models import build_model

    return describe_keras_model(build_model(name, input_shape, num_classes, **(params or {})))


def describe_keras_model(model: keras.Model) -> list[dict]:
    """One row per layer: name, kind, input_size, output_size, channels, padding, pads, stride, kernel,
    dilation, receptive_field, jump, remainder, parameters. Sizes are spatial (channels last excluded)."""
    geometries: dict[str, Geometry] = {}
    rows = []
    for layer in model.layers:
        parents = [node.operation.name for node in layer._inbound_nodes[0].parent_nodes]
        if not parents:
            geometry_in = Geometry.of_input(_spatial(layer.output.shape))
        else:   # several inputs (add, concatenate): follow the widest view
            geometry_in = max((geometries[p] for p in parents), key=lambda g: sum(g.receptive_field))
        row = _describe_layer(layer, geometry_in)
        geometries[layer.name] = row.pop("geometry")
        rows.append(row)
    return rows


def _describe_layer(layer, g: Geometry) -> dict[str, Any]:
    rank = len(g.size)
    row = {"name": layer.name, "kind": type(layer).__name__, "input_size": g.size, "padding": None,
           "pads": None, "stride": None, "kernel": None, "dilation": None, "remainder": None}
    if isinstance(layer, CONVS + POOLS):
        is_conv = isinstance(layer, CONVS)
        kernel = layer.kernel_size if is_conv else layer.pool_size
        dilation = layer.dilation_rate if is_conv else 1
        result = arithmetic.apply_window(g, kernel, layer.strides, layer.padding, dilation, layer=layer.name)
        out = result.geometry
        row.update(padding=layer.padding, pads=result.pads, stride=arithmetic.as_tuple(layer.strides, rank),
                   kernel=arithmetic.as_tuple(kernel, rank), dilation=arithmetic.as_tuple(dilation, rank),
                   remainder=result.remainder)
    elif isinstance(layer, PADDINGS + CROPPINGS):
        amounts = layer.padding if isinstance(layer, PADDINGS) else layer.cropping
        pairs = (amounts,) if rank == 1 else amounts
        sign = 1 if isinstance(layer, PADDINGS) else -1
        pads = tuple((sign * int(a), sign * int(b)) for a, b in pairs)
        out = arithmetic.apply_padding(g, pads)
        row.update(padding="explicit" if sign > 0 else "crop", pads=pads)
    elif isinstance(layer, GLOBALS):
        out = arithmetic.apply_global(g)
        if getattr(layer, "keepdims", False):
            out = Geometry((1,) * rank, out.receptive_field, out.jump)
    elif isinstance(layer, SelectFrame):
        # One frame of a clip: the time axis goes; the frame still sees one time step.
        out = Geometry(g.size[1:], g.receptive_field[1:], g.jump[1:])
    elif _spatial(layer.output.shape) == g.size:
        out = g     # batch norm, activation, dropout, dense on a vector, add, ...: no spatial change
    else:
        raise ValueError(f"describe: layer '{layer.name}' ({type(layer).__name__}) changes the spatial size "
                         f"{g.size} -> {_spatial(layer.output.shape)} and has no formula here. Expected one of: "
                         f"convolutions, pooling, zero padding, cropping, global pooling, flatten.")
    row.update(output_size=out.size, channels=layer.output.shape[-1], receptive_field=out.receptive_field,
               jump=out.jump, parameters=layer.count_params(), geometry=out)
    return row


def _spatial(shape) -> tuple:
    return tuple(shape[1:-1])


def format_table(rows: list[dict]) -> str:
    """A plain-text table of `describe_*` rows, with the total parameter count and flooring notes."""
    columns = ("layer", "kind", "input", "output", "ch", "padding", "stride", "kernel", "rf", "jump", "params")
    lines = [[r["name"], r["kind"], _size(r["input_size"]), _size(r["output_size"]), str(r["channels"]),
              _padding(r), _size(r["stride"]), _kernel(r), _size(r["receptive_field"]), _size(r["jump"]),
              f"{r['parameters']:,}"] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(columns)]

    def fmt(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    out = [fmt(columns), fmt(["-" * w for w in widths]), *(fmt(line) for line in lines)]
    out.append(f"total parameters: {sum(r['parameters'] for r in rows):,}")
    for r in rows:
        if r["remainder"] and any(r["remainder"]):
            dropped = ", ".join(f"{n} px on axis {a}" for a, n in enumerate(r["remainder"]) if n)
            out.append(f"note: {r['name']} floors its output size and ignores the last {dropped}")
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
    pads = ",".join("?" if p is None else f"{p[0]}+{p[1]}" for p in row["pads"])
    return row["padding"] if row["padding"] == "valid" else f"{row['padding']} {pads}"
