"""The multitask builder: one named output per head, .keras round trip, joint training, missing targets."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from models import build_model
from models.multitask.network import HEADS, MultitaskModel, one_stage_outputs, split_detection
from models.detection.one_stage import decode_detections
from models.multitask.losses import MultitaskLoss

SHAPE = (16, 16, 3)
CLASSES = 3
SMALL = {"blocks": [{"filters": 4, "pool": "max"}, {"filters": 8, "pool": "max"}],
         "dense_units": 8, "detection_filters": 8}


def _model(heads=HEADS, **params):
    return build_model("multitask", SHAPE, CLASSES, heads=list(heads), **{**SMALL, **params})


def _batch(size=4, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, (size, *SHAPE)).astype(np.float32)
    labels = rng.integers(0, CLASSES, size)
    masks = rng.integers(0, CLASSES + 1, (size, *SHAPE[:2])).astype(np.int32)
    boxes = np.full((size, 3, 4), -1.0, np.float32)
    box_labels = np.full((size, 3), -1, np.int32)
    boxes[:, 0] = [0.25, 0.25, 0.75, 0.75]
    box_labels[:, 0] = labels
    targets = {"class": np.eye(CLASSES, dtype=np.float32)[labels], "mask": masks, "boxes": boxes,
               "labels": box_labels}
    return images, {k: tf.constant(v) for k, v in targets.items()}


@pytest.fixture(scope="module")
def every_head():
    return _model(weighting="uncertainty")


def test_one_named_output_per_head_with_the_right_shapes(every_head):
    outputs = every_head(np.zeros((2, *SHAPE), np.float32))
    anchors = every_head.anchors()
    # detection reads block 1 (8x8) with 3 anchor scales per location
    assert anchors.shape == (8 * 8 * 3, 4)
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {
        "classification": (2, CLASSES), "segmentation": (2, 16, 16, CLASSES + 1),
        "detection": (2, 192, 4 + CLASSES), "regression": (2, 1)}
    assert all(v.dtype == tf.float32 for v in outputs.values())
    deltas, logits = split_detection(outputs["detection"])
    assert tuple(deltas.shape) == (2, 192, 4) and tuple(logits.shape) == (2, 192, CLASSES)
    # the class logits start at the focal prior: sigmoid = 0.01
    np.testing.assert_allclose(keras.ops.sigmoid(logits).numpy(), 0.01, atol=0.02)


def test_detection_output_decodes_with_the_one_stage_decoder(every_head):
    output = np.zeros((1, 192, 4 + CLASSES), np.float32)
    output[0, :, 4:] = -10.0
    output[0, 108, 4 + 2] = 4.0  # anchor of cell (4, 4), class 2, zero deltas: the box is the anchor
    detections = decode_detections(one_stage_outputs(output), anchors=every_head.anchors(), max_detections=5)
    assert int(detections["num_detections"][0]) == 1
    assert int(detections["classes"][0, 0]) == 2
    np.testing.assert_allclose(detections["boxes"][0, 0], every_head.anchors()[108], atol=1e-6)
    np.testing.assert_allclose(every_head.anchors()[108], [0.5625 - 0.15, 0.5625 - 0.15, 0.5625 + 0.15,
                                                           0.5625 + 0.15], atol=1e-6)  # 0.4 x 16 px x 0.75


def test_a_subset_of_heads_builds_only_those_heads():
    model = _model(["segmentation"], segmentation_classes=6)
    outputs = model(np.zeros((1, *SHAPE), np.float32))
    assert list(outputs) == ["segmentation"] and tuple(outputs["segmentation"].shape) == (1, 16, 16, 6)
    assert model.task_weighting.tasks == {"segmentation": "classification"}
    assert not any(layer.name.startswith("classification") for layer in model.network.layers)


def test_head_specific_convolutions():
    model = _model(["segmentation", "detection"], segmentation_filters=2, detection_convs=2, detection_filters=5)
    layers = {layer.name: layer for layer in model.network.layers}
    assert layers["segmentation_conv2"].count_params() == 3 * 3 * 8 * 2 + 2  # on block 2 (8 channels)
    assert layers["segmentation_conv1"].count_params() == 3 * 3 * 4 * 2 + 2  # on block 1 (4 channels)
    assert layers["segmentation_score1"].count_params() == 2 * (CLASSES + 1) + CLASSES + 1
    assert layers["detection_conv"].count_params() == 3 * 3 * 4 * 5 + 5     # reads block 1
    assert layers["detection_conv2"].count_params() == 3 * 3 * 5 * 5 + 5
    assert "segmentation_conv1" not in {layer.name for layer in _model(["segmentation"]).network.layers}


def test_uncertainty_log_variances_are_model_variables(every_head):
    names = [v.path for v in every_head.trainable_variables if "log_variance" in v.path]
    assert names == [f"task_weighting/log_variance_{h}" for h in HEADS]
    assert _model(["classification"]).task_weighting.weights == []  # static: nothing learned


def test_keras_file_round_trip_with_safe_mode(tmp_path, every_head):
    for head, value in zip(HEADS, (0.25, -0.5, 0.75, 1.5)):
        every_head.task_weighting.log_variance[head].assign(value)
    path = tmp_path / "multitask.keras"
    every_head.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, MultitaskModel)
    assert loaded.head_config == every_head.head_config
    assert loaded.task_weighting.log_variances() == pytest.approx(
        {"classification": 0.25, "segmentation": -0.5, "detection": 0.75, "regression": 1.5})
    images = np.random.default_rng(1).uniform(0, 1, (2, *SHAPE)).astype(np.float32)
    expected, received = every_head(images), loaded(images)
    for head in HEADS:
        np.testing.assert_allclose(received[head].numpy(), expected[head].numpy(), atol=1e-6)
    np.testing.assert_allclose(loaded.anchors(), every_head.anchors())


def test_joint_training_steps_reduce_the_total_loss():
    model = _model(weighting="uncertainty")
    loss = MultitaskLoss.for_model(model)
    optimizer = keras.optimizers.Adam(0.01)
    images, targets = _batch(size=8)

    def step():
        with tf.GradientTape() as tape:
            total = loss(targets, model(images, training=True))
        gradients = tape.gradient(total, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return total

    totals = [float(step()) for _ in range(12)]
    assert totals[-1] < 0.8 * totals[0]
    assert all(np.isfinite(totals))
    assert model.task_weighting.log_variances()["classification"] != 0.0  # the s_i trained too


def test_missing_targets_add_zero_loss_and_zero_gradient():
    model = _model(["classification", "segmentation"])
    loss = MultitaskLoss.for_model(model)
    images, targets = _batch(size=4)
    targets["class"] = tf.zeros_like(targets["class"])  # no example carries a class label
    with tf.GradientTape() as tape:
        total, per_head = loss.total_and_head_losses(targets, model(images))
    variables = {v.path: v for v in model.trainable_variables}
    gradients = dict(zip(variables, tape.gradient(total, list(variables.values()))))
    assert float(per_head["classification"]) == 0.0
    assert float(total) == pytest.approx(float(per_head["segmentation"]), rel=1e-6)
    head = [p for p in gradients if p.startswith("classification_")]
    assert head and all(gradients[p] is None or not np.any(gradients[p].numpy()) for p in head)
    assert np.any(gradients["segmentation_score1/kernel"].numpy())


def test_a_missing_mask_is_left_out_of_the_segmentation_mean():
    model = _model(["segmentation"])
    loss = MultitaskLoss.for_model(model)
    images, targets = _batch(size=4)
    outputs = model(images)
    only_first_two = loss.head_losses({"mask": targets["mask"][:2]}, {"segmentation": outputs["segmentation"][:2]})
    missing = np.array(targets["mask"])
    missing[2:] = 255  # examples 2 and 3 carry no mask
    with_missing = loss.head_losses({"mask": tf.constant(missing)}, outputs)
    assert float(with_missing["segmentation"]) == pytest.approx(float(only_first_two["segmentation"]), rel=1e-5)
    flagged = loss.head_losses({**targets, "present": {"segmentation": tf.constant([1.0, 1.0, 0.0, 0.0])}}, outputs)
    assert float(flagged["segmentation"]) == pytest.approx(float(only_first_two["segmentation"]), rel=1e-5)


def test_a_head_whose_target_key_is_absent_adds_zero():
    model = _model(["classification", "regression"])
    loss = MultitaskLoss.for_model(model)
    images, targets = _batch(size=2)
    per_head = loss.head_losses({"class": targets["class"]}, model(images))
    assert float(per_head["regression"]) == 0.0 and float(per_head["classification"]) > 0.0


@pytest.mark.parametrize("params, message", [
    ({"heads": []}, "Expected a non-empty list"),
    ({"heads": ["classification", "depth"]}, "distinct names drawn from"),
    ({"heads": ["classification", "classification"]}, "distinct names"),
    ({"regression_target": "volume"}, "regression_target='volume'"),
    ({"heads": ["detection"], "detection_block": 5}, "an index into the 2 backbone blocks"),
    ({"heads": ["classification"], "colour": "red"}, "Received colour='red'"),
    ({"heads": ["classification"], "weighting": "learned"}, "Received mode='learned'"),
])
def test_invalid_parameters_say_what_was_expected(params, message):
    with pytest.raises(ValueError, match=message):
        build_model("multitask", SHAPE, CLASSES, **{**SMALL, **params})


def test_decoder_rejects_sizes_the_strides_do_not_divide():
    with pytest.raises(ValueError, match="cannot upsample"):
        build_model("multitask", (18, 18, 3), CLASSES, heads=["segmentation"],
                    blocks=[{"filters": 4, "pool": "max"}, {"filters": 4, "pool": "max"}])
