"""Segmentation adapter: classes and ignore value from the schema, pixel accuracy in the loop, split-wide
IoU by hand, evaluate's predictions and report, the SavedModel's masks in a fresh process, predict."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

CLASS_NAMES = ["background", "red", "green"]
SIZE = 16


def tiny_record(index: int) -> dict:
    """A red square somewhere in the top-left and a green one at the bottom right, on dark noise."""
    rng = np.random.default_rng(index)
    image = rng.integers(0, 60, (SIZE, SIZE, 3))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    y, x = (int(v) for v in rng.integers(0, 8, 2))
    image[y:y + 6, x:x + 6, 0] += 150
    mask[y:y + 6, x:x + 6] = 1
    image[10:14, 10:14, 0] = rng.integers(0, 60, (4, 4))
    image[10:14, 10:14, 1] += 150
    mask[10:14, 10:14] = 2
    return {"id": f"test-{index}", "source": f"tiny:{index}", "image": image.astype(np.uint8), "mask": mask}


def write_examples(directory, count: int = 6, records=None, schema_extra=None):
    import tensorflow as tf

    from components.examples import SCHEMA_FILE, encode_example

    (directory / "test").mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(directory / "test" / "data-00000-of-00001.tfrecord.gz"), options="GZIP") as writer:
        for record in records or [tiny_record(i) for i in range(count)]:
            writer.write(encode_example(record))
    schema = {"task": "segmentation", "class_names": CLASS_NAMES, "image_size": [SIZE, SIZE, 3],
              **(schema_extra or {})}
    (directory / SCHEMA_FILE).write_text(json.dumps(schema))
    return schema


def oracle_model(background_only: bool = False):
    """A 1x1 convolution that reads the class off the colour: red > 0.5 -> 1, green > 0.5 -> 2."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1, name="logits")(inputs))
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    if not background_only:
        kernel[0, 0, 0, 1] = kernel[0, 0, 1, 2] = 20.0
    model.get_layer("logits").set_weights([kernel, np.array([0.0, -10.0, -10.0], np.float32)])
    return model


def evaluate_section():
    return SimpleNamespace(num_sample_images=3, top_k=2)


@pytest.fixture(scope="module")
def task():
    from components.tasks import get_task

    return get_task("segmentation")


# ----------------------------------------------------------------------------------------------
# schema and training
# ----------------------------------------------------------------------------------------------
def test_classes_include_the_background_and_prefer_mask_class_names(task):
    from components.tasks.segmentation import SegmentationTask, ignore_value

    assert isinstance(task, SegmentationTask) and task.name == "segmentation"
    schema = {"class_names": CLASS_NAMES, "image_size": [SIZE, SIZE, 3]}
    assert task.num_classes(schema) == 3 and task.input_shape(schema) == (SIZE, SIZE, 3)
    assert task.num_classes({**schema, "mask_class_names": ["bg", "a", "b", "c"]}) == 4
    assert ignore_value(schema) is None and ignore_value({**schema, "ignore_value": 255}) == 255
    assert task.known_metrics(None) == ["mean_iou", "pixel_accuracy", "loss"]


def test_metric_sums_average_each_examples_pixel_accuracy_without_ignored_pixels(task):
    import tensorflow as tf

    # example 0: 4 pixels, 3 right; example 1: one pixel ignored (255), 2 of the other 3 right
    y = tf.constant([[[0, 1], [1, 2]], [[255, 0], [2, 2]]], tf.int32)
    predicted = np.array([[[0, 1], [2, 2]], [[1, 0], [2, 0]]])
    logits = tf.one_hot(predicted, 3) * 5.0
    sums = task.metric_sums(y, logits)
    assert sums["pixel_accuracy"].numpy() == pytest.approx(3 / 4 + 2 / 3)


def test_segmentation_metrics_by_hand():
    from components.tasks.segmentation import segmentation_metrics

    masks = np.array([[[0, 0, 1, 1], [0, 2, 2, 255]]])
    predicted = np.array([[[0, 1, 1, 1], [0, 2, 0, 2]]])
    probabilities = np.where(np.eye(3)[predicted] > 0, 0.8, 0.1).astype(np.float32)
    metrics = segmentation_metrics(masks, probabilities, CLASS_NAMES, ignore=255)
    # background: TP 2, FP 1 (the 2 predicted as 0), FN 1 -> 2/4; red: TP 2, FP 1 -> 2/3; green: TP 1, FN 1 -> 1/2
    assert metrics["per_class"]["background"]["iou"] == pytest.approx(0.5)
    assert metrics["per_class"]["red"]["iou"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["green"]["iou"] == pytest.approx(0.5)
    assert metrics["mean_iou"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(5 / 7)            # the 255 pixel is not counted
    assert metrics["loss"] == pytest.approx((5 * -np.log(0.8) + 2 * -np.log(0.1)) / 7, rel=1e-5)
    assert metrics["per_class"]["green"]["true_pixels"] == 2 and metrics["per_class"]["red"]["predicted_pixels"] == 3
    assert metrics["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_a_class_absent_from_truth_and_prediction_has_no_iou_and_is_left_out_of_the_mean():
    from components.tasks.segmentation import segmentation_metrics

    masks = np.array([[[0, 1], [1, 0]]])
    probabilities = np.eye(3, dtype=np.float32)[masks]
    metrics = segmentation_metrics(masks, probabilities, CLASS_NAMES, ignore=None)
    assert metrics["per_class"]["green"]["iou"] is None
    assert metrics["mean_iou"] == 1.0
    json.dumps(metrics, allow_nan=False)   # metrics.json stays strict JSON


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------
def test_evaluate_counts_every_test_pixel_and_writes_one_line_per_example(task, tmp_path):
    schema = write_examples(tmp_path / "examples")
    test = task.read_test(tmp_path / "examples", schema)
    assert len(test["id"]) == 6 and test["mask"][0].shape == (SIZE, SIZE)

    perfect = task.evaluate(oracle_model(), test, schema, evaluate_section(), tmp_path)
    assert perfect.metrics["mean_iou"] == 1.0 and perfect.metrics["pixel_accuracy"] == 1.0
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == test["id"]
    assert all(line["iou"] == 1.0 and line["predicted_classes"] == CLASS_NAMES for line in lines)
    headings = [heading for heading, _ in perfect.sections]
    assert headings == ["Test metrics", "Per-class IoU", "Pixel confusion matrix", "Sample predictions"]
    assert perfect.sections[3][1].count("<img") == 1 and "mean IoU 1.0000" in perfect.summary

    # background everywhere: IoU(background) = background pixels / all pixels, the others 0
    blind = task.evaluate(oracle_model(background_only=True), test, schema, evaluate_section(), tmp_path)
    masks = np.stack(test["mask"])
    share = float((masks == 0).mean())
    assert blind.metrics["per_class"]["background"]["iou"] == pytest.approx(share)
    assert blind.metrics["mean_iou"] == pytest.approx(share / 3)
    assert blind.metrics["pixel_accuracy"] == pytest.approx(share)


def test_read_test_rejects_masks_with_ids_outside_the_classes(task, tmp_path):
    record = tiny_record(0)
    record["mask"][0, 0] = 7
    schema = write_examples(tmp_path, records=[record, tiny_record(1)])
    with pytest.raises(ValueError, match=r"'test-0' holds ids \[7\] outside 0..2"):
        task.read_test(tmp_path, schema)
    record["mask"][0, 0] = 255    # the ignore value is allowed when the schema names it
    schema = write_examples(tmp_path, records=[record], schema_extra={"ignore_value": 255})
    test = task.read_test(tmp_path, schema)
    result = task.evaluate(oracle_model(), test, schema, evaluate_section(), tmp_path)
    assert result.metrics["pixel_accuracy"] == 1.0 and result.metrics["ignore_value"] == 255


def test_sample_grid_is_a_png(task):
    record = tiny_record(3)
    png = task.sample_grid_png(oracle_model(), record["image"][None] / 255.0, record["mask"][None], CLASS_NAMES)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_overlay_colours_classes_and_leaves_the_background():
    from components.reports.mask_pictures import IGNORED_COLOUR, class_colour, overlay

    image = np.full((2, 2, 3), 0.5, np.float32)
    mask = np.array([[0, 1], [2, 255]])
    out = overlay(image, mask, num_classes=3, alpha=1.0)
    np.testing.assert_allclose(out[0, 0], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(out[0, 1], class_colour(1))
    np.testing.assert_allclose(out[1, 0], class_colour(2))
    np.testing.assert_allclose(out[1, 1], IGNORED_COLOUR)
    assert not np.allclose(class_colour(1), class_colour(2))


# ----------------------------------------------------------------------------------------------
# export, served evaluation, predict
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory, task):
    from components import serving

    base = tmp_path_factory.mktemp("segmentation_export")
    schema = write_examples(base / "examples")
    test = task.read_test(base / "examples", schema)
    info = {"task": "segmentation", "class_names": CLASS_NAMES, "input_shape": [SIZE, SIZE, 3]}
    model = oracle_model()
    serving.write_archive(task.export_archive(model, info), base / "model" / "1", info)
    task.write_probe(test, base / "probe", 4)
    return SimpleNamespace(base=base, path=base / "model" / "1", schema=schema, test=test, info=info, model=model)


def test_fresh_process_masks_equal_the_keras_argmax(task, exported):
    differences = task.check_export(exported.path, exported.model, exported.base / "probe", exported.info,
                                    exported.base / "scratch")
    assert set(differences) == {"serving_default", "serving_images"}
    assert max(differences.values()) < 1e-5


def test_check_export_names_pixels_that_disagree(task, exported, monkeypatch):
    from components import serving
    from components.serving import probe as serving_probe
    from components.tasks.base import ExportMismatch

    def in_this_process(saved_model, calls, scratch, timeout=600):    # the same outputs, without the new process
        served = serving.ServedModel(saved_model, signatures=tuple(calls))
        return {signature: served.run(signature, **inputs) for signature, inputs in calls.items()}

    monkeypatch.setattr(serving_probe, "run_in_fresh_process", in_this_process)
    with pytest.raises(ExportMismatch, match=r"serving_default class_id differs .* at \d+ of 1024 pixels"):
        task.check_export(exported.path, oracle_model(background_only=True), exported.base / "probe",
                          exported.info, exported.base / "scratch")


def test_served_masks_come_back_at_the_images_own_size(task, exported):
    from components.examples import encode_image
    from components.tasks.segmentation import load_served, served_masks

    served = load_served(exported.path)
    record = tiny_record(2)
    outputs = served_masks(served, [encode_image(record["image"])])
    assert outputs["class_id"].shape == (1, SIZE, SIZE) and outputs["probabilities"].shape == (1, SIZE, SIZE, 3)
    np.testing.assert_array_equal(outputs["class_id"][0], record["mask"])
    doubled = np.kron(record["image"], np.ones((2, 2, 1), np.uint8))          # 32x32: resized in, resized back
    outputs = served_masks(served, [encode_image(doubled)])
    assert outputs["class_id"].shape == (1, 2 * SIZE, 2 * SIZE)
    expected = np.kron(record["mask"], np.ones((2, 2), np.uint8))
    assert (outputs["class_id"][0] == expected).mean() > 0.97                 # only edge pixels may differ
    metrics = task.evaluate_served(exported.path, exported.test, exported.schema, evaluate_section())
    assert metrics["mean_iou"] == 1.0


def test_predict_lines_give_the_size_and_the_share_of_each_class(task, exported, tmp_path):
    from components.examples import encode_image

    record = tiny_record(4)
    path = tmp_path / "one.png"
    path.write_bytes(encode_image(record["image"]))
    [line] = task.predict_lines(exported.path, [path])
    name, size, shares = line.split("\t")
    assert name == str(path) and size == f"{SIZE}x{SIZE}"
    counts = np.bincount(record["mask"].reshape(-1), minlength=3) / SIZE ** 2
    expected = ", ".join(f"{CLASS_NAMES[k]} {counts[k]:.3f}" for k in np.argsort(-counts, kind="stable"))
    assert shares == expected


def test_ids_outside_the_classes_reach_the_loss_as_its_ignore_value(task):
    """A mask_folder may ignore 254 while the loss ignores 255: the pixel is still left out."""
    import keras
    import tensorflow as tf

    from models import get_loss

    model = oracle_model()
    record = tiny_record(1)
    x = tf.constant(record["image"][None] / 255.0, tf.float32)
    mask = record["mask"][None].astype(np.int32)
    loss = get_loss("pixel_crossentropy", ignore_value=255)
    _, clean = task.replica_loss(model, loss, x, tf.constant(mask), False, 1)
    marked = mask.copy()
    marked[0, :3, :3] = 254                                   # 9 pixels the source ignores
    _, ignored = task.replica_loss(model, loss, x, tf.constant(marked), False, 1)
    logits = model(x).numpy()[0]
    per_pixel = -np.take_along_axis(keras.ops.log_softmax(logits).numpy(), mask[0][..., None], -1)[..., 0]
    keep = np.ones_like(per_pixel, bool)
    keep[:3, :3] = False
    assert float(clean) == pytest.approx(per_pixel.mean(), rel=1e-5)
    assert float(ignored) == pytest.approx(per_pixel[keep].mean(), rel=1e-5)


def test_a_loss_that_is_not_per_pixel_is_refused(task):
    with pytest.raises(ValueError, match=r"segmentation needs a per-pixel loss, one of .*'pixel_focal'.*got 'mse'"):
        task.build_loss(SimpleNamespace(loss="mse", loss_params={}))
    assert task.build_loss(SimpleNamespace(loss="pixel_focal", loss_params={"gamma": 1.0})).gamma == 1.0


# ----------------------------------------------------------------------------------------------
# the stages
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_segmentation_trains_evaluates_exports_and_predicts(tmp_path):
    import tensorflow as tf

    from components.evaluate.stage import STAGE as EVALUATE
    from components.examples import SCHEMA_FILE, encode_example, encode_image
    from components.export.stage import STAGE as EXPORT
    from components.training.model_artifact import load_keras_model
    from components.train.stage import STAGE as TRAIN
    from models.segmentation.metrics import segmentation_scores
    from pipeline.config import load_config
    from tests.components import classification_fixtures as fx

    examples = tmp_path / "examples"
    counts = {"train": 24, "eval": 4, "test": 6}
    for split, count in counts.items():
        (examples / split).mkdir(parents=True)
        offset = {"train": 100, "eval": 200, "test": 0}[split]
        with tf.io.TFRecordWriter(str(examples / split / "data-00000-of-00001.tfrecord.gz"), options="GZIP") as writer:
            for i in range(count):
                writer.write(encode_example(tiny_record(offset + i)))
    (examples / SCHEMA_FILE).write_text(json.dumps({
        "task": "segmentation", "class_names": CLASS_NAMES, "image_size": [SIZE, SIZE, 3], "split_counts": counts,
        "features": [], "source": {"name": "tiny"}}))
    config = load_config(None, [
        f"pipeline.root={tmp_path / 'root'}", "ingest.task=segmentation", "model.name=fcn",
        'model.params={"blocks": [{"filters": 4}, {"filters": 8}], "upsampling": "max_unpool"}',
        "train.loss=pixel_crossentropy", "train.epochs=2", "train.batch_size=8", "train.num_sample_images=2",
        "train.optimizer.name=adam", "train.optimizer.learning_rate=0.01", "evaluate.metric=mean_iou",
        'evaluate.thresholds={"mean_iou": 0.0}', f"export.serving_root={tmp_path / 'serving'}", "export.model_name=masks"])

    train = fx.context(config, tmp_path, "train", {"examples": examples}, ["model"])
    TRAIN.executor(train)
    model_dir = train.outputs["model"]
    trial = json.loads((model_dir / "trial.json").read_text())
    assert trial["task"] == "segmentation" and trial["input_shape"] == [SIZE, SIZE, 3]
    history = json.loads((model_dir / "history.json").read_text())["history"]
    assert len(history["val_pixel_accuracy"]) == 2 and all(0 <= v <= 1 for v in history["pixel_accuracy"])

    evaluate = fx.context(config, tmp_path, "evaluate", {"examples": examples, "model": model_dir}, ["evaluation"])
    EVALUATE.executor(evaluate)
    out = evaluate.outputs["evaluation"]
    model = load_keras_model(model_dir)
    records = [tiny_record(i) for i in range(6)]
    images = np.stack([r["image"] for r in records]).astype(np.float32) / 255.0
    predicted = model.predict(images, verbose=0).argmax(-1)
    expected = segmentation_scores(np.stack([r["mask"] for r in records]), predicted, 3, None)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mean_iou"] == pytest.approx(expected["mean_iou"], abs=1e-6)
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 6 and len(list((out / "probe").iterdir())) == 6
    assert "Per-class IoU" in (out / "report.html").read_text()

    export = fx.context(config, tmp_path, "export", {"model": model_dir, "evaluation": out}, ["pushed"])
    EXPORT.executor(export)  # fresh process: masks equal the Keras argmax, probabilities within tolerance
    pushed = json.loads((export.outputs["pushed"] / "pushed.json").read_text())
    assert pushed["pushed"] is True and pushed["signatures"] == ["serving_default", "serving_images"]
    assert max(pushed["max_abs_difference"].values()) < 1e-4

    path = tmp_path / "zero.png"
    path.write_bytes(encode_image(records[0]["image"]))
    from components.tasks import get_task
    [line] = get_task("segmentation").predict_lines(Path(pushed["path"]), [path])
    counts = np.bincount(predicted[0].reshape(-1), minlength=3)
    assert line.split("\t")[1] == f"{SIZE}x{SIZE}"
    assert line.split("\t")[2].split(", ")[0].split(" ")[0] == CLASS_NAMES[int(counts.argmax())]
