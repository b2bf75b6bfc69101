"""Sum pooling: average pooling times the window area, exact sums at 'same' borders, and a clean round trip."""
import numpy as np
import pytest
import keras

from models.layers import SumPooling2D


def test_equals_average_pooling_times_window_area():
    x = np.random.default_rng(0).normal(size=(2, 9, 8, 3)).astype("float32")
    for pool, stride in (((2, 2), None), ((3, 3), (2, 2)), ((3, 2), (1, 2)), ((2, 3), (3, 1))):
        summed = SumPooling2D(pool, stride)(x)
        averaged = keras.layers.AveragePooling2D(pool, stride)(x)
        np.testing.assert_allclose(summed, np.asarray(averaged) * pool[0] * pool[1], rtol=1e-5, atol=1e-5)


def test_hand_computed_overlapping_and_same_padding():
    x = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    # 3x3 windows, stride 2, 'valid': one window over rows/cols 0-2
    assert SumPooling2D(3, 2)(x).shape == (1, 1, 1, 1)
    assert float(SumPooling2D(3, 2)(x)[0, 0, 0, 0]) == sum([0, 1, 2, 4, 5, 6, 8, 9, 10])
    # 'same' with pool 2 stride 2 on 3x3: pads one zero row/col at the end; the corner window is x[2, 2] alone
    y = np.arange(9, dtype="float32").reshape(1, 3, 3, 1)
    out = np.asarray(SumPooling2D(2, 2, padding="same")(y))[0, :, :, 0]
    np.testing.assert_array_equal(out, [[0 + 1 + 3 + 4, 2 + 5], [6 + 7, 8]])


def test_shapes_and_no_weights():
    layer = SumPooling2D(3, 2, padding="same")
    out = layer(np.zeros((1, 7, 8, 5), "float32"))
    assert out.shape == (1, 4, 4, 5)
    assert layer.compute_output_shape((None, 7, 8, 5)) == (None, 4, 4, 5)
    assert layer.count_params() == 0


def test_round_trip_through_a_saved_model(tmp_path):
    inputs = keras.Input((6, 6, 2))
    model = keras.Model(inputs, SumPooling2D((3, 3), (1, 1), name="sum")(inputs))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert loaded.get_layer("sum").get_config()["strides"] == (1, 1)
    x = np.random.default_rng(1).normal(size=(1, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="pool_size=0"):
        SumPooling2D(0)
    with pytest.raises(ValueError, match="padding='full'"):
        SumPooling2D(2, padding="full")
