"""describe-model: the formula's sizes agree with the layers Keras builds, and receptive fields match hand sums."""
import itertools

import keras
import pytest

from models.describe import describe_keras_model, describe_model, format_table


def _keras_spatial(model):
    return {layer.name: tuple(layer.output.shape[1:-1]) for layer in model.layers}


def _assert_rows_match_keras(rows, model):
    shapes = _keras_spatial(model)
    assert [r["name"] for r in rows] == list(shapes)
    for row in rows:
        assert row["output_size"] == shapes[row["name"]], row
        assert row["parameters"] == model.get_layer(row["name"]).count_params()


def _divisible_pads(size, kernel, stride, top):
    """Asymmetric (top, bottom) with bottom chosen so the stride divides evenly (the builder's strict mode)."""
    bottom = (-(size - kernel + top)) % stride
    return [top, bottom]


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_every_layer_matches_keras_for_kernels_1_to_7_and_asymmetric_padding(stride):
    from models import build_model

    size = 23
    for kernel in range(1, 8):
        pads = [_divisible_pads(size, kernel, stride, top=kernel % 3), _divisible_pads(size + 2, kernel, stride, top=1)]
        blocks = [
            {"filters": 2, "kernel_size": kernel, "strides": stride, "padding": pads, "pool": "max",
             "pool_size": 3, "pool_stride": 2, "pool_padding": "same" if kernel % 2 else "valid"},
            {"filters": 2, "kernel_size": [min(kernel, 3), 2], "strides": [stride, 1], "padding": "valid",
             "pool": "sum" if kernel % 2 else "avg", "pool_size": 1, "pool_stride": 1},
            {"filters": 2, "kernel_size": 1, "padding": "same", "batch_norm": True},
        ]
        params = {"blocks": blocks, "dense_units": [3]}
        rows = describe_model("cnn", (size, size + 2, 1), 3, params)
        _assert_rows_match_keras(rows, build_model("cnn", (size, size + 2, 1), 3, **params))


def test_dilation_same_padding_and_conv1x1_head_match_keras():
    from models import build_model

    for kernel, dilation, padding in itertools.product((2, 3, 5), (1, 2, 3), ("same", "valid")):
        params = {"blocks": [{"filters": 2, "kernel_size": kernel, "dilation_rate": dilation, "padding": padding},
                             {"filters": 2, "kernel_size": 3, "strides": 2, "padding": "same", "pool": "avg"}],
                  "head": "conv1x1", "global_pool": "max"}
        rows = describe_model("cnn", (21, 20, 3), 2, params)
        _assert_rows_match_keras(rows, build_model("cnn", (21, 20, 3), 2, **params))


def test_receptive_field_and_jump_by_hand():
    params = {"blocks": [
        {"filters": 4, "kernel_size": 3, "padding": "same", "pool": "max", "pool_size": 2},
        {"filters": 4, "kernel_size": 3, "padding": "same", "pool": "max", "pool_size": 3, "pool_stride": 2},
        {"filters": 4, "kernel_size": 3, "dilation_rate": 2, "padding": "same"}]}
    rows = {r["name"]: r for r in describe_model("cnn", (32, 32, 3), 3, params)}
    # r: 1 -> 3 (conv3, j1) -> 4 (pool2, j1 -> 2) -> 8 (conv3, j2) -> 12 (pool3, j2 -> 4) -> 28 (conv3 d2: F_eff 5, j4)
    assert [rows[n]["receptive_field"] for n in ("block1_conv", "block1_pool", "block2_conv", "block2_pool",
                                                "block3_conv")] == [(3, 3), (4, 4), (8, 8), (12, 12), (28, 28)]
    assert rows["block2_pool"]["jump"] == (4, 4) and rows["block2_pool"]["output_size"] == (7, 7)
    assert rows["block2_pool"]["remainder"] == (1, 1)        # (16 - 3) / 2 leaves one row and column
    assert rows["block3_conv"]["pads"] == ((2, 2), (2, 2))
    assert rows["global_avg_pool"]["receptive_field"] == (28 + 6 * 4,) * 2
    assert rows["block1_conv"]["parameters"] == 3 * 3 * 3 * 4 + 4


def test_format_table_lists_layers_padding_and_flooring():
    params = {"blocks": [{"filters": 2, "kernel_size": 4, "padding": [[1, 2], [0, 1]], "pool": "max",
                          "pool_size": 3, "pool_stride": 2}]}
    table = format_table(describe_model("cnn", (10, 9, 1), 2, params))
    lines = table.splitlines()
    assert lines[0].split() == ["layer", "kind", "input", "output", "ch", "padding", "stride", "kernel", "rf",
                                "jump", "params"]
    pad_line = next(line for line in lines if line.startswith("block1_pad"))
    assert "10x9" in pad_line and "13x10" in pad_line and "explicit 1+2,0+1" in pad_line
    pool_line = next(line for line in lines if line.startswith("block1_pool"))
    assert "10x7" in pool_line and "4x3" in pool_line
    assert "note: block1_pool floors its output size and ignores the last 1 px on axis 0" in table
    assert "total parameters: " in table


def test_three_dimensional_layers_and_an_unknown_resizing_layer():
    inputs = keras.Input((6, 16, 15, 1))
    x = keras.layers.ZeroPadding3D(((0, 0), (1, 1), (0, 1)))(inputs)
    x = keras.layers.Conv3D(2, (3, 3, 3), strides=(1, 2, 2))(x)
    x = keras.layers.MaxPooling3D((1, 2, 2), padding="same")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling3D()(x))
    rows = describe_keras_model(model)
    _assert_rows_match_keras(rows, model)
    assert rows[2]["receptive_field"] == (3, 3, 3) and rows[3]["jump"] == (1, 4, 4)

    up = keras.Model(inputs, keras.layers.UpSampling3D(2)(inputs))
    with pytest.raises(ValueError, match="no formula"):
        describe_keras_model(up)
