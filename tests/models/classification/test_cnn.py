"""The CNN builder: shapes, names, parameter counts by hand, float32 logits, and errors that name the block."""
import numpy as np
import pytest
import keras

from models import build_model
from models.arithmetic import ConvArithmeticError


def test_default_network_outputs_float32_logits_with_readable_names():
    model = build_model("cnn", (32, 32, 3), 3)
    assert model.output.shape == (None, 3)
    names = [layer.name for layer in model.layers]
    assert names[:6] == ["image", "block1_conv", "block1_bn", "block1_relu", "block1_pool", "block2_conv"]
    assert names[-2:] == ["global_avg_pool", "logits"]
    assert model.get_layer("block2_pool").output.shape == (None, 7, 7, 32)   # overlapping 3/2 on 16 -> 7
    assert model(np.zeros((2, 32, 32, 3), "float32")).dtype == "float32"
    assert model.get_layer("block1_bn").momentum == 0.9     # moving statistics that settle in short runs


def test_parameter_count_by_hand():
    model = build_model("cnn", (8, 8, 3), 5, blocks=[
        {"filters": 4, "kernel_size": 3, "batch_norm": True, "pool": "sum", "pool_size": 2},
        {"filters": 6, "kernel_size": [1, 3], "padding": "valid"}],
        dense_units=[7], dropout=0.5)
    conv1 = 3 * 3 * 3 * 4            # no bias with batch norm
    bn1 = 4 * 4                      # gamma, beta, moving mean, moving variance
    conv2 = 1 * 3 * 4 * 6 + 6
    dense = 6 * 7 + 7
    logits = 7 * 5 + 5
    assert model.count_params() == conv1 + bn1 + conv2 + dense + logits
    assert model.get_layer("block2_conv").output.shape == (None, 4, 2, 6)
    assert {"head_dropout1", "head_dense1", "logits_dropout"} <= {layer.name for layer in model.layers}


def test_explicit_asymmetric_padding_and_conv1x1_head():
    model = build_model("cnn", (9, 10, 1), 4, blocks=[
        {"filters": 8, "kernel_size": 3, "strides": 2, "padding": [[1, 1], [0, 1]], "pool": "avg",
         "pool_size": 2, "pool_stride": 1}], head="conv1x1", global_pool="max", dense_units=[5])
    assert model.get_layer("block1_pad").output.shape == (None, 11, 11, 1)
    assert model.get_layer("block1_conv").output.shape == (None, 5, 5, 8)   # (9-3+2)/2+1, (10-3+1)/2+1
    assert model.get_layer("block1_pool").output.shape == (None, 4, 4, 8)
    assert model.get_layer("head_classifier").output.shape == (None, 4, 4, 4)
    assert model.output.shape == (None, 4) and model.get_layer("logits").dtype_policy.compute_dtype == "float32"


def test_explicit_padding_that_does_not_divide_names_the_block_and_numbers():
    with pytest.raises(ConvArithmeticError) as err:
        build_model("cnn", (16, 16, 3), 2, blocks=[
            {"filters": 4, "padding": "same"},
            {"filters": 4, "kernel_size": 3, "strides": 2, "padding": [[1, 1], [1, 0]]}])
    message = str(err.value)
    assert "blocks[1]" in message and "block2_conv" in message and "(16 - 3 + 1 + 1) = 15" in message


def test_dilation_and_flatten():
    model = build_model("cnn", (12, 12, 1), 2, blocks=[
        {"filters": 2, "kernel_size": 3, "dilation_rate": 2, "padding": "valid", "pool": "max", "pool_size": 2}],
        global_pool="flatten")
    assert model.get_layer("block1_conv").output.shape == (None, 8, 8, 2)
    assert model.get_layer("flatten").output.shape == (None, 4 * 4 * 2)


@pytest.mark.parametrize("params, fragment", [
    ({"blocks": [{"filters": 0}]}, "blocks[0].filters=0"),
    ({"blocks": [{"filters": 4, "kernal_size": 3}]}, "unknown key(s) ['kernal_size']"),
    ({"blocks": [{"filters": 4}, {"filters": 4, "pool": "median"}]}, "blocks[1].pool='median'"),
    ({"blocks": [{"filters": 4, "padding": [[1, 1]]}]}, "blocks[0].padding=[[1, 1]]"),
    ({"blocks": [{"filters": 4, "kernel_size": [3, 3, 3]}]}, "blocks[0].kernel_size=[3, 3, 3]"),
    ({"blocks": [{"filters": 4, "strides": 2, "dilation_rate": 2}]}, "dilation_rate=[2, 2]"),
    ({"blocks": [{"filters": 4, "activation": "nope"}]}, "blocks[0].activation='nope'"),
    ({"head": "mlp"}, "head='mlp'"),
    ({"dropout": 1.0}, "dropout=1.0"),
    ({"bn_momentum": 1}, "bn_momentum=1"),
    ({"widht": 3}, "unknown parameter(s) ['widht']"),
    ({"head": "conv1x1", "global_pool": "flatten"}, "flatten needs 1x1"),
])
def test_invalid_params_are_named(params, fragment):
    with pytest.raises(ValueError) as err:
        build_model("cnn", (16, 16, 3), 3, **params)
    assert fragment in str(err.value)


def test_a_too_small_input_fails_at_the_block_that_cannot_fit():
    with pytest.raises(ConvArithmeticError, match=r"blocks\[3\].*block4_pool.*does not fit"):
        build_model("cnn", (8, 8, 1), 2, blocks=[{"filters": 2, "pool": "max"}] * 4)


def test_mixed_precision_keeps_float32_logits():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        for head in ("dense", "conv1x1"):
            model = build_model("cnn", (8, 8, 3), 3, blocks=[{"filters": 4, "pool": "max"}], head=head)
            assert model.get_layer("block1_conv").compute_dtype == "float16"
            assert model(np.zeros((1, 8, 8, 3), "float32")).dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_saves_and_loads_safely(tmp_path):
    model = build_model("cnn", (8, 8, 3), 3, blocks=[{"filters": 4, "pool": "sum", "batch_norm": True}],
                        dense_units=[4])
    model.save(tmp_path / "cnn.keras")
    loaded = keras.models.load_model(tmp_path / "cnn.keras", safe_mode=True)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-5)


def test_batch_norm_is_fused_and_trains_as_keras_batch_normalization_does():
    from models.layers import FusedBatchNormalization

    model = build_model("cnn", (12, 12, 3), 3)
    assert [type(model.get_layer(f"block{n}_bn")) for n in (1, 2, 3)] == [FusedBatchNormalization] * 3

    def as_keras(layer):
        config = layer.get_config()
        return keras.layers.BatchNormalization.from_config(config) if isinstance(layer, FusedBatchNormalization) \
            else layer.__class__.from_config(config)
    reference = keras.models.clone_model(model, clone_function=as_keras)
    reference.set_weights(model.get_weights())
    assert type(reference.get_layer("block1_bn")) is keras.layers.BatchNormalization
    x = np.random.default_rng(0).random((4, 12, 12, 3), dtype=np.float32)
    for _ in range(3):
        np.testing.assert_allclose(model(x, training=True), reference(x, training=True), rtol=1e-4, atol=1e-5)
    for n in (1, 2, 3):
        np.testing.assert_allclose(model.get_layer(f"block{n}_bn").moving_variance,
                                   reference.get_layer(f"block{n}_bn").moving_variance, rtol=1e-5)
    np.testing.assert_allclose(model(x), reference(x), rtol=1e-4, atol=1e-5)
