"""Argument checks shared by our pooling and upsampling layers, worded like Keras's own errors."""
from __future__ import annotations


def positive_pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints, each >= 1 -> (rows, cols)."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        pair = tuple(pair)
    except TypeError:
        pair = None
    if (pair is None or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair)):
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a strictly positive int or a pair of them. "
            f"Received {name}={value!r}")
    return pair
