"""The `fcn` builder (every upsampling method, skips, size errors) and classifier -> FCN conversion."""
import numpy as np
import pytest
import keras
import tensorflow as tf

from models import build_model
from models.segmentation.fcn import UPSAMPLING, to_fully_convolutional
from models.layers import MaxPoolingWithArgmax2D, MaxUnpooling2D

SMALL = [{"filters": 4}, {"filters": 8}]


def _x(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# the builder
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("upsampling", UPSAMPLING)
@pytest.mark.parametrize("skip", ["none", "add", "concat"])
def test_every_method_gives_logits_at_the_input_resolution(upsampling, skip):
    model = build_model("fcn", (8, 12, 3), 5, blocks=SMALL, upsampling=upsampling, skip=skip)
    logits = model(_x(3, 8, 12, 3))
    assert logits.shape == (3, 8, 12, 5)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32" and model.get_layer("logits").dtype_policy.compute_dtype == "float32"


def test_parameter_counts_by_hand():
    # encoder: 3*3*3*4+4 = 112, 3*3*4*8+8 = 296; decoder stage 2 -> 4 channels: 3*3*8*4+4 = 292;
    # stage 1 -> 4: 3*3*4*4+4 = 148; logits 1x1: 4*2+2 = 10
    plain = build_model("fcn", (8, 8, 3), 2, blocks=SMALL, upsampling="nearest", skip="none", batch_norm=False)
    assert plain.count_params() == 112 + 296 + 292 + 148 + 10
    # concat doubles the decoder inputs: 3*3*16*4+4 = 580 and 3*3*8*4+4 = 292
    concat = build_model("fcn", (8, 8, 3), 2, blocks=SMALL, upsampling="nearest", skip="concat", batch_norm=False)
    assert concat.count_params() == 112 + 296 + 580 + 292 + 10
    # add projects each skip with a 1x1 conv to the decoder's channels: 8*8+8 = 72 and 4*4+4 = 20
    add = build_model("fcn", (8, 8, 3), 2, blocks=SMALL, upsampling="nearest", skip="add", batch_norm=False)
    assert add.count_params() == plain.count_params() + 72 + 20
    # transposed learns a 2x2 kernel per stage: 2*2*8*8+8 = 264 and 2*2*4*4+4 = 68
    transposed = build_model("fcn", (8, 8, 3), 2, blocks=SMALL, upsampling="transposed", skip="none",
                             batch_norm=False)
    assert transposed.count_params() == plain.count_params() + 264 + 68


def test_max_unpool_decoder_uses_the_encoders_argmax():
    model = build_model("fcn", (8, 8, 1), 2, blocks=SMALL, upsampling="max_unpool", skip="none", batch_norm=False)
    pool = model.get_layer("encoder2_pool")
    unpool = model.get_layer("decoder2_up")
    assert isinstance(pool, MaxPoolingWithArgmax2D) and isinstance(unpool, MaxUnpooling2D)
    # the unpooling's inputs: the bottleneck features, the pool's argmax and the pool's input
    values, argmax, like = unpool.input
    assert argmax is pool.output[1] and like is pool.input
    # the unpooled map holds each bottleneck value at its argmax: at most one non-zero per 2x2 window
    # and channel, and exactly the bottleneck's values
    probe = keras.Model(model.input, [unpool.output, pool.output[0]])
    out, pooled = (t.numpy() for t in probe(_x(2, 8, 8, 1)))
    assert out.shape == (2, 4, 4, 8)
    windows = out.reshape(2, 2, 2, 2, 2, 8)  # (batch, i, r, j, s, channel)
    assert ((windows != 0).sum(axis=(2, 4)) <= 1).all()
    np.testing.assert_allclose(windows.sum(axis=(2, 4)), pooled, rtol=1e-6)


@pytest.mark.parametrize("upsampling", ["max_unpool", "bed_of_nails"])
def test_unknown_input_size_builds_and_runs_on_sizes_the_stride_divides(upsampling):
    model = build_model("fcn", (None, None, 3), 2, blocks=SMALL, upsampling=upsampling)
    assert model(_x(2, 16, 24, 3)).shape == (2, 16, 24, 2)
    assert model(_x(1, 8, 4, 3)).shape == (1, 8, 4, 2)


def test_bed_of_nails_position_is_configurable_and_checked():
    model = build_model("fcn", (8, 8, 3), 2, blocks=SMALL, upsampling="bed_of_nails", nail_position=[1, 1])
    assert model.get_layer("decoder1_up").position == (1, 1)
    with pytest.raises(ValueError, match="nail_position"):
        build_model("fcn", (8, 8, 3), 2, blocks=SMALL, upsampling="bed_of_nails", nail_position=[2, 0])


def test_input_not_divisible_by_the_stride_names_sizes_that_work():
    blocks = [{"filters": 4}, {"filters": 4}, {"filters": 4}]
    with pytest.raises(ValueError) as err:
        build_model("fcn", (30, 30, 3), 2, blocks=blocks)
    assert str(err.value) == ("fcn: input 30x30 is not divisible by the encoder stride 8; "
                              "use a multiple of 8 such as 24 or 32.")
    with pytest.raises(ValueError, match="such as 8 or 16"):
        build_model("fcn", (16, 6, 3), 2, blocks=blocks)
    with pytest.raises(ValueError, match=r"stride 4x2: width 7 is not a multiple of 2 \(use 6 or 8\)"):
        build_model("fcn", (8, 7, 3), 2, blocks=[{"filters": 4, "pool_size": [2, 1]}, {"filters": 4}])
    # a block with pool 1 does not pool: stride 2 only
    assert build_model("fcn", (6, 6, 3), 2, blocks=[{"filters": 4, "pool_size": 1}, {"filters": 4}]).output.shape == (
        None, 6, 6, 2)


@pytest.mark.parametrize("params, word", [
    ({"upsampling": "cubic"}, "upsampling"), ({"skip": "sum"}, "skip"), ({"blocks": []}, "blocks"),
    ({"blocks": [{"filters": 0}]}, r"blocks\[0\]\.filters"), ({"blocks": [{"filters": 4, "kernel": 3}]}, "unknown"),
    ({"colour": 1}, "unknown parameter"), ({"decoder_convs": 0}, "decoder_convs")])
def test_bad_parameters_are_named(params, word):
    with pytest.raises(ValueError, match=word):
        build_model("fcn", (8, 8, 3), 2, **{"blocks": SMALL, **params})


@pytest.mark.parametrize("upsampling", ["max_unpool", "bed_of_nails", "transposed"])
def test_keras_file_round_trip(tmp_path, upsampling):
    model = build_model("fcn", (8, 8, 3), 3, blocks=SMALL, upsampling=upsampling, skip="add")
    path = tmp_path / "fcn.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = _x(2, 8, 8, 3)
    np.testing.assert_array_equal(model(x).numpy(), loaded(x).numpy())
    # traced with an unknown batch size, as a SavedModel signature is
    traced = tf.function(loaded, input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)]).get_concrete_function()
    np.testing.assert_allclose(traced(tf.constant(_x(5, 8, 8, 3))).numpy(), model(_x(5, 8, 8, 3)).numpy(), atol=1e-6)


@pytest.mark.slow
def test_learns_a_tiny_mask():
    """Overfits 8 images whose mask is 'pixel brighter than 0.5': the loss falls and pixels come out right."""
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).uniform(size=(8, 8, 8, 1)).astype(np.float32)
    y = (x[..., 0] > 0.5).astype(np.int32)
    model = build_model("fcn", (8, 8, 1), 2, blocks=SMALL, upsampling="max_unpool", skip="concat")
    model.compile(keras.optimizers.Adam(0.02), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, epochs=60, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    model.compile(keras.optimizers.Adam(0.02), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert (model.predict(x, verbose=0).argmax(-1) == y).mean() > 0.9


# ------------------------------------------------------------------------------------------------
# classifier -> fully convolutional
# ------------------------------------------------------------------------------------------------
def _randomise(model, seed=0):
    """Weights as training might leave them: random kernels and biases, BN statistics away from 0 and 1."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        values = rng.normal(0.0, 0.3, variable.shape)
        if "variance" in variable.path:
            values = np.abs(values) + 0.5
        variable.assign(values.astype(variable.dtype))


@pytest.mark.parametrize("head, global_pool, dense_units", [
    ("dense", "avg", [8]), ("dense", "flatten", [8]), ("dense", "max", []), ("conv1x1", "avg", [6])])
def test_same_logits_on_the_training_size_and_a_map_on_larger_images(head, global_pool, dense_units):
    keras.utils.set_random_seed(1)
    classifier = build_model("cnn", (20, 20, 3), 3, head=head, global_pool=global_pool, dense_units=dense_units,
                             dropout=0.2)
    _randomise(classifier)
    fcn = to_fully_convolutional(classifier)
    x = _x(3, 20, 20, 3, seed=2)
    expected = classifier(x, training=False).numpy()
    got = fcn(x, training=False).numpy()
    assert got.shape == (3, 1, 1, 3)
    assert np.abs(got[:, 0, 0] - expected).max() < 1e-5
    # a 4x4x64 conv and Flatten -> Dense sum the same 1024 products in different orders: a few float32 ulps
    np.testing.assert_allclose(keras.ops.softmax(got[:, 0, 0]), keras.ops.softmax(expected), atol=2e-6)
    assert not any(isinstance(layer, (keras.layers.Dense, keras.layers.Flatten)) for layer in fcn.layers)
    # default blocks: 20 -> pool 2 -> 10 -> pool 3/2 -> 4; 44x36 -> 22x18 -> 10x8 -> windows of 4x4: 7x5
    assert fcn(_x(1, 44, 36, 3)).shape == (1, 7, 5, 3)


def test_each_map_position_is_the_classifier_on_one_window():
    """With 'valid' padding everywhere, position (i, j) is exactly the classifier on the crop at (4i, 4j)."""
    blocks = [{"filters": 4, "padding": "valid", "pool": "max"}, {"filters": 6, "padding": "valid", "pool": "max"}]
    classifier = build_model("cnn", (14, 14, 2), 3, blocks=blocks, global_pool="flatten", dense_units=[5])
    fcn = to_fully_convolutional(classifier)
    image = _x(1, 22, 26, 2, seed=3)
    heat = fcn(image).numpy()[0]
    assert heat.shape == (3, 4, 3)  # (22-14)/4+1, (26-14)/4+1
    crops = np.stack([image[0, 4 * i:4 * i + 14, 4 * j:4 * j + 14] for i in range(3) for j in range(4)])
    expected = classifier(crops).numpy().reshape(3, 4, 3)
    assert np.abs(heat - expected).max() < 1e-5


def test_explicit_padding_and_sum_and_average_pools_convert_too():
    blocks = [{"filters": 4, "padding": [[1, 1], [1, 1]], "pool": "sum"},
              {"filters": 5, "pool": "avg", "pool_size": 3, "pool_stride": 1}]
    classifier = build_model("cnn", (10, 10, 3), 4, blocks=blocks, global_pool="flatten", dense_units=[6])
    _randomise(classifier, seed=4)
    fcn = to_fully_convolutional(classifier)
    x = _x(2, 10, 10, 3, seed=5)
    assert np.abs(fcn(x).numpy()[:, 0, 0] - classifier(x).numpy()).max() < 1e-5
    assert fcn(_x(1, 16, 12, 3)).shape == (1, 4, 2, 4)  # 16 -> 8 -> 6 against 10 -> 5 -> 3: 6-3+1 = 4


def test_plain_keras_sequential_classifier(tmp_path):
    classifier = keras.Sequential([
        keras.Input((12, 12, 3)), keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(), keras.layers.Dense(7, activation="relu"), keras.layers.Dropout(0.5),
        keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    _randomise(classifier)
    fcn = to_fully_convolutional(classifier, name="probe")
    x = _x(2, 12, 12, 3)
    assert fcn.name == "probe"
    assert np.abs(fcn(x).numpy()[:, 0, 0] - classifier(x).numpy()).max() < 1e-5
    # Flatten over the 5x5x4 map became a 5x5 conv with the Dense kernel reshaped
    conv = fcn.get_layer(classifier.layers[3].name)
    assert conv.kernel.shape == (5, 5, 4, 7)
    np.testing.assert_array_equal(conv.kernel.numpy().reshape(100, 7), classifier.layers[3].kernel.numpy())
    # the converted model is plain Keras layers: it saves and loads, and takes any image size
    fcn.save(tmp_path / "fcn.keras")
    loaded = keras.models.load_model(tmp_path / "fcn.keras")
    big = _x(1, 20, 16, 3)
    assert loaded(big).shape == (1, 5, 3, 2)
    np.testing.assert_array_equal(loaded(big).numpy(), fcn(big).numpy())


def test_conversion_errors_name_the_layer():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Flatten(name="flat")(keras.layers.Conv2D(2, 3)(inputs))
    x = keras.layers.Reshape((6, 12), name="reshape")(x)
    with pytest.raises(ValueError, match="'reshape'"):
        to_fully_convolutional(keras.Model(inputs, keras.layers.Flatten()(x)))
    unknown_size = build_model("cnn", (None, None, 3), 2)
    with pytest.raises(ValueError, match="global_avg_pool.*fixed input size"):
        to_fully_convolutional(unknown_size)


def test_the_shipped_segmentation_config_builds_every_swept_method():
    from pathlib import Path

    from models import get_loss
    from pipeline.config import load_config

    config = load_config(Path(__file__).resolve().parents[3] / "configs" / "segmentation.json")
    assert (config.ingest.task, config.model.name, config.evaluate.metric) == ("segmentation", "fcn", "mean_iou")
    size = config.ingest.source.image_size
    classes = config.ingest.source.num_classes + 1  # background is class 0
    methods = config.train.sweep["model.params.upsampling"]
    assert sorted(methods) == sorted(UPSAMPLING)
    for method in methods:
        model = build_model("fcn", (size, size, 3), classes, **{**config.model.params, "upsampling": method})
        assert model.output.shape == (None, size, size, classes)
    loss = get_loss(config.train.loss, **config.train.loss_params)
    assert loss.ignore_value == 255
