"""Semantic segmentation: one class per pixel; the model returns logits [H, W, K] at the input size.

Classes are schema.json's `mask_class_names` when present, else `class_names` (for segmentation
they include the background as class 0). Mask pixels equal to the schema's `ignore_value` (e.g.
255 from a mask_folder source; the synthetic source has none) count in neither loss nor metrics.

Training logs pixel accuracy per step (per example, averaged over examples). Evaluation counts
every test pixel into one confusion matrix (models/segmentation/metrics.py) and reports mean IoU,
per-class IoU, pixel accuracy and the per-pixel cross-entropy; predictions.jsonl holds each
example's own IoU. The report shows a per-class IoU table, the pixel confusion matrix and a grid
of image / true mask / predicted mask overlays (components/reports/mask_pictures.py).

SavedModel signatures:
  serving_default(image_bytes: string [batch])  encoded images of one size (PNG/JPEG/GIF/BMP),
        resized to the training size for the model; the logits are resized back to the images' own
        size, so class_id [batch, h, w] int32 and probabilities [batch, h, w, K] float32 are at
        the input resolution
  serving_images(images: float32 [batch, H, W, C] in [0, 1], the training size) -> the same outputs
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from components.tasks.base import PREDICTIONS_FILE, Evaluation, ExportMismatch, TaskAdapter
from components.tasks.classification import image_extension

BYTES_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "serving_images"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
METRICS = ("mean_iou", "pixel_accuracy", "loss")
PIXEL_LOSSES = ("pixel_crossentropy", "pixel_focal")
TIE_MARGIN = 1e-4
"""Where the Keras model's two best classes are closer than this in probability, a served mask may
pick the other one without the export being wrong (float rounding differs between graphs)."""


def mask_class_names(schema: dict) -> list[str]:
    return list(schema.get("mask_class_names") or schema["class_names"])


def ignore_value(schema: dict) -> Optional[int]:
    value = schema.get("ignore_value")
    return None if value is None else int(value)


def read_masks(examples_dir: str | Path, split: str) -> dict:
    """{"id", "source", "encoded" (image bytes as stored), "mask" (uint8 [H, W] class ids)} of one split."""
    import tensorflow as tf

    from components import examples as ex

    rows = {"id": [], "source": [], "encoded": [], "mask": []}
    for path in ex.shard_files(examples_dir, split):
        for serialized in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            feature = tf.train.Example.FromString(serialized).features.feature
            example_id = feature[ex.ID].bytes_list.value[0].decode()
            if ex.MASK not in feature or not feature[ex.MASK].bytes_list.value:
                raise ValueError(f"example {example_id!r} in {path} has no {ex.MASK} (a segmentation mask)")
            rows["id"].append(example_id)
            rows["source"].append(feature[ex.SOURCE].bytes_list.value[0].decode() if ex.SOURCE in feature else "")
            rows["encoded"].append(feature[ex.IMAGE].bytes_list.value[0])
            rows["mask"].append(ex.decode_mask(feature[ex.MASK].bytes_list.value[0]))
    return rows


def check_masks(test: dict, num_classes: int, ignore: Optional[int], image_size: Sequence[int], where: str) -> None:
    expected = tuple(int(v) for v in image_size[:2])
    for example_id, mask in zip(test["id"], test["mask"]):
        if mask.shape != expected:
            raise ValueError(f"test mask of {example_id!r} is {mask.shape[0]}x{mask.shape[1]}, expected "
                             f"{expected[0]}x{expected[1]} like schema image_size ({where})")
        bad = [int(v) for v in np.unique(mask) if v >= num_classes and v != ignore]
        if bad:
            raise ValueError(f"test mask of {example_id!r} holds ids {bad} outside 0..{num_classes - 1}"
                             f"{'' if ignore is None else f' and the ignore value {ignore}'} ({where})")


def pixel_probabilities(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """softmax over the last axis of model(images), in batches: float32 [N, H, W, K]."""
    import tensorflow as tf

    parts = [tf.nn.softmax(tf.cast(model(images[i:i + batch_size], training=False), tf.float32), axis=-1).numpy()
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)


def pixel_crossentropy(masks: np.ndarray, probabilities: np.ndarray, ignore: Optional[int]) -> float:
    """Mean -log p(true class) over the valid pixels of the whole split (the loss without weights)."""
    masks = np.asarray(masks).astype(np.int64)
    valid = (masks >= 0) & (masks < probabilities.shape[-1])
    if ignore is not None:
        valid &= masks != ignore
    if not valid.any():
        return 0.0
    true = np.take_along_axis(probabilities, np.where(valid, masks, 0)[..., None], axis=-1)[..., 0]
    return float(-np.log(np.clip(true[valid], 1e-7, 1.0)).mean())


def example_scores(mask: np.ndarray, predicted: np.ndarray, num_classes: int, ignore: Optional[int]) -> dict:
    """One example's mean IoU (over the classes in its truth or prediction) and pixel accuracy."""
    from models.segmentation.metrics import segmentation_scores

    scores = segmentation_scores(mask, predicted, num_classes, ignore)
    return {"iou": scores["mean_iou"], "pixel_accuracy": scores["pixel_accuracy"]}


def segmentation_metrics(masks: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str],
                         ignore: Optional[int]) -> dict:
    """Scores of the whole split from one confusion matrix, JSON-ready (undefined IoU -> null)."""
    from models.segmentation.metrics import segmentation_scores

    num_classes = len(class_names)
    scores = segmentation_scores(np.asarray(masks), probabilities.argmax(-1), num_classes, ignore)
    confusion = np.asarray(scores["confusion_matrix"])
    per_class = {name: {"iou": None if np.isnan(iou) else float(iou), "true_pixels": int(confusion[k].sum()),
                        "predicted_pixels": int(confusion[:, k].sum())}
                 for k, (name, iou) in enumerate(zip(class_names, scores["per_class_iou"]))}
    return {"mean_iou": scores["mean_iou"], "pixel_accuracy": scores["pixel_accuracy"],
            "loss": pixel_crossentropy(masks, probabilities, ignore), "num_examples": int(len(masks)),
            "class_names": list(class_names), "ignore_value": ignore, "per_class": per_class,
            "confusion_matrix": scores["confusion_matrix"]}


def load_served(saved_model: Path):
    from components import serving

    return serving.ServedModel(saved_model, signatures=(BYTES_SIGNATURE, IMAGES_SIGNATURE))


def served_masks(served, encoded: Sequence[bytes], batch_size: int = 32) -> dict:
    """serving_default of a loaded version on encoded images of one size: {"class_id", "probabilities"}."""
    values = np.empty(len(encoded), dtype=object)
    values[:] = [bytes(e) for e in encoded]
    return served.run(BYTES_SIGNATURE, batch_size, **{BYTES_INPUT: values})


class SegmentationTask(TaskAdapter):
    name = "segmentation"
    metric_names = ("pixel_accuracy",)
    signatures = (BYTES_SIGNATURE, IMAGES_SIGNATURE)

    # schema --------------------------------------------------------------------------------------
    def num_classes(self, schema: dict) -> int:
        return len(mask_class_names(schema))

    # training ------------------------------------------------------------------------------------
    def build_loss(self, train_section):
        if train_section.loss not in PIXEL_LOSSES:
            raise ValueError(f"train.loss: segmentation needs a per-pixel loss, one of {list(PIXEL_LOSSES)}; "
                             f"got {train_section.loss!r}")
        return super().build_loss(train_section)

    def replica_loss(self, model, loss, x, y, training: bool, num_replicas: int):
        """The default, with every mask id outside 0..K-1 handed to the loss as its own `ignore_value`.

        Ingest admits no id outside the classes but the schema's ignore value, so such a pixel is
        always one to ignore; the loss (train.loss_params.ignore_value, 255 by default) and the
        source need not name the same number. A loss without an ignore value gets the mask as is.
        """
        import tensorflow as tf

        from components.tasks.base import keras_replica_loss

        ignore = getattr(loss, "ignore_value", None)
        num_classes = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
        if ignore is not None and num_classes is not None:
            labels = tf.cast(y, tf.int32)
            y = tf.where((labels >= 0) & (labels < num_classes), labels, tf.fill(tf.shape(labels), int(ignore)))
        return keras_replica_loss(model, loss, x, y, training, num_replicas)

    def metric_sums(self, y, outputs) -> dict:
        """Sum over examples of each example's share of correct pixels among its valid ones (ids
        0..K-1; the ignore value lies outside); an example without valid pixels counts 0."""
        import tensorflow as tf

        labels = tf.cast(y, tf.int32)
        if labels.shape.rank == outputs.shape.rank:
            labels = labels[..., 0]
        valid = (labels >= 0) & (labels < tf.shape(outputs)[-1])
        correct = tf.equal(tf.argmax(outputs, axis=-1, output_type=tf.int32), labels) & valid
        per_example = tf.math.divide_no_nan(tf.reduce_sum(tf.cast(correct, tf.float32), axis=[1, 2]),
                                            tf.reduce_sum(tf.cast(valid, tf.float32), axis=[1, 2]))
        return {"pixel_accuracy": tf.reduce_sum(per_example)}

    def sample_grid_png(self, model, inputs, targets, class_names):
        from components.reports.sample_grids import mask_grid_png

        inputs = np.asarray(inputs)
        predicted = pixel_probabilities(model, inputs).argmax(-1)
        return mask_grid_png(inputs, np.asarray(targets), predicted, class_names)

    # evaluation ----------------------------------------------------------------------------------
    def known_metrics(self, evaluate_section) -> list:
        return list(METRICS)

    def read_test(self, examples_dir, schema) -> dict:
        test = read_masks(examples_dir, "test")
        check_masks(test, self.num_classes(schema), ignore_value(schema), schema["image_size"], str(examples_dir))
        return test

    def evaluate(self, model, test, schema, evaluate_section, out_dir) -> Evaluation:
        from components.serving import decode_images

        class_names, ignore = mask_class_names(schema), ignore_value(schema)
        images = decode_images(test["encoded"], schema["image_size"])
        masks = np.stack(test["mask"])
        probabilities = pixel_probabilities(model, images)
        predicted = probabilities.argmax(-1)
        metrics = segmentation_metrics(masks, probabilities, class_names, ignore)
        per_example = [example_scores(masks[i], predicted[i], len(class_names), ignore) for i in range(len(masks))]
        self.write_predictions(Path(out_dir) / PREDICTIONS_FILE, test, masks, predicted, per_example, class_names)
        count = min(evaluate_section.num_sample_images, len(masks))
        samples = {"images": images[:count], "true": masks[:count], "predicted": predicted[:count],
                   "titles": [f"{test['id'][i]}\nIoU {per_example[i]['iou']:.2f}" for i in range(count)]}
        ious = ", ".join(f"{name} {'n/a' if v['iou'] is None else format(v['iou'], '.3f')}"
                         for name, v in metrics["per_class"].items())
        summary = (f"segmentation: test split ({metrics['num_examples']} images): mean IoU {metrics['mean_iou']:.4f}, "
                   f"pixel accuracy {metrics['pixel_accuracy']:.4f}, loss {metrics['loss']:.4f}; IoU per class: {ious}")
        return Evaluation(metrics=metrics, sections=self.report_sections(metrics, samples), summary=summary)

    @staticmethod
    def write_predictions(path: Path, test: dict, masks: np.ndarray, predicted: np.ndarray, per_example: list,
                          class_names: Sequence[str]) -> None:
        with open(path, "w") as handle:
            for i, example_id in enumerate(test["id"]):
                handle.write(json.dumps({
                    "id": example_id, "source": test["source"][i],
                    "iou": per_example[i]["iou"], "pixel_accuracy": per_example[i]["pixel_accuracy"],
                    "true_classes": [class_names[k] for k in np.unique(masks[i]) if k < len(class_names)],
                    "predicted_classes": [class_names[k] for k in np.unique(predicted[i])],
                }) + "\n")

    def report_sections(self, metrics: dict, samples: dict) -> list:
        from components.reports.mask_pictures import legend_html
        from components.reports.html import confusion_matrix_png, image_html, metrics_sections, table_html
        from components.reports.sample_grids import mask_grid_png

        class_names = metrics["class_names"]
        rows = [(name, "n/a" if v["iou"] is None else v["iou"], v["true_pixels"], v["predicted_pixels"])
                for name, v in metrics["per_class"].items()]
        sections = metrics_sections(metrics) + [
            ("Per-class IoU", table_html(["class", "IoU", "true pixels", "predicted pixels"], rows)),
            ("Pixel confusion matrix", image_html(confusion_matrix_png(metrics["confusion_matrix"], class_names),
                                                  "pixel confusion matrix")),
        ]
        if len(samples.get("images", [])):
            grid = mask_grid_png(samples["images"], samples["true"], samples["predicted"], class_names,
                                 samples.get("titles"))
            sections.append(("Sample predictions", legend_html(class_names) + image_html(grid, "mask overlays")))
        return sections

    def evaluate_served(self, saved_model, test, schema, evaluate_section) -> dict:
        probabilities = served_masks(load_served(saved_model), test["encoded"])["probabilities"]
        return segmentation_metrics(np.stack(test["mask"]), probabilities, mask_class_names(schema),
                                    ignore_value(schema))

    def write_probe(self, test, probe_dir, count) -> None:
        probe_dir.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(test["encoded"][:count]):
            (probe_dir / f"{i:03d}.{image_extension(data)}").write_bytes(data)

    # export and predict --------------------------------------------------------------------------
    def export_archive(self, model, info):
        """serving_default on encoded images (outputs at their own size); serving_images on floats."""
        import tensorflow as tf

        from components import serving
        from components.examples import decode_image_tensor

        height, width, channels = (int(v) for v in info["input_shape"])

        def postprocess(logits, size):
            logits = tf.cast(logits, tf.float32)
            logits = tf.cond(tf.reduce_all(tf.equal(tf.shape(logits)[1:3], size)), lambda: logits,
                             lambda: tf.image.resize(logits, size, method="bilinear"))
            probabilities = tf.nn.softmax(logits, axis=-1)
            return {"probabilities": probabilities,
                    "class_id": tf.argmax(probabilities, axis=-1, output_type=tf.int32)}

        def serve_images(images):
            return postprocess(model(images, training=False), tf.constant([height, width]))

        def decode(data):  # decode_image_tensor's own steps, keeping the size before the resize
            image = decode_image_tensor(data, channels)
            return tf.image.resize(image, (height, width)), tf.shape(image)[:2]

        def serve_bytes(image_bytes):
            images, sizes = tf.map_fn(decode, image_bytes, fn_output_signature=(
                tf.TensorSpec([height, width, channels], tf.float32), tf.TensorSpec([2], tf.int32)))
            size = sizes[0]
            with tf.control_dependencies([tf.debugging.assert_equal(
                    sizes, tf.broadcast_to(size, tf.shape(sizes)),
                    message="serving_default: expected every image of a request to have the same size")]):
                logits = model(images, training=False)
            return postprocess(logits, size)

        return serving.image_archive(model, info["input_shape"], serve_images, serve_bytes)

    def check_export(self, saved_model, model, probe_dir, info, scratch) -> dict:
        """Both signatures in a fresh process on the probe images: masks must equal the Keras model's
        argmax (except where its two best classes tie within TIE_MARGIN); returns the max |difference|
        of probabilities per signature."""
        from components.serving import decode_images
        from components.serving.probe import run_in_fresh_process

        encoded = [p.read_bytes() for p in sorted(Path(probe_dir).glob("*")) if p.is_file()]
        if not encoded:
            raise ExportMismatch(f"{probe_dir} holds no test images to check the export with")
        images = decode_images(encoded, info["input_shape"])
        expected = pixel_probabilities(model, images)
        values = np.empty(len(encoded), dtype=object)
        values[:] = encoded
        outputs = run_in_fresh_process(saved_model, {BYTES_SIGNATURE: {BYTES_INPUT: values},
                                                     IMAGES_SIGNATURE: {IMAGES_INPUT: images}}, scratch)
        top2 = np.sort(expected, axis=-1)[..., -2:]
        decided = (top2[..., 1] - top2[..., 0]) > TIE_MARGIN
        for signature in self.signatures:
            served = outputs[signature]
            if served["class_id"].shape != expected.shape[:-1]:
                raise ExportMismatch(f"{signature} class_id has shape {served['class_id'].shape}, expected "
                                     f"{expected.shape[:-1]} (one class per pixel of each probe image)")
            wrong = (served["class_id"] != expected.argmax(-1)) & decided
            if wrong.any():
                raise ExportMismatch(f"{signature} class_id differs from the Keras model's argmax at {int(wrong.sum())} "
                                     f"of {wrong.size} pixels of the probe images")
        return {signature: float(np.abs(outputs[signature]["probabilities"] - expected).max())
                for signature in self.signatures}

    def predict_lines(self, saved_model, paths) -> list:
        """Per image (any size): `<path>\t<h>x<w>\t<class> <share of pixels>, ...` for the classes
        present in the predicted mask, largest first."""
        served = load_served(saved_model)
        names = served.info.get("class_names") or []
        lines = []
        for path in paths:
            class_id = served_masks(served, [Path(path).read_bytes()])["class_id"][0]
            counts = np.bincount(class_id.reshape(-1), minlength=len(names))
            shares = ", ".join(f"{names[k] if k < len(names) else k} {counts[k] / class_id.size:.3f}"
                               for k in np.argsort(-counts, kind="stable") if counts[k])
            lines.append(f"{path}\t{class_id.shape[0]}x{class_id.shape[1]}\t{shares}")
        return lines


TASK = SegmentationTask()
