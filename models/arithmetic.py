"""Convolution arithmetic: output sizes, padding, receptive field and jump, one spatial axis at a time.

    O = (I - F_eff + P_start + P_end) / S + 1,   F_eff = D * (F - 1) + 1
    r_out = r_in + (F_eff - 1) * j_in,           j_out = j_in * S

Keras floors O silently when S does not divide (I - F_eff + P); the rows or columns it drops are
lost to every later layer. The builders check explicit padding in `strict` mode so such a
configuration fails with the layer and the numbers instead. Everything works per axis, so the same
code serves 1D, 2D (height, width) and 3D (time, height, width) layers. `padding="same"` follows
the TensorFlow/Keras convention: O = ceil(I / S), total padding split with the extra pixel at the
end. A size of None (unknown until run time) passes through as None.

Upsampling turns the recurrence around: a transposed convolution gives O = (I - 1) * S + F_eff -
P_start - P_end and j_out = j_in / S, nearest-neighbour, bed-of-nails and max unpooling by s give
O = I * s and j_out = j_in / s. After upsampling, neighbouring cells may read the same input cells
(nearest) or none at all (bed of nails), so r_out = r_in + (F_eff - 1) * j_in no longer holds for
the layers that follow: a 2 x 2 conv after a x2 nearest upsampling sees one input cell at some
positions and two at others. `Reads` therefore keeps, per axis, exactly which input pixels each
cell reads, as a pattern that repeats every `period` cells shifted by `shift` pixels; the receptive
field is the widest span it holds and the jump is shift / period. For a plain conv/pool stack the
period stays 1 and this is the textbook recurrence above. Positions count from the first input
pixel as if the axis were unbounded: padding shifts them but never clips them, as in the textbook.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from math import gcd
from typing import Iterable, Optional, Sequence, Union

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
        if mode == "causal":
            return effective_kernel(kernel, dilation) - 1, 0
        raise ConvArithmeticError(f"Invalid padding {padding!r}. Expected 'valid', 'same', 'causal', an int or "
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
class Reads:
    """Which input pixels each cell of one axis reads: cell c + m * period reads pixels
    [lo + m * shift, hi + m * shift] for (lo, hi) = spans[c]; a span of None reads nothing (a zero
    that bed-of-nails upsampling put there)."""
    period: int
    shift: int
    spans: tuple[Optional[tuple[int, int]], ...]

    @classmethod
    def of_input(cls) -> "Reads":
        return cls(1, 1, ((0, 0),))

    def at(self, index: int) -> Optional[tuple[int, int]]:
        """The input pixels cell `index` reads (any integer index: the axis is taken as unbounded)."""
        m, c = divmod(index, self.period)
        span = self.spans[c]
        return None if span is None else (span[0] + m * self.shift, span[1] + m * self.shift)

    def over(self, indices: Iterable[int]) -> Optional[tuple[int, int]]:
        """The span of input pixels that the cells `indices` read together."""
        return _union(self.at(i) for i in indices)

    @property
    def receptive_field(self) -> int:
        return max(hi - lo + 1 for lo, hi in filter(None, self.spans))

    @property
    def jump(self) -> Union[int, Fraction]:
        """Input pixels per cell: shift / period (a fraction after upsampling past the input resolution)."""
        step = Fraction(self.shift, self.period)
        return int(step) if step.denominator == 1 else step


def _union(spans: Iterable[Optional[tuple[int, int]]]) -> Optional[tuple[int, int]]:
    spans = [s for s in spans if s is not None]
    return (min(s[0] for s in spans), max(s[1] for s in spans)) if spans else None


def _reads(period: int, shift: int, spans) -> Reads:
    """A Reads with the shortest period that describes the same cells."""
    spans = tuple(spans)
    for short in range(1, period):
        if period % short or (shift * short) % period:
            continue
        step = shift * short // period
        if all(spans[c + short] == (None if spans[c] is None else (spans[c][0] + step, spans[c][1] + step))
               for c in range(period - short)):
            return Reads(short, step, spans[:short])
    return Reads(period, shift, spans)


def window_reads(reads: Reads, kernel: int, stride: int = 1, dilation: int = 1, pad_start: int = 0) -> Reads:
    """A conv or pooling window: output cell o reads cells o * S - P_start + k * D, k = 0 .. F - 1."""
    period = reads.period // gcd(reads.period, stride)
    shift = reads.shift * period * stride // reads.period
    return _reads(period, shift, (reads.over(c * stride - pad_start + k * dilation for k in range(kernel))
                                  for c in range(period)))


def transposed_reads(reads: Reads, kernel: int, stride: int = 1, dilation: int = 1, pad_start: int = 0) -> Reads:
    """A transposed window: input cell i adds into output cells i * S + k * D - P_start, so output cell
    o reads the cells i = (o + P_start - k * D) / S that are whole. Nearest upsampling by s is F = S = s;
    bed of nails at offset t is F = 1, S = s, P_start = -t; max unpooling is its pooling's F, S, P_start."""
    period = reads.period * stride

    def cells(o):
        return ((o + pad_start - k * dilation) // stride for k in range(kernel)
                if (o + pad_start - k * dilation) % stride == 0)
    return _reads(period, reads.shift, (reads.over(cells(c)) for c in range(period)))


def resampled_reads(reads: Reads, size: int, out_size: int, interpolation: str) -> Reads:
    """Resizing I -> O with half-pixel centres (tf.image.resize, keras.ops.image.resize): output cell o
    samples x = (o + 1/2) * I / O - 1/2; 'nearest' reads cell floor(x + 1/2), 'bilinear' cells
    floor(x) and ceil(x)."""
    if interpolation not in ("nearest", "bilinear"):
        raise ConvArithmeticError(f"Invalid interpolation {interpolation!r}. Expected 'nearest' or 'bilinear' "
                                  f"(no receptive-field formula for the others).")
    common = gcd(size, out_size)
    block_in, block_out = size // common, out_size // common    # block_out output cells per block_in cells
    repeats = reads.period // gcd(reads.period, block_in)
    period, shift = repeats * block_out, reads.shift * repeats * block_in // reads.period

    def cells(o):
        x = (Fraction(2 * o + 1, 2) * size) / out_size - Fraction(1, 2)
        if interpolation == "nearest":
            return [int((x + Fraction(1, 2)) // 1)]
        low = int(x // 1)
        return [low] if x == low else [low, low + 1]
    return _reads(period, shift, (reads.over(cells(c)) for c in range(period)))


@dataclass(frozen=True)
class Geometry:
    """Where a feature map stands: its size per spatial axis and, per axis, which input pixels its
    cells read (`reads`; None when unknown: a map made outside the layers followed). The receptive
    field and jump (input pixels per step) follow from `reads`."""
    size: tuple[Optional[int], ...]
    reads: Optional[tuple[Reads, ...]] = None

    @classmethod
    def of_input(cls, spatial: Sequence[Optional[int]]) -> "Geometry":
        return cls(tuple(spatial), (Reads.of_input(),) * len(spatial))

    @property
    def receptive_field(self) -> Optional[tuple[int, ...]]:
        return None if self.reads is None else tuple(r.receptive_field for r in self.reads)

    @property
    def jump(self) -> Optional[tuple[Union[int, Fraction], ...]]:
        return None if self.reads is None else tuple(r.jump for r in self.reads)

    def with_reads(self, size, make) -> "Geometry":
        """A Geometry of `size` whose reads are make(axis, reads) per axis (None stays None)."""
        reads = None if self.reads is None else tuple(make(axis, r) for axis, r in enumerate(self.reads))
        return Geometry(tuple(size), reads)


@dataclass(frozen=True)
class WindowResult:
    """What one windowed layer (conv, pool, transposed conv) does to a Geometry."""
    geometry: Geometry
    pads: tuple[Optional[tuple[int, int]], ...]
    remainder: tuple[Optional[int], ...]


def apply_window(geometry: Geometry, kernel, stride=1, padding: Padding = "valid", dilation=1, *,
                 strict: bool = False, layer: str = "layer") -> WindowResult:
    """Applies a conv/pool window (ints or one value per axis) to every spatial axis of `geometry`."""
    rank = len(geometry.size)
    kernel, stride, dilation = (as_tuple(v, rank, name) for v, name in
                                ((kernel, "kernel"), (stride, "stride"), (dilation, "dilation")))
    sizes, pads, rests = [], [], []
    for axis in range(rank):
        size = geometry.size[axis]
        sizes.append(output_size(size, kernel[axis], stride[axis], padding, dilation[axis],
                                 strict=strict, layer=layer, axis=axis, rank=rank))
        pads.append(axis_pads(padding, size, kernel[axis], stride[axis], dilation[axis], axis, rank))
        rests.append(remainder(size, kernel[axis], stride[axis], padding, dilation[axis], axis, rank))
    out = geometry.with_reads(sizes, lambda a, r: window_reads(r, kernel[a], stride[a], dilation[a],
                                                                (pads[a] or (0, 0))[0]))
    return WindowResult(out, tuple(pads), tuple(rests))


def transposed_output_size(size: Optional[int], kernel: int, stride: int = 1, padding: str = "valid",
                           dilation: int = 1, output_padding: Optional[int] = None) -> Optional[int]:
    """Keras's Conv*Transpose length: without output_padding, 'valid' gives I * S + max(F_eff - S, 0) and
    'same' I * S; with it, (I - 1) * S + F_eff - 2 * pad + output_padding (pad 0 'valid', F_eff // 2 'same')."""
    if size is None:
        return None
    span = effective_kernel(kernel, dilation)
    mode = padding.lower()
    if mode not in ("valid", "same"):
        raise ConvArithmeticError(f"Invalid padding {padding!r} for a transposed convolution. "
                                  f"Expected 'valid' or 'same'.")
    if output_padding is None:
        return size * stride + max(span - stride, 0) if mode == "valid" else size * stride
    return (size - 1) * stride + span - 2 * (span // 2 if mode == "same" else 0) + output_padding


def transposed_pads(size: int, out_size: int, kernel: int, stride: int = 1, padding: str = "valid",
                    dilation: int = 1) -> tuple[int, int]:
    """(P_start, P_end) that O = (I - 1) * S + F_eff - P_start - P_end crops (negative: zeros added), as
    TensorFlow places them: 'valid' crops nothing at the start; 'same' crops half of
    (I - 1) * S + F_eff - O at the start, the odd pixel at the end."""
    total = (size - 1) * stride + effective_kernel(kernel, dilation) - out_size
    start = 0 if padding.lower() == "valid" else max(total, 0) // 2
    return start, total - start


def apply_transposed(geometry: Geometry, kernel, stride=1, padding: str = "valid", dilation=1,
                     output_padding=None) -> WindowResult:
    """A transposed convolution on every spatial axis: O = (I - 1) * S + F_eff - P_start - P_end, j / S."""
    rank = len(geometry.size)
    kernel, stride, dilation = (as_tuple(v, rank, name) for v, name in
                                ((kernel, "kernel"), (stride, "stride"), (dilation, "dilation")))
    extra = (None,) * rank if output_padding is None else as_tuple(output_padding, rank, "output_padding")
    sizes, pads = [], []
    for axis, size in enumerate(geometry.size):
        out = transposed_output_size(size, kernel[axis], stride[axis], padding, dilation[axis], extra[axis])
        sizes.append(out)
        pads.append(None if size is None else transposed_pads(size, out, kernel[axis], stride[axis], padding,
                                                              dilation[axis]))
    result = geometry.with_reads(sizes, lambda a, r: transposed_reads(r, kernel[a], stride[a], dilation[a],
                                                                      (pads[a] or (0, 0))[0]))
    return WindowResult(result, tuple(pads), (None,) * rank)


def apply_upsampling(geometry: Geometry, factor, position=None) -> Geometry:
    """Nearest-neighbour (each value copied into its s-block) or, with `position`, bed of nails (each
    value at one place of its block, zeros elsewhere): O = I * s, j / s, the receptive field unchanged."""
    rank = len(geometry.size)
    factor = as_tuple(factor, rank, "size")
    sizes = [None if s is None else s * f for s, f in zip(geometry.size, factor)]
    if position is None:
        return geometry.with_reads(sizes, lambda a, r: transposed_reads(r, factor[a], factor[a]))
    position = as_tuple(position, rank, "position")
    return geometry.with_reads(sizes, lambda a, r: transposed_reads(r, 1, factor[a], 1, -position[a]))


def apply_unpooling(geometry: Geometry, out_size: Sequence[Optional[int]], pool, stride,
                    pads: Sequence[Optional[tuple[int, int]]]) -> Geometry:
    """Max unpooling back to `out_size` (the size its pooling received): each value may land anywhere
    in its pooling window, so output cell o reads every window that covers it (the pooling's F, S and
    P_start, transposed). With windows that tile (F = S = s): j / s, the receptive field unchanged."""
    rank = len(geometry.size)
    pool, stride = as_tuple(pool, rank, "pool_size"), as_tuple(stride, rank, "strides")
    return geometry.with_reads(out_size, lambda a, r: transposed_reads(r, pool[a], stride[a], 1,
                                                                       (pads[a] or (0, 0))[0]))


def apply_resize(geometry: Geometry, out_size: Sequence[int], interpolation: str, *,
                 layer: str = "layer") -> Geometry:
    """Resizing to `out_size` (half-pixel centres): j * I / O; 'nearest' keeps the receptive field,
    'bilinear' reads two neighbouring cells where a sample falls between them."""
    if any(s is None for s in geometry.size):
        raise ConvArithmeticError(f"{layer}: resizing needs the input size; received {geometry.size}")
    return geometry.with_reads(out_size, lambda a, r: resampled_reads(r, geometry.size[a], out_size[a],
                                                                       interpolation))


def apply_padding(geometry: Geometry, pads: Sequence[Sequence[int]]) -> Geometry:
    """Zero padding (or, with negative amounts, cropping) adds to the size and shifts which cell reads what."""
    size = tuple(None if s is None else s + int(p[0]) + int(p[1]) for s, p in zip(geometry.size, pads))
    return geometry.with_reads(size, lambda a, r: _reads(r.period, r.shift,
                                                         (r.at(c - int(pads[a][0])) for c in range(r.period))))


def apply_global(geometry: Geometry) -> Geometry:
    """Global pooling (or flattening) sees the whole map: r = r_in + (I - 1) * j_in for a plain stack, the
    span every cell reads together in general; no spatial axes remain (the jump is kept for the table)."""
    def whole(axis, reads):
        size = geometry.size[axis]
        span = reads.over(range(size)) if size is not None else _union(reads.spans)
        return Reads(reads.period, reads.shift, (span,) * reads.period)
    return geometry.with_reads((), whole)


def merge(geometries: Sequence[Geometry]) -> tuple[Geometry, bool]:
    """Branches added, multiplied or concatenated: each cell reads what it reads in any branch. A
    branch of size 1 on an axis is broadcast (every cell reads its one cell: a squeeze-and-excitation
    scale). Returns (geometry, exact); when the other branches step differently (different jumps)
    the union is not periodic, and the branch with the widest receptive field stands in (exact False)."""
    rank = len(geometries[0].size)
    size = tuple(max((g.size[a] for g in geometries), key=lambda s: -1 if s is None else s) for a in range(rank))
    if any(g.reads is None for g in geometries):
        return Geometry(size, None), True
    widest = max(geometries, key=lambda g: sum(g.receptive_field))
    if len({len(g.reads) for g in geometries}) > 1:     # vectors of maps of different ranks
        return widest, False

    def broadcast(axis, g):
        reads = g.reads[axis]
        return Reads(1, 0, (reads.at(0),)) if axis < rank and g.size[axis] == 1 and size[axis] != 1 else reads

    per_axis = [[broadcast(a, g) for g in geometries] for a in range(len(geometries[0].reads))]
    if any(len({r.jump for r in reads if r.shift}) > 1 for reads in per_axis):
        return widest, False

    def union(axis, _):
        all_reads = per_axis[axis]
        period = 1
        for r in all_reads:
            period = period * r.period // gcd(period, r.period)
        stepping = [r for r in all_reads if r.shift] or all_reads
        shift = stepping[0].shift * period // stepping[0].period
        return _reads(period, shift, (_union(r.at(c) for r in all_reads) for c in range(period)))
    return geometries[0].with_reads(size, union), True


def spread(geometry: Geometry, size: Sequence[Optional[int]]) -> Geometry:
    """A vector (after global pooling or flattening) made into a map of `size` (a reshape, or global
    pooling with keepdims): every cell reads everything the vector reads, so the jump is 0."""
    if geometry.reads is None or len(geometry.reads) != len(size):
        return Geometry(tuple(size), None)
    return Geometry(tuple(size), tuple(Reads(1, 0, (_union(r.spans),)) for r in geometry.reads))


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


__all__ = ["ConvArithmeticError", "Geometry", "Reads", "WindowResult", "apply_global", "apply_padding",
           "apply_resize", "apply_transposed", "apply_unpooling", "apply_upsampling", "apply_window", "as_tuple",
           "axis_pads", "effective_kernel", "merge", "output_size", "receptive_field", "remainder",
           "resampled_reads", "same_padding", "spread", "transposed_output_size", "transposed_pads",
           "transposed_reads", "window_reads"]
