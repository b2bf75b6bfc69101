"""models/backbones: a small backbone's weights saved to a file come back equal when a model is
built from that file, its head trains while pretrained batch-norm statistics stay put, a file of
another model is refused naming the path and the shape, and the classifier, the FCN and the
detectors take the backbone's maps at the strides they should. Inputs are 32-64 px to stay fast."""
import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from models import backbones, build_model
from models.backbones import BackboneWeightsError, preprocessing
from tests.models.backbones import fixtures as backbone_fixtures


def small_backbone(shape=(32, 32, 3), **kwargs):
    return keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=shape, **kwargs)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A mobilenet_v3_small's weights with calibrated batch-norm statistics, as a user would save them."""
    source = backbone_fixtures.calibrated_backbone(size=64)  # models below take 32 or 64 px: weights do not care
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v3_small.weights.h5"
    source.save_weights(str(path))
    return path, {layer.name: [w.copy() for w in layer.get_weights()] for layer in source.layers if layer.weights}


def layer_weights(backbone):
    return {layer.name: layer.get_weights() for layer in backbone.layers if layer.weights}


def test_a_classifier_built_from_a_weights_file_holds_exactly_those_weights(weights_file):
    path, saved = weights_file
    model = build_model("cnn", (32, 32, 3), 3, backbone={"name": "mobilenet_v3_small", "weights": str(path)})
    loaded = layer_weights(backbones.find(model)[0])
    assert sorted(loaded) == sorted(saved)
    for name, values in saved.items():
        assert all(np.array_equal(a, b) for a, b in zip(values, loaded[name])), name


def test_the_head_trains_and_pretrained_batch_norm_statistics_stay(weights_file):
    """Head only (backbone trainable "none"); training the whole backbone is the fine-tune's second
    phase (tests/components/test_fine_tune.py), 5x slower to trace on a CPU."""
    path, saved = weights_file
    trainable = "none"
    keras.utils.set_random_seed(0)
    model = build_model("cnn", (32, 32, 3), 2,
                        backbone={"name": "mobilenet_v3_small", "weights": str(path), "trainable": trainable})
    backbone = backbones.find(model)[0]
    norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and not any(layer.trainable for layer in norms)
    labels = np.array([0, 1] * 4)
    noise = np.random.default_rng(1).random((8, 32, 32, 3)) * 0.2
    images = (noise + np.where(labels == 0, 0.1, 0.7)[:, None, None, None]).astype("float32")  # dark or bright
    optimizer = keras.optimizers.Adam(1e-2)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                labels, model(images, training=True), from_logits=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    head = model.get_layer("logits").get_weights()[0].copy()
    losses = [float(step()) for _ in range(20)]
    assert losses[-1] < losses[0] * 0.6, losses
    assert not np.array_equal(model.get_layer("logits").get_weights()[0], head)
    for layer in norms:
        assert np.array_equal(layer.moving_mean.numpy(), saved[layer.name][2]), layer.name
    first_conv = backbone.get_layer("conv").get_weights()[0]
    assert np.array_equal(first_conv, saved["conv"][0])


def test_weights_of_another_model_are_refused_naming_the_path_and_the_shape(tmp_path):
    other = tmp_path / "alpha075.weights.h5"
    small_backbone(alpha=0.75).save_weights(str(other))
    with pytest.raises(BackboneWeightsError) as caught:
        build_model("cnn", (32, 32, 3), 3, backbone={"name": "mobilenet_v3_small", "weights": str(other)})
    message = str(caught.value)
    assert str(other) in message and "has shape" in message and "expects" in message
    assert caught.value.path == str(other)


def test_a_missing_or_foreign_file_is_refused_naming_it(tmp_path):
    missing = tmp_path / "nowhere.weights.h5"
    with pytest.raises(BackboneWeightsError, match="nowhere.weights.h5: no such file"):
        build_model("cnn", (32, 32, 3), 3, backbone={"name": "mobilenet_v3_small", "weights": str(missing)})
    text = tmp_path / "notes.weights.h5"
    text.write_text("not hdf5")
    with pytest.raises(BackboneWeightsError, match="is not an HDF5 file"):
        backbones.weights.check_path(text, "mobilenet_v3_small")
    preset = tmp_path / "preset"
    preset.mkdir()
    (preset / "config.json").write_text("{}")
    with pytest.raises(BackboneWeightsError, match="KerasHub preset"):
        backbones.weights.check_path(preset, "mobilenet_v3_small")


def test_a_legacy_h5_file_as_keras_applications_downloads_loads_and_is_checked(tmp_path):
    from keras.src.legacy.saving import legacy_h5_format

    source = small_backbone()
    legacy = tmp_path / "mobilenet_v3_small_224_1.0_float_no_top_v2.h5"
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    model = build_model("cnn", (32, 32, 3), 3, backbone={"name": "mobilenet_v3_small", "weights": str(legacy)})
    loaded = layer_weights(backbones.find(model)[0])
    for layer in source.layers:
        if layer.weights:
            assert all(np.array_equal(a, b) for a, b in zip(layer.get_weights(), loaded[layer.name]))
    with pytest.raises(BackboneWeightsError, match=r"mobilenet_v3_small_224.*has weights of shapes"):
        build_model("cnn", (32, 32, 3), 3, backbone={"name": "mobilenet_v3_large", "weights": str(legacy)})


def test_trainable_from_a_layer_freezes_the_layers_before_it():
    model = build_model("cnn", (32, 32, 3), 3,
                        backbone={"name": "mobilenet_v3_small", "trainable": "from:expanded_conv_8_expand"})
    layers = backbones.find(model)[0].layers
    start = [layer.name for layer in layers].index("expanded_conv_8_expand")
    assert not any(layer.trainable for layer in layers[:start] if layer.weights)
    assert all(layer.trainable for layer in layers[start:] if layer.weights)  # from scratch: BN trains too
    with pytest.raises(ValueError, match="has no layer 'conv99'"):
        build_model("cnn", (32, 32, 3), 3, backbone={"name": "mobilenet_v3_small", "trainable": "from:conv99"})


def test_layer_names_are_the_same_in_every_build():
    """Unnamed keras.applications layers are renamed per backbone, not by a process-wide counter."""
    first, second = (backbones.build(backbones.parse_spec("mobilenet_v3_small", "t"), (32, 32, 3), "t", taps=False)
                     for _ in range(2))
    assert [op.name for op in first.operations] == [op.name for op in second.operations]


@pytest.mark.parametrize("raw,match", [
    ({"name": "resnet9000"}, "Expected one of"),
    ({"name": "resnet50", "trainable": "some"}, "Expected 'all', 'none' or 'from:<layer name>'"),
    ({"name": "resnet50", "pretrained": True}, "unknown key"),
    ({"weights": "w.h5"}, "missing 'name'"),
])
def test_bad_specs_name_the_key(raw, match):
    with pytest.raises(ValueError, match=match):
        backbones.parse_spec(raw, "cnn")


def test_blocks_and_a_backbone_together_are_refused():
    with pytest.raises(ValueError, match="no blocks with a backbone"):
        build_model("cnn", (32, 32, 3), 3, blocks=[{"filters": 4}], backbone={"name": "mobilenet_v3_small"})
    with pytest.raises(ValueError, match="RGB"):
        build_model("cnn", (32, 32, 1), 3, backbone={"name": "mobilenet_v3_small"})


@pytest.mark.parametrize("mode,reference", [
    ("caffe", lambda x: keras.applications.resnet.preprocess_input(x * 255.0)),
    ("tf", lambda x: keras.applications.mobilenet_v2.preprocess_input(x * 255.0)),
    ("torch", lambda x: keras.applications.densenet.preprocess_input(x * 255.0)),
    ("builtin", lambda x: x * 255.0),
])
def test_preprocessing_is_what_keras_applications_prescribe(mode, reference):
    pixels = np.random.default_rng(2).random((2, 4, 4, 3)).astype("float32")
    ours = preprocessing.BackbonePreprocessing(mode)(pixels)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(reference(pixels.copy())), rtol=1e-5, atol=1e-4)


def test_every_backbone_says_what_input_it_expects():
    expected = {"resnet50": "caffe", "resnet50_v2": "tf", "mobilenet_v2": "tf", "mobilenet_v3_small": "builtin",
                "efficientnet_b0": "builtin", "densenet121": "torch"}
    assert {name: backbones.CATALOG[name].preprocessing for name in expected} == expected


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v2", "efficientnet_b0", "resnet50"])
def test_taps_are_at_strides_8_16_32(name):
    model = backbones.build(backbones.parse_spec(name, "t"), (64, 64, 3), "t", taps=True)
    assert [tuple(out.shape[1:3]) for out in model.outputs] == [(8, 8), (4, 4), (2, 2)]


def test_the_fcn_decodes_backbone_skips_to_the_input_size():
    model = build_model("fcn", (64, 64, 3), 4, backbone={"name": "mobilenet_v3_small"}, skip="add")
    assert tuple(model.output.shape) == (None, 64, 64, 4)
    skips = {layer.name: tuple(layer.output.shape[1:3]) for layer in model.layers if layer.name.endswith("_skip")}
    assert skips == {"decoder16_skip": (4, 4), "decoder8_skip": (8, 8)}
    with pytest.raises(ValueError, match="max unpooling needs"):
        build_model("fcn", (64, 64, 3), 4, backbone={"name": "mobilenet_v3_small"}, upsampling="max_unpool")
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model("fcn", (48, 48, 3), 4, backbone={"name": "mobilenet_v3_small"})


@pytest.mark.parametrize("stage", ["one", "two"])
def test_detectors_put_strides_8_16_32_into_the_pyramid_and_reload_without_the_file(stage, weights_file, tmp_path):
    path, _ = weights_file
    model = build_model("detector", (64, 64, 3), 3, stage=stage, fpn_filters=16,
                        backbone={"name": "mobilenet_v3_small", "weights": str(path)})
    assert [tuple(out.shape[1:3]) for out in model.features.outputs] == [(8, 8), (4, 4), (2, 2)]
    assert model.get_config()["backbone"]["weights"] is None and "blocks" not in model.get_config()
    saved = tmp_path / "detector.keras"
    model.save(saved)
    images = np.random.default_rng(3).random((1, 64, 64, 3)).astype("float32")
    restored = keras.saving.load_model(saved)
    np.testing.assert_allclose(np.asarray(restored(images)["class_logits"]),
                               np.asarray(model(images)["class_logits"]), atol=1e-6)
