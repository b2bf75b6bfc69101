"""The three detectors: shapes, decoding, losses, a few training steps, save/load."""
import numpy as np
import pytest
import tensorflow as tf

import keras
from models import build_model
from models.detection import detector
from models.detection.one_stage import decode_detections

SMALL_BLOCKS = [{"filters": 8, "pool": "max"}, {"filters": 8, "pool": "max"}, {"filters": 16, "pool": "max"}]
IMAGE = (32, 32, 3)


def _batch(size=4, seed=0):
    """Squares of two kinds on a dark background: bright squares class 0, grey ones class 1."""
    rng = np.random.default_rng(seed)
    images = np.full((size, *IMAGE), 0.1, np.float32)
    boxes = np.full((size, 4, 4), -1.0, np.float32)
    labels = np.full((size, 4), -1, np.int32)
    for i in range(size):
        side = int(rng.integers(8, 14))
        x0, y0 = (int(v) for v in rng.integers(0, 32 - side, 2))
        label = i % 2
        images[i, y0:y0 + side, x0:x0 + side] = 1.0 if label == 0 else 0.5
        boxes[i, 0] = [x0 / 32, y0 / 32, (x0 + side) / 32, (y0 + side) / 32]
        labels[i, 0] = label
    return images, {"boxes": boxes, "labels": labels}


def _train(model, batch, steps, learning_rate=0.01, compiled=True):
    """Loss before each of `steps` Adam steps (compiled pays a few seconds of tracing once)."""
    optimizer = keras.optimizers.Adam(learning_rate)

    def step():
        with tf.GradientTape() as tape:
            loss = model.compute_loss(batch)["loss"]
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    step = tf.function(step) if compiled else step
    return [float(step()) for _ in range(steps)]


def test_builder_validates_stage_and_parameters():
    with pytest.raises(ValueError, match="stage='three'"):
        build_model("detector", IMAGE, 2, stage="three")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['anchors_sizes'\]"):
        build_model("detector", IMAGE, 2, stage="one", blocks=SMALL_BLOCKS, anchors_sizes=[8, 16])
    with pytest.raises(ValueError, match="levels=5"):
        build_model("detector", IMAGE, 2, stage="one", blocks=SMALL_BLOCKS, levels=5)


def test_one_stage_outputs_and_anchor_count():
    model = build_model("detector", IMAGE, 3, stage="one", blocks=SMALL_BLOCKS, levels=2, fpn_filters=8,
                        head_depth=1, anchor_sizes=[8, 16], anchor_scales=[1.0, 1.5], aspect_ratios=[0.5, 1.0, 2.0])
    assert isinstance(model, detector.OneStageDetector)
    outputs = model(np.zeros((2, *IMAGE), np.float32))
    expected = (8 * 8 + 4 * 4) * 6  # levels of stride 4 and 8, six anchors per cell
    assert outputs["class_logits"].shape == (2, expected, 3)
    assert outputs["box_deltas"].shape == (2, expected, 4)
    assert outputs["anchors"].shape == (2, expected, 4)
    assert outputs["class_logits"].dtype == tf.float32
    # The class bias starts at the prior: sigmoid(logit) ~ 0.01 on a blank image.
    np.testing.assert_allclose(tf.sigmoid(outputs["class_logits"]).numpy().mean(), 0.01, rtol=0.2)


def test_decode_detections_hand_case():
    anchors = np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], np.float32)
    outputs = {
        "class_logits": np.array([[[3.0, -9.0], [-9.0, -9.0]]], np.float32),
        "box_deltas": np.array([[[0.0, 0.0, np.log(0.5), 0.0], [0, 0, 0, 0]]], np.float32),
        "anchors": anchors[None],
    }
    out = {k: v.numpy() for k, v in decode_detections(outputs, max_detections=3, score_threshold=0.1).items()}
    assert out["num_detections"].tolist() == [1]
    np.testing.assert_allclose(out["boxes"][0, 0], [0.125, 0, 0.375, 0.5], atol=1e-6)  # width halved about the centre
    np.testing.assert_allclose(out["scores"][0, 0], 1 / (1 + np.exp(-3.0)), rtol=1e-6)
    assert out["classes"][0, 0] == 0


def test_a_few_one_stage_steps_reduce_the_loss():
    keras.utils.set_random_seed(1)
    model = build_model("detector", IMAGE, 2, stage="one", blocks=SMALL_BLOCKS, levels=2, fpn_filters=8,
                        head_depth=1, anchor_sizes=[8, 16], anchor_scales=[1.0], aspect_ratios=[1.0])
    losses = _train(model, _batch(), 5, compiled=False)
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.slow
def test_one_stage_training_reduces_loss_and_finds_the_box():
    keras.utils.set_random_seed(1)
    model = build_model("detector", IMAGE, 2, stage="one", blocks=SMALL_BLOCKS, levels=2, fpn_filters=16,
                        head_depth=1, anchor_sizes=[8, 16], anchor_scales=[1.0, 1.4], aspect_ratios=[1.0])
    batch = _batch()
    losses = _train(model, batch, 40)
    assert losses[-1] < 0.5 * losses[0], losses
    found = {k: v.numpy() for k, v in model.detect(batch[0], max_detections=5).items()}
    best = found["boxes"][:, 0]
    truth = batch[1]["boxes"][:, 0]
    from models.detection import boxes
    iou = np.diag(boxes.to_numpy(boxes.pairwise_iou(best, truth)))
    assert (iou > 0.5).mean() >= 0.75, (iou, found["classes"][:, 0])


@pytest.mark.slow
def test_automated_focal_and_giou_train_too():
    keras.utils.set_random_seed(2)
    model = build_model("detector", IMAGE, 2, stage="one", blocks=SMALL_BLOCKS, levels=2, fpn_filters=8,
                        head_depth=1, anchor_sizes=[8, 16], anchor_scales=[1.0], aspect_ratios=[1.0],
                        loss={"classification": "automated_focal", "box": "giou"})
    losses = _train(model, _batch(), 8)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def _two_stage():
    return build_model("detector", IMAGE, 2, stage="two", blocks=SMALL_BLOCKS, levels=2, fpn_filters=8,
                        anchor_sizes=[8, 16], anchor_scales=[1.0, 1.5], aspect_ratios=[1.0], rpn_samples=32,
                        proposals_train=16, proposals_test=8, roi_size=4, roi_samples=8, head_units=16)


def test_two_stage_forward_loss_and_gradients():
    keras.utils.set_random_seed(3)
    model = _two_stage()
    assert isinstance(model, detector.TwoStageDetector)
    images, targets = _batch()
    outputs = model(images)
    assert outputs["proposals"].shape == (4, 8, 4)
    assert outputs["class_logits"].shape == (4, 8, 3)  # background + 2 classes
    with tf.GradientTape() as tape:
        parts = model.compute_loss((images, targets))
    assert set(parts) == {"loss", "rpn_objectness", "rpn_box", "roi_class", "roi_box", "roi_positives"}
    # The ground-truth boxes join the candidates, so every image has a positive region.
    assert float(parts["roi_positives"]) >= 4
    np.testing.assert_allclose(float(parts["roi_class"]), np.log(3.0), rtol=0.05)  # near-uniform logits at start
    grads = tape.gradient(parts["loss"], model.trainable_variables)
    assert all(g is not None for g in grads)


@pytest.mark.slow
def test_two_stage_training_reduces_loss():
    keras.utils.set_random_seed(3)
    model = _two_stage()
    images, targets = _batch()
    losses = _train(model, (images, targets), 10)
    assert losses[-1] < losses[0]
    found = model.detect(images, max_detections=4)
    assert found["boxes"].shape == (4, 4, 4) and found["classes"].dtype == tf.int32


def test_sliding_window_boxes_loss_and_detect():
    model = build_model("detector", IMAGE, 2, stage="sliding_window", window=16, filters=[8], hidden=16,
                        scales=[1.0, 0.5])
    assert isinstance(model, detector.SlidingWindowDetector)
    assert model.stride == 2
    boxes = model.window_boxes(32, 32).numpy() * 32
    assert boxes.shape == (9 * 9, 4)
    np.testing.assert_allclose(boxes[[0, 1, 9]], [[0, 0, 16, 16], [2, 0, 18, 16], [0, 2, 16, 18]], atol=1e-5)
    outputs = model(np.zeros((2, *IMAGE), np.float32))
    assert outputs["class_logits"].shape == (2, 81 + 1, 3)
    np.testing.assert_allclose(outputs["boxes"][0, -1].numpy(), [0, 0, 1, 1])  # scale 0.5: one window, whole image
    keras.utils.set_random_seed(4)
    losses = _train(model, _batch(), 5, compiled=False)
    assert losses[-1] < losses[0]
    assert model.detect(np.zeros((1, *IMAGE), np.float32), max_detections=3)["boxes"].shape == (1, 3, 4)
    with pytest.raises(ValueError, match="window=16 with 2 conv/pool blocks leaves 7 pixels"):
        build_model("detector", IMAGE, 2, stage="sliding_window", window=16, filters=[8, 8])  # 16 -> 14 -> 7: odd


@pytest.mark.parametrize("stage,params", [
    ("one", {"blocks": SMALL_BLOCKS, "fpn_filters": 8, "head_depth": 1, "anchor_sizes": [8, 16]}),
    ("two", {"blocks": SMALL_BLOCKS, "fpn_filters": 8, "anchor_sizes": [8, 16], "roi_size": 3, "head_units": 8}),
    ("sliding_window", {"window": 16, "filters": [8], "hidden": 8, "scales": [1.0]}),
])
def test_save_and_load_round_trip(stage, params, tmp_path):
    model = build_model("detector", IMAGE, 2, stage=stage, **params)
    images = np.random.default_rng(0).uniform(size=(1, *IMAGE)).astype(np.float32)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    before, after = model(images), loaded(images)
    np.testing.assert_allclose(after["class_logits"].numpy(), before["class_logits"].numpy(), atol=1e-6)


@pytest.mark.parametrize("name", ["detection", "detection_two_stage", "detection_sliding_window"])
def test_detection_configs_load_and_build(name):
    from pathlib import Path

    from pipeline.config import load_config

    config = load_config(Path(__file__).resolve().parents[3] / "configs" / f"{name}.json")
    assert config.ingest.task == "detection" and config.model.name == "detector"
    source = config.ingest.source
    model = build_model(config.model.name, (source.image_size, source.image_size, 3), source.num_classes,
                        **config.model.params)
    found = model.detect(np.zeros((1, source.image_size, source.image_size, 3), np.float32),
                         max_detections=config.export.max_detections)
    assert found["boxes"].shape == (1, config.export.max_detections, 4)


def test_one_stage_config_loss_is_the_registered_detection_loss():
    """configs/detection.json trains through loss(y_true, model(x)), the plain Keras-loss contract."""
    from pathlib import Path

    from models import get_loss
    from pipeline.config import load_config

    config = load_config(Path(__file__).resolve().parents[3] / "configs" / "detection.json")
    loss = get_loss(config.train.loss, **config.train.loss_params)
    model = build_model("detector", IMAGE, 2, stage="one", blocks=SMALL_BLOCKS, fpn_filters=8, head_depth=1,
                        anchor_sizes=[8, 16], loss=config.train.loss_params)
    images, targets = _batch()
    np.testing.assert_allclose(float(loss(targets, model(images))),
                               float(model.compute_loss((images, targets))["loss"]), rtol=1e-6)
