"""The default CNN rebuilt with one thing changed, to measure what limits its speed on a CPU.

`models.classification.cnn` builds channels-last networks whose batch norm runs TensorFlow's fused kernel
(models/layers/fused_batch_normalization.py); Keras's own BatchNormalization computes separate
moments, subtract, multiply and add ops instead. To see what the batch-norm kind and the input
layout are worth, `replica_cnn` rebuilds `models.classification.cnn.DEFAULT_BLOCKS` layer for layer (same FLOPs,
checked in the benchmark) with a chosen data format and batch-norm kind. The model's fused layer
fuses channels-last inputs only, so NCHW uses `FusedBatchNorm` below, a probe. These are probes
for the benchmark, not models for the pipeline: they are never saved or served.
"""
from __future__ import annotations

import keras

from models.layers.fused_batch_normalization import FusedBatchNormalization


class FusedBatchNorm(keras.layers.Layer):
    """Batch normalisation through `tf.compat.v1.nn.fused_batch_norm` in NCHW (one kernel per
    direction); a probe: its moving variance keeps the kernel's Bessel correction."""

    def __init__(self, momentum: float = 0.9, epsilon: float = 1e-3, data_format: str = "channels_last", **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid value for argument `momentum`. Expected 0 <= momentum < 1. Received momentum={momentum}")
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(f"Invalid value for argument `data_format`. Expected 'channels_last' or 'channels_first'. "
                             f"Received data_format={data_format!r}")
        self.momentum, self.epsilon, self.data_format = float(momentum), float(epsilon), data_format

    def build(self, input_shape):
        channels = input_shape[-1] if self.data_format == "channels_last" else input_shape[1]
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(shape=(channels,), initializer="zeros", trainable=False, name="moving_mean")
        self.moving_variance = self.add_weight(shape=(channels,), initializer="ones", trainable=False,
                                               name="moving_variance")

    def call(self, x, training=False):
        import tensorflow as tf

        fmt = "NHWC" if self.data_format == "channels_last" else "NCHW"
        if training:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma, self.beta, epsilon=self.epsilon, data_format=fmt, is_training=True)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
            return y
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, self.gamma, self.beta, mean=self.moving_mean, variance=self.moving_variance, epsilon=self.epsilon,
            data_format=fmt, is_training=False)
        return y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon,
                "data_format": self.data_format}


def replica_cnn(image_size: int, channels: int, num_classes: int, data_format: str = "channels_last",
                batch_norm: str = "keras") -> keras.Model:
    """models.classification.cnn's default network, layer for layer, in `data_format` with `batch_norm` 'keras' or 'fused'."""
    from models.classification.cnn import DEFAULT_BLOCKS

    if batch_norm not in ("keras", "fused"):
        raise ValueError(f"batch_norm: expected 'keras' or 'fused', got {batch_norm!r}")
    shape = (image_size, image_size, channels) if data_format == "channels_last" else (channels, image_size, image_size)
    axis = -1 if data_format == "channels_last" else 1
    inputs = keras.Input(shape, name="image")
    x = inputs
    for n, block in enumerate(DEFAULT_BLOCKS, start=1):
        x = keras.layers.Conv2D(block["filters"], block["kernel_size"], padding=block["padding"],
                                use_bias=not block["batch_norm"], data_format=data_format, name=f"block{n}_conv")(x)
        if block["batch_norm"]:
            if batch_norm == "fused" and data_format == "channels_last":
                x = FusedBatchNormalization(momentum=0.9, name=f"block{n}_bn")(x)
            elif batch_norm == "fused":
                x = FusedBatchNorm(momentum=0.9, data_format=data_format, name=f"block{n}_bn")(x)
            else:
                x = keras.layers.BatchNormalization(axis=axis, momentum=0.9, name=f"block{n}_bn")(x)
        x = keras.layers.Activation("relu", name=f"block{n}_relu")(x)
        if block["pool"]:
            size = block["pool_size"]
            x = keras.layers.MaxPooling2D(size, strides=block.get("pool_stride", size), data_format=data_format,
                                          name=f"block{n}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(data_format=data_format, name="global_avg_pool")(x)
    outputs = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=f"cnn_{data_format}_{batch_norm}_bn")
