"""FusedBatchNormalization against keras.layers.BatchNormalization with the same weights: outputs,
gradients and moving statistics agree to float32 rounding, the fused kernel is really used on 4-D
channels-last inputs, other inputs take Keras's path, and the layer saves and loads safely."""
import numpy as np
import pytest
import keras
import tensorflow as tf

from models.layers import FusedBatchNormalization

SHAPE = (4, 5, 6, 3)    # n = 4 * 5 * 6 = 120 values a channel: Bessel's factor 120/119 is 0.8 %


def _data(shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    x = (rng.normal(size=shape) * rng.uniform(0.5, 3.0, channels) + rng.normal(size=channels) * 2).astype("float32")
    weights = [rng.uniform(0.5, 1.5, channels), rng.normal(size=channels), rng.normal(size=channels),
               rng.uniform(0.5, 1.5, channels)]    # gamma, beta, moving_mean, moving_variance
    return x, [w.astype("float32") for w in weights]


def _pair(shape=SHAPE, weights=None, **kwargs):
    keras_bn, fused_bn = keras.layers.BatchNormalization(**kwargs), FusedBatchNormalization(**kwargs)
    keras_bn.build(shape)
    fused_bn.build(shape)
    if weights is not None:
        keras_bn.set_weights(weights)
        fused_bn.set_weights(weights)
    return keras_bn, fused_bn


def _close(actual, expected, rtol=1e-5):
    expected = np.asarray(expected, "float32")
    np.testing.assert_allclose(np.asarray(actual, "float32"), expected, rtol=rtol,
                               atol=rtol * float(np.abs(expected).max()))


def _graph_ops(layer, x, training):
    fn = tf.function(lambda t: layer(t, training=training))
    return {op.type for op in fn.get_concrete_function(tf.TensorSpec(x.shape, x.dtype)).graph.get_operations()}


def test_4d_channels_last_uses_the_fused_kernel_and_other_inputs_do_not():
    layer = FusedBatchNormalization()
    x = tf.zeros(SHAPE)
    assert layer.fuses(x)
    assert "FusedBatchNormV3" in _graph_ops(layer, x, training=True)
    assert "FusedBatchNormV3" in _graph_ops(layer, x, training=False)
    assert not FusedBatchNormalization(axis=1).fuses(x)
    assert not FusedBatchNormalization(renorm=True).fuses(x)
    assert not FusedBatchNormalization(epsilon=1e-6).fuses(x)
    assert not layer.fuses(tf.zeros((4, 3)))
    assert not layer.fuses(tf.zeros((2, 2, 3, 4, 3)))
    assert not layer.fuses(tf.zeros(SHAPE, "float64"))


@pytest.mark.parametrize("momentum", [0.9, 0.99])
def test_training_outputs_and_moving_statistics_match_keras(momentum):
    x, weights = _data()
    keras_bn, fused_bn = _pair(weights=weights, momentum=momentum)
    for step in range(4):
        batch = x * (1.0 + 0.5 * step) + step    # statistics that change from call to call
        _close(fused_bn(batch, training=True), keras_bn(batch, training=True))
    _close(fused_bn.moving_mean, keras_bn.moving_mean)
    _close(fused_bn.moving_variance, keras_bn.moving_variance)
    _close(fused_bn(x, training=False), keras_bn(x, training=False))


def test_one_update_is_hand_computed_with_the_biased_variance():
    x, weights = _data()
    _, fused_bn = _pair(weights=weights, momentum=0.9)
    fused_bn(x, training=True)
    biased = x.reshape(-1, SHAPE[-1]).var(axis=0, ddof=0)
    _close(fused_bn.moving_variance, 0.9 * weights[3] + 0.1 * biased)
    _close(fused_bn.moving_mean, 0.9 * weights[2] + 0.1 * x.reshape(-1, SHAPE[-1]).mean(axis=0))
    unbiased = 0.9 * weights[3] + 0.1 * x.reshape(-1, SHAPE[-1]).var(axis=0, ddof=1)
    assert np.all(np.abs(fused_bn.moving_variance.numpy() / unbiased - 1) > 1e-4)    # the test can tell them apart


def test_inference_uses_the_moving_statistics():
    x, (gamma, beta, mean, variance) = _data()
    keras_bn, fused_bn = _pair(weights=[gamma, beta, mean, variance], epsilon=1e-3)
    expected = gamma * (x - mean) / np.sqrt(variance + 1e-3) + beta
    _close(fused_bn(x, training=False), expected)
    _close(fused_bn(x, training=False), keras_bn(x, training=False))
    np.testing.assert_array_equal(fused_bn.moving_mean, mean)    # inference leaves them alone


@pytest.mark.parametrize("training", [True, False])
def test_gradients_match_keras(training):
    x, weights = _data()
    upstream = tf.constant(np.random.default_rng(3).normal(size=SHAPE).astype("float32"))
    grads = []
    for layer in _pair(weights=weights):
        inputs = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(layer(inputs, training=training) * upstream)
        grads.append(tape.gradient(loss, [inputs, layer.gamma, layer.beta]))
    for fused, reference in zip(grads[1], grads[0]):
        _close(fused, reference)
    assert float(tf.reduce_max(tf.abs(grads[1][0]))) > 0.1


def test_without_center_and_scale():
    x, (_, _, mean, variance) = _data()
    keras_bn, fused_bn = _pair(weights=[mean, variance], center=False, scale=False, momentum=0.8)
    assert fused_bn.gamma is None and fused_bn.beta is None and len(fused_bn.weights) == 2
    _close(fused_bn(x, training=True), keras_bn(x, training=True))
    _close(fused_bn.moving_variance, keras_bn.moving_variance)
    _close(fused_bn(x, training=False), keras_bn(x, training=False))


def test_frozen_layer_runs_in_inference_mode_like_keras():
    x, weights = _data()
    keras_bn, fused_bn = _pair(weights=weights)
    keras_bn.trainable = fused_bn.trainable = False
    _close(fused_bn(x, training=True), keras_bn(x, training=True))
    np.testing.assert_array_equal(fused_bn.moving_variance, weights[3])


@pytest.mark.parametrize("policy, rtol", [("mixed_float16", 2e-3), ("mixed_bfloat16", 1e-2)])
def test_mixed_precision_float32_parameters_half_outputs(policy, rtol):
    x, weights = _data()
    half = tf.cast(x, policy.split("_")[1])
    keras_bn, fused_bn = _pair(weights=weights, dtype=policy)
    assert fused_bn.fuses(half) and fused_bn.moving_mean.dtype == "float32" and fused_bn.gamma.dtype == "float32"
    out, expected = fused_bn(half, training=True), keras_bn(half, training=True)
    assert out.dtype == expected.dtype == half.dtype
    _close(out, expected, rtol=rtol)
    _close(fused_bn.moving_mean, keras_bn.moving_mean)    # statistics in float32 on both sides
    _close(fused_bn.moving_variance, keras_bn.moving_variance)
    _close(fused_bn(half, training=False), keras_bn(half, training=False), rtol=rtol)


@pytest.mark.parametrize("shape, axis", [((16, 3), -1), ((2, 3, 4, 5, 3), -1), ((4, 3, 5, 6), 1)])
def test_fallback_inputs_compute_as_keras(shape, axis):
    x, weights = _data(shape if axis == -1 else (4, 5, 6, 3))
    x = x if axis == -1 else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    keras_bn, fused_bn = _pair(shape, weights=weights, axis=axis, momentum=0.9)
    assert not fused_bn.fuses(tf.constant(x))
    assert "FusedBatchNormV3" not in _graph_ops(fused_bn, tf.constant(x), training=True)
    for _ in range(2):
        np.testing.assert_array_equal(fused_bn(x, training=True), keras_bn(x, training=True))
    np.testing.assert_array_equal(fused_bn.moving_variance, keras_bn.moving_variance)
    assert not np.allclose(fused_bn.moving_variance, weights[3])    # the statistics did move


def test_config_and_weights_are_keras_batch_normalizations():
    keras_bn, fused_bn = _pair(momentum=0.9, epsilon=1e-4, center=False)
    assert fused_bn.get_config() == {**keras_bn.get_config(), "name": fused_bn.name}
    assert [w.path.split("/")[-1] for w in fused_bn.weights] == [w.path.split("/")[-1] for w in keras_bn.weights]
    clone = FusedBatchNormalization.from_config(fused_bn.get_config())
    assert (clone.momentum, clone.epsilon, clone.center, clone.scale) == (0.9, 1e-4, False, True)
    assert clone.compute_output_shape((None, 5, 6, 3)) == (None, 5, 6, 3)


def test_saved_model_loads_with_safe_mode_and_keeps_its_statistics(tmp_path):
    x, weights = _data()
    inputs = keras.Input(SHAPE[1:])
    model = keras.Model(inputs, FusedBatchNormalization(momentum=0.9, name="bn")(inputs))
    model.get_layer("bn").set_weights(weights)
    model(x, training=True)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.get_layer("bn")) is FusedBatchNormalization
    np.testing.assert_array_equal(loaded.get_layer("bn").moving_variance, model.get_layer("bn").moving_variance)
    np.testing.assert_array_equal(loaded(x, training=False), model(x, training=False))


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="momentum=1.5"):
        FusedBatchNormalization(momentum=1.5)
    with pytest.raises(ValueError, match="epsilon=0"):
        FusedBatchNormalization(epsilon=0)
