"""Nearest, bed-of-nails, max pooling with argmax and max unpooling, on hand-made inputs."""
import numpy as np
import pytest
import keras
import tensorflow as tf

from models.layers import BedOfNails2D, MaxPoolingWithArgmax2D, MaxUnpooling2D, NearestUpsampling2D


def _image(rows):
    """A [1, H, W, 1] float32 batch from a nested list of rows."""
    return np.asarray(rows, np.float32)[None, :, :, None]


# ------------------------------------------------------------------------------------------------
# nearest and bed of nails
# ------------------------------------------------------------------------------------------------
def test_nearest_copies_each_value_into_its_block():
    out = NearestUpsampling2D(size=(2, 3))(_image([[1, 2], [3, 4]])).numpy()[0, :, :, 0]
    np.testing.assert_array_equal(out, [[1, 1, 1, 2, 2, 2],
                                        [1, 1, 1, 2, 2, 2],
                                        [3, 3, 3, 4, 4, 4],
                                        [3, 3, 3, 4, 4, 4]])


def test_nearest_matches_keras_upsampling_on_odd_sizes_and_batches():
    x = np.random.default_rng(0).normal(size=(3, 5, 7, 2)).astype(np.float32)
    ours = NearestUpsampling2D(size=2)(x).numpy()
    theirs = keras.layers.UpSampling2D(size=2, interpolation="nearest")(x).numpy()
    assert ours.shape == (3, 10, 14, 2)
    np.testing.assert_array_equal(ours, theirs)


def test_bed_of_nails_puts_each_value_at_its_nail_and_zeros_elsewhere():
    out = BedOfNails2D(size=2, position=(1, 0))(_image([[1, 2], [3, 4]])).numpy()[0, :, :, 0]
    np.testing.assert_array_equal(out, [[0, 0, 0, 0],
                                        [1, 0, 2, 0],
                                        [0, 0, 0, 0],
                                        [3, 0, 4, 0]])


def test_bed_of_nails_default_top_left_on_odd_size_batch_and_channels():
    x = np.arange(2 * 3 * 1 * 2, dtype=np.float32).reshape(2, 3, 1, 2) + 1
    out = BedOfNails2D(size=(2, 3))(x).numpy()
    assert out.shape == (2, 6, 3, 2)
    np.testing.assert_array_equal(out[:, ::2, ::3, :], x)
    assert out.sum() == x.sum()  # nothing but the nails


@pytest.mark.parametrize("kwargs, word", [({"size": 0}, "size"), ({"size": 2, "position": (2, 0)}, "position"),
                                          ({"size": (2, 2), "position": (0,)}, "position")])
def test_bed_of_nails_rejects_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        BedOfNails2D(**kwargs)


# ------------------------------------------------------------------------------------------------
# max pooling with argmax
# ------------------------------------------------------------------------------------------------
def test_argmax_is_the_flat_position_within_the_example():
    x = _image([[1, 9, 2, 0],
                [3, 4, 8, 5],
                [7, 0, 1, 1],
                [2, 6, 3, 0]])
    pooled, argmax = MaxPoolingWithArgmax2D(pool_size=2)(x)
    np.testing.assert_array_equal(pooled.numpy()[0, :, :, 0], [[9, 8], [7, 3]])
    # (row * width + col) * channels + channel, width 4, one channel
    np.testing.assert_array_equal(argmax.numpy()[0, :, :, 0], [[0 * 4 + 1, 1 * 4 + 2], [2 * 4 + 0, 3 * 4 + 2]])
    assert argmax.dtype == tf.int64


def test_ties_record_the_first_position_in_row_major_order():
    x = _image([[5, 5, 1, 2],
                [5, 5, 2, 2]])
    _, argmax = MaxPoolingWithArgmax2D(pool_size=2)(x)
    # window 1: all four tie -> (0, 0); window 2: three 2s tie -> (0, 3) comes before (1, 2), (1, 3)
    np.testing.assert_array_equal(argmax.numpy()[0, 0, :, 0], [0, 3])


def test_argmax_does_not_depend_on_the_batch_and_counts_channels():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 5, 5, 2)).astype(np.float32)  # odd size, 'same' padding -> 3x3
    pooled, argmax = MaxPoolingWithArgmax2D(pool_size=2, padding="same")(x)
    assert pooled.shape == (3, 3, 3, 2)
    for b in range(3):
        _, alone = MaxPoolingWithArgmax2D(pool_size=2)(x[b:b + 1])
        np.testing.assert_array_equal(argmax.numpy()[b], alone.numpy()[0])
        # every index points at its pooled value inside the example
        np.testing.assert_array_equal(x[b].reshape(-1)[argmax.numpy()[b]], pooled.numpy()[b])
    # the bottom-right window of a 5x5 input covers the single pixel (4, 4)
    np.testing.assert_array_equal(argmax.numpy()[:, 2, 2, :], [[(4 * 5 + 4) * 2, (4 * 5 + 4) * 2 + 1]] * 3)


def test_pooling_shapes_for_valid_padding_and_symbolic_dtypes():
    layer = MaxPoolingWithArgmax2D(pool_size=3, strides=2, padding="valid")
    pooled, argmax = layer(keras.Input((7, 8, 4)))
    assert pooled.shape == (None, 3, 3, 4) and argmax.shape == (None, 3, 3, 4)
    assert argmax.dtype == "int64" and pooled.dtype == "float32"


# ------------------------------------------------------------------------------------------------
# max unpooling
# ------------------------------------------------------------------------------------------------
def test_unpooling_writes_each_value_at_its_argmax_and_zeros_elsewhere():
    x = _image([[1, 9, 2, 0],
                [3, 4, 8, 5],
                [7, 0, 1, 1],
                [2, 6, 3, 0]])
    pooled, argmax = MaxPoolingWithArgmax2D(pool_size=2)(x)
    out = MaxUnpooling2D(output_size=(4, 4))([pooled * 10, argmax]).numpy()[0, :, :, 0]
    np.testing.assert_array_equal(out, [[0, 90, 0, 0],
                                        [0, 0, 80, 0],
                                        [70, 0, 0, 0],
                                        [0, 0, 30, 0]])


def test_unpooling_of_ties_uses_the_recorded_first_position():
    x = _image([[5, 5], [5, 5]])
    pooled, argmax = MaxPoolingWithArgmax2D(pool_size=2)(x)
    out = MaxUnpooling2D(output_size=(2, 2))([pooled, argmax]).numpy()[0, :, :, 0]
    np.testing.assert_array_equal(out, [[5, 0], [0, 0]])


def test_unpooling_odd_sizes_batches_and_channels_from_the_pooling_input():
    rng = np.random.default_rng(2)
    x = rng.permutation(4 * 5 * 7 * 3).astype(np.float32).reshape(4, 5, 7, 3)  # distinct values: no ties
    pooled, argmax = MaxPoolingWithArgmax2D(pool_size=2, padding="same")(x)
    out = MaxUnpooling2D()([pooled, argmax, x]).numpy()
    assert out.shape == x.shape
    # expected: keep x where it is the max of its 2x2 window (same padding), zero elsewhere
    expected = np.zeros_like(x)
    for b in range(4):
        for i in range(0, 5, 2):
            for j in range(0, 7, 2):
                for c in range(3):
                    window = x[b, i:i + 2, j:j + 2, c]
                    r, s = np.unravel_index(np.argmax(window), window.shape)
                    expected[b, i + r, j + s, c] = window[r, s]
    np.testing.assert_array_equal(out, expected)


def test_unpooling_overlapping_windows_sums_where_both_picked_the_same_position():
    x = _image([[0, 0, 0], [0, 4, 0], [0, 0, 0]])
    pooled, argmax = MaxPoolingWithArgmax2D(pool_size=2, strides=1, padding="valid")(x)
    out = MaxUnpooling2D(output_size=(3, 3))([pooled, argmax]).numpy()[0, :, :, 0]
    assert out[1, 1] == 16 and out.sum() == 16  # four windows all chose the centre


def test_unpooling_needs_an_output_size():
    values = keras.Input((2, 2, 1))
    argmax = keras.Input((2, 2, 1), dtype="int64")
    with pytest.raises(ValueError, match="output_size"):
        MaxUnpooling2D()([values, argmax])


def test_unpooling_gradient_is_routed_to_the_values():
    x = tf.constant(_image([[1, 9], [3, 4]]))
    pooled, argmax = MaxPoolingWithArgmax2D(pool_size=2)(x)
    values = tf.Variable(pooled)
    with tf.GradientTape() as tape:
        out = MaxUnpooling2D(output_size=(2, 2))([values, argmax])
        loss = tf.reduce_sum(out * tf.constant(_image([[0, 3], [0, 0]])))
    np.testing.assert_array_equal(tape.gradient(loss, values).numpy().ravel(), [3])


# ------------------------------------------------------------------------------------------------
# serialisation: .keras round trip and tracing with an unknown batch size
# ------------------------------------------------------------------------------------------------
def _model():
    inputs = keras.Input((5, 7, 2))
    pooled, argmax = MaxPoolingWithArgmax2D(pool_size=2, name="pool")(inputs)
    unpooled = MaxUnpooling2D(name="unpool")([pooled, argmax, inputs])
    fixed = MaxUnpooling2D(output_size=(5, 7), name="unpool_fixed")([pooled, argmax])
    nearest = NearestUpsampling2D(size=2, name="nearest")(pooled)
    nails = BedOfNails2D(size=(2, 2), position=(1, 1), name="nails")(pooled)
    return keras.Model(inputs, [unpooled, fixed, nearest, nails])


def test_keras_file_round_trip(tmp_path):
    model = _model()
    path = tmp_path / "layers.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode: no Lambda anywhere
    x = np.random.default_rng(3).normal(size=(2, 5, 7, 2)).astype(np.float32)
    for ours, theirs in zip(model(x), loaded(x)):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert loaded.get_layer("nails").get_config()["position"] == [1, 1]
    assert loaded.get_layer("unpool_fixed").get_config()["output_size"] == [5, 7]


def test_traces_with_an_unknown_batch_and_exports(tmp_path):
    model = _model()
    traced = tf.function(model, input_signature=[tf.TensorSpec([None, 5, 7, 2], tf.float32)])
    concrete = traced.get_concrete_function()
    x = np.random.default_rng(4).normal(size=(3, 5, 7, 2)).astype(np.float32)
    for ours, theirs in zip(model(x), concrete(tf.constant(x))):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    model.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "saved"))
    outputs = reloaded.serve(tf.constant(x))
    np.testing.assert_array_equal(outputs[0].numpy(), model(x)[0].numpy())
