"""Keras's BatchNormalization computed with TensorFlow's fused kernel where it applies.

On the TensorFlow backend Keras 3 normalises with separate moments, subtract, multiply and add
ops, forward and backward; `tf.compat.v1.nn.fused_batch_norm` does each direction in one kernel,
which made the default CNN 1.42x faster to train on a 2-core CPU (README, Performance). This layer
is Keras's layer (same arguments, defaults, weights and checkpoints) with only `call` changed, and
only for 4-D channels-last inputs: any other rank, axis, backend, a mask, renorm, synchronized
statistics, float64 or an epsilon below the kernel's minimum go through Keras's own computation.

Moving statistics are updated exactly as Keras updates them, from the biased batch variance
(divided by n = batch x height x width). The fused kernel returns the unbiased variance (divided
by n - 1; by 1 when n = 1), so the correction is undone before the update.
Mixed precision: float16/bfloat16 inputs go to the kernel as they are, with float32 parameters
and statistics; the kernel computes in float32, which is what Keras does by casting.
"""
from __future__ import annotations

import keras
from keras import ops

_FUSED_INPUT_DTYPES = ("float32", "float16", "bfloat16")
_MIN_EPSILON = 1.001e-5
"""cuDNN's kernel needs epsilon >= 1e-5; below that Keras's computation is used everywhere, for one behaviour."""


def _rank(tensor):
    try:
        return len(tensor.shape)
    except (TypeError, ValueError):    # a TensorFlow tensor of unknown rank
        return None


@keras.saving.register_keras_serializable(package="convpipe")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization`, fused on 4-D channels-last TensorFlow inputs.

    `build`, `compute_output_shape` and `get_config` are Keras's: the weights (gamma, beta,
    moving_mean, moving_variance) and the config are the same, so weights copy across both ways.
    """

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, **kwargs):
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
            raise ValueError(f"Invalid value for argument `momentum`. Expected a float in [0, 1]. "
                             f"Received momentum={momentum!r}")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
            raise ValueError(f"Invalid value for argument `epsilon`. Expected a strictly positive float. "
                             f"Received epsilon={epsilon!r}")
        super().__init__(axis=axis, momentum=momentum, epsilon=epsilon, **kwargs)

    def fuses(self, inputs, mask=None) -> bool:
        """Whether `call` on these inputs uses the fused kernel (else Keras's computation)."""
        return (keras.backend.backend() == "tensorflow" and mask is None and _rank(inputs) == 4
                and self.axis in (-1, 3) and not self.renorm and not self.synchronized
                and self.epsilon >= _MIN_EPSILON
                and keras.backend.standardize_dtype(inputs.dtype) in _FUSED_INPUT_DTYPES
                and keras.backend.standardize_dtype(self.variable_dtype) == "float32")

    def call(self, inputs, training=None, mask=None):
        if not self.fuses(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        gamma = self.gamma.value if self.scale else tf.ones((channels,), "float32")
        beta = self.beta.value if self.center else tf.zeros((channels,), "float32")
        if training and self.trainable:
            outputs, mean, unbiased = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
            count = tf.cast(tf.reduce_prod(tf.shape(inputs, out_type=tf.int64)[:-1]), "float32")
            variance = unbiased * tf.where(count > 1.0, (count - 1.0) / count, 1.0)
            moving_mean = ops.cast(self.moving_mean, "float32")
            moving_variance = ops.cast(self.moving_variance, "float32")
            self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, mean=self.moving_mean.value, variance=self.moving_variance.value,
                epsilon=self.epsilon, data_format="NHWC", is_training=False)
        return ops.cast(outputs, self.compute_dtype)
