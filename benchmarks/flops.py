"""Floating-point operations of a Keras model, counted from its layer shapes.

The usual convention: a multiply-add is two FLOPs, and only convolutions and dense layers are
counted (batch norm, activations and pooling add a few operations per activation, well under
the convolutions' hundreds). Per example, forward:

    convolution (1D/2D/3D)  2 * (output elements) * (kernel elements per output: k_1 * ... * k_n * C_in / groups)
    depthwise convolution   2 * (output elements) * (k_1 * ... * k_n)
    transposed convolution  2 * (input elements) * (k_1 * ... * k_n * filters)
    dense                   2 * (output elements) * (input units)

A training step costs about three forward passes (forward, gradient with respect to the
activations, gradient with respect to the weights), so training FLOPs = 3 * forward.
"""
from __future__ import annotations

import math


def _elements(shape) -> int:
    """Elements per example of a shape whose first axis is the batch."""
    return math.prod(int(d) for d in shape[1:])


def _calls(layer):
    """(input shape, output shape) of every call of `layer` in a functional graph (a shared layer,
    such as a detection head applied to every pyramid level, is called more than once)."""
    nodes = [n for n in getattr(layer, "_inbound_nodes", []) if n.input_tensors and n.output_tensors]
    return [(n.input_tensors[0].shape, n.output_tensors[0].shape) for n in nodes]


def layer_flops(layer) -> int:
    """Forward FLOPs per example of one layer, over all its calls (0 for layers that are not counted)."""
    import keras

    kernel = getattr(layer, "kernel", None)
    if kernel is None:
        return 0
    k = tuple(int(d) for d in kernel.shape)
    total = 0
    for inputs, outputs in _calls(layer):
        if isinstance(layer, keras.layers.DepthwiseConv1D | keras.layers.DepthwiseConv2D):
            total += 2 * _elements(outputs) * math.prod(k[:-2])
        elif isinstance(layer, keras.layers.Conv1DTranspose | keras.layers.Conv2DTranspose | keras.layers.Conv3DTranspose):
            total += 2 * _elements(inputs) * math.prod(k[:-1])
        elif isinstance(layer, keras.layers.Conv1D | keras.layers.Conv2D | keras.layers.Conv3D):
            total += 2 * _elements(outputs) * math.prod(k[:-1])
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * _elements(outputs) * k[0]
    return total


def forward_flops(model) -> dict[str, int]:
    """Layer name -> forward FLOPs per example, through nested models; only counted layers appear."""
    import keras

    counts: dict[str, int] = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            calls = max(1, len(_calls(layer)))  # a tower shared by several inputs runs once per call
            counts.update({f"{layer.name}/{name}": value * calls for name, value in forward_flops(layer).items()})
            continue
        value = layer_flops(layer)
        if value:
            counts[layer.name] = value
    return counts


def training_flops_per_example(model) -> int:
    return 3 * sum(forward_flops(model).values())
