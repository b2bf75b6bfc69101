"""Convolution arithmetic: output sizes, padding, receptive field and jump, one spatial axis at a time.

    O = (I - F_eff + P_start + P_end) / S + 1,   F_eff = D * (F - 1) + 1
    r_out = r_in + (F_eff - 1) * j_in,           j_out = j_in * S

Keras floors O silently when S does not divide (I - F_eff + P); the rows or columns it drops are
lost to every later layer. The builders check explicit padding in `strict` mode so such a
configuration fails with the layer and the numbers instead. Everything works per axis, so the same
code serves 1D, 2D (height, width) and 3D (time, height, width) layers. `padding="same"` follows
the TensorFlow/Keras convention: O = ceil(I / S), total padding split with the extra pixel at the
end. A size of None (unknown until run time) passes through as None.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

Padding = Union[str, int, Sequence[Sequence[int]]]
AXIS_NAMES = {1: ("width",), 2: ("height", "width"), 3: ("time", "height", "width")}


class ConvArithmeticError(ValueError):
    """A layer whose sizes do not fit: the message names the layer, the axis and the numbers."""


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    """The span a dilated kernel covers: D * (F - 1) + 1."""
    return dilation * (kernel - 1) + 1


def same_padding(size: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """TF/Keras 'same': pad so that O = ceil(I / S); the odd pixel goes at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + effective_kernel(kernel, dilation) - size, 0)
    return total // 2, total - total // 2


def axis_pads(padding: Padding, size: Optional[int], kernel: int, stride: int, dilation: int,
              axis: int, rank: int) -> Optional[tuple[int, int]]:
    """(start, end) padding of one axis for 'valid', 'same', an int, or explicit pairs per axis."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return 0, 0
        if mode == "same":
            return None if size is None else same_padding(size, kernel, stride, dilation)
        raise ConvArithmeticError(f"Invalid padding {padding!r}. Expected 'valid', 'same', an int or "
                                  f"one (start, end) pair per spatial axis.")
    if isinstance(padding, int):
        pads = ((padding, padding),) * rank
    else:
        pads = tuple(tuple(p) if not isinstance(p, int) else (p, p) for p in padding)
    if len(pads) != rank or any(len(p) != 2 or min(p) < 0 for p in pads):
        raise ConvArithmeticError(f"Invalid padding {padding!r}. Expected {rank} (start, end) pair(s) of "
                                  f"non-negative ints, one per spatial axis.")
    return int(pads[axis][0]), int(pads[axis][1])


def output_size(size: Optional[int], kernel: int, stride: int = 1, padding: Padding = "valid",
                dilation: int = 1, *, strict: bool = False, layer: str = "layer", axis: int = 0,
                rank: int = 1) -> Optional[int]:
    """O = floor((I - F_eff + P_start + P_end) / S) + 1; `strict` refuses a remainder instead of flooring.

    Raises ConvArithmeticError when the window does not fit at all (O < 1), always.
    """
    if size is None:
        return None
    start, end = axis_pads(padding, size, kernel, stride, dilation, axis, rank)
    span = size - effective_kernel(kernel, dilation) + start + end
    where = _where(layer, axis, rank)
    if span < 0:
        raise ConvArithmeticError(
            f"{where}: the window does not fit: input {size} + padding {start}+{end} = {size + start + end} "
            f"is smaller than the effective kernel {effective_kernel(kernel, dilation)} "
            f"(kernel {kernel}, dilation {dilation}). Use a larger input, a smaller kernel, or more padding.")
    if strict and span % stride:
        raise ConvArithmeticError(
            f"{where}: stride {stride} does not divide (I - F_eff + P_start + P_end) = "
            f"({size} - {effective_kernel(kernel, dilation)} + {start} + {end}) = {span}; remainder {span % stride}. "
            f"Keras would floor the output to {span // stride + 1} and ignore the last {span % stride} "
            f"pixel(s). Change the padding by {stride - span % stride} or the stride.")
    return span // stride + 1


def remainder(size: Optional[int], kernel: int, stride: int, padding: Padding, dilation: int = 1,
              axis: int = 0, rank: int = 1) -> Optional[int]:
    """Pixels that flooring drops at the end of the axis: (I - F_eff + P) mod S (0 when it divides)."""
    if size is None:
        return None
    start, end = axis_pads(padding, size, kernel, stride, dilation, axis, rank)
    return max(size - effective_kernel(kernel, dilation) + start + end, 0) % stride


def receptive_field(r_in: int, j_in: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """(r_out, j_out): r_out = r_in + (F_eff - 1) * j_in, j_out = j_in * S."""
    return r_in + (effective_kernel(kernel, dilation) - 1) * j_in, j_in * stride


@dataclass(frozen=True)
class Geometry:
    """Where a feature map stands, per spatial axis: size, receptive field and jump (input pixels per step)."""
    size: tuple[Optional[int], ...]
    receptive_field: tuple[int, ...]
    jump: tuple[int, ...]

    @classmethod
    def of_input(cls, spatial: Sequence[Optional[int]]) -> "Geometry":
        rank = len(spatial)
        return cls(tuple(spatial), (1,) * rank, (1,) * rank)


@dataclass(frozen=True)
class WindowResult:
    """What one windowed layer (conv or pool) does to a Geometry."""
    geometry: Geometry
    pads: tuple[Optional[tuple[int, int]], ...]
    remainder: tuple[Optional[int], ...]


def apply_window(geometry: Geometry, kernel, stride=1, padding: Padding = "valid", dilation=1, *,
                 strict: bool = False, layer: str = "layer") -> WindowResult:
    """Applies a conv/pool window (ints or one value per axis) to every spatial axis of `geometry`."""
    rank = len(geometry.size)
    kernel, stride, dilation = (as_tuple(v, rank, name) for v, name in
                                ((kernel, "kernel"), (stride, "stride"), (dilation, "dilation")))
    sizes, fields, jumps, pads, rests = [], [], [], [], []
    for axis in range(rank):
        size = geometry.size[axis]
        sizes.append(output_size(size, kernel[axis], stride[axis], padding, dilation[axis],
                                 strict=strict, layer=layer, axis=axis, rank=rank))
        r, j = receptive_field(geometry.receptive_field[axis], geometry.jump[axis], kernel[axis],
                               stride[axis], dilation[axis])
        fields.append(r)
        jumps.append(j)
        pads.append(axis_pads(padding, size, kernel[axis], stride[axis], dilation[axis], axis, rank))
        rests.append(remainder(size, kernel[axis], stride[axis], padding, dilation[axis], axis, rank))
    return WindowResult(Geometry(tuple(sizes), tuple(fields), tuple(jumps)), tuple(pads), tuple(rests))


def apply_padding(geometry: Geometry, pads: Sequence[Sequence[int]]) -> Geometry:
    """Zero padding adds to the size and leaves receptive field and jump alone."""
    size = tuple(None if s is None else s + int(p[0]) + int(p[1]) for s, p in zip(geometry.size, pads))
    return Geometry(size, geometry.receptive_field, geometry.jump)


def apply_global(geometry: Geometry) -> Geometry:
    """Global pooling (or flattening) sees the whole map: r = r_in + (I - 1) * j_in; no spatial axes remain."""
    fields = tuple(r + (s - 1) * j if s is not None else r
                   for s, r, j in zip(geometry.size, geometry.receptive_field, geometry.jump))
    return Geometry((), fields, geometry.jump)


def as_tuple(value, rank: int, name: str = "value") -> tuple[int, ...]:
    """An int or a sequence of `rank` ints -> a tuple of `rank` ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * rank
    values = tuple(value)
    if len(values) != rank or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConvArithmeticError(f"Invalid {name} {value!r}. Expected an int or {rank} ints, one per spatial axis.")
    return values


def _where(layer: str, axis: int, rank: int) -> str:
    names = AXIS_NAMES.get(rank, tuple(f"axis {i}" for i in range(rank)))
    return f"{layer} (axis {axis}, {names[axis]})"


__all__ = ["ConvArithmeticError", "Geometry", "WindowResult", "apply_global", "apply_padding", "apply_window",
           "as_tuple", "axis_pads", "effective_kernel", "output_size", "receptive_field", "remainder",
           "same_padding"]
