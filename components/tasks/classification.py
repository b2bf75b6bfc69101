"""Image classification: one label per image, softmax over class logits.

Training logs accuracy per step; evaluation reports accuracy, top-k, loss, per-class
precision/recall/F1 and the confusion matrix (components/tasks/classification_metrics.py) and writes
one prediction line per test image; the SavedModel's serving_default takes encoded images
(components/serving/ builds the signatures) and returns probabilities, class_id, class_name.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from components.tasks.base import PREDICTIONS_FILE, Evaluation, ExportMismatch, TaskAdapter


def read_split(examples_dir: str | Path, split: str, *, video: bool = False) -> dict:
    """{"id", "source", "encoded", "label"} lists of one split: "encoded" holds the image bytes as
    stored, or with `video=True` the list of frame bytes of each clip."""
    import tensorflow as tf

    from components import examples as ex

    pixels_key, label_key = (ex.VIDEO, ex.VIDEO_LABEL) if video else (ex.IMAGE, ex.LABEL)
    rows = {"id": [], "source": [], "encoded": [], "label": []}
    for path in ex.shard_files(examples_dir, split):
        for serialized in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            feature = tf.train.Example.FromString(serialized).features.feature
            rows["id"].append(feature[ex.ID].bytes_list.value[0].decode())
            rows["source"].append(feature[ex.SOURCE].bytes_list.value[0].decode() if ex.SOURCE in feature else "")
            values = feature[pixels_key].bytes_list.value
            rows["encoded"].append(list(values) if video else values[0])
            labels = feature[label_key].int64_list.value if label_key in feature else []
            rows["label"].append(int(labels[0]) if labels else -1)
    return rows


def check_labels(labels: Sequence[int], class_names: Sequence[str], where: str) -> None:
    bad = sorted({label for label in labels if not 0 <= label < len(class_names)})
    if bad:
        raise ValueError(f"test labels {bad} are outside 0..{len(class_names) - 1} ({where})")


def softmax_batches(model, inputs: np.ndarray, batch_size: int = 128, compiled: bool = False) -> np.ndarray:
    """softmax(model(inputs)) in batches, float32 [N, K].

    `compiled`: through Keras's traced predict function (`predict_on_batch`), for a model asked
    again and again (the sample picture after every epoch: 10 ms a call instead of 54 eagerly, on
    the default CNN here, after a first call that traces it in ~0.25 s); eager calls otherwise,
    for a model asked once (the evaluation)."""
    import tensorflow as tf

    def logits(batch):
        return model.predict_on_batch(batch) if compiled else model(batch, training=False)

    outputs = [tf.nn.softmax(tf.cast(logits(inputs[i:i + batch_size]), tf.float32)).numpy()
               for i in range(0, len(inputs), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def write_predictions(path: Path, test: dict, probabilities: np.ndarray, class_names: Sequence[str]) -> None:
    predicted = probabilities.argmax(axis=1)
    with open(path, "w") as handle:
        for i, example_id in enumerate(test["id"]):
            handle.write(json.dumps({
                "id": example_id, "source": test["source"][i],
                "true": class_names[test["label"][i]], "true_id": test["label"][i],
                "predicted": class_names[predicted[i]], "predicted_id": int(predicted[i]),
                "probability": float(probabilities[i, predicted[i]]),
            }) + "\n")


def image_extension(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"\xff\xd8":
        return "jpg"
    return "img"


class ClassificationTask(TaskAdapter):
    name = "classification"
    metric_names = ("accuracy",)

    @property
    def signatures(self) -> tuple:
        from components import serving
        return (serving.BYTES_SIGNATURE, serving.IMAGES_SIGNATURE)

    # training ------------------------------------------------------------------------------------
    def metric_sums(self, y, outputs) -> dict:
        """The number of correct argmax predictions among this replica's one-hot targets."""
        import tensorflow as tf

        correct = tf.equal(tf.argmax(outputs, axis=-1), tf.argmax(y, axis=-1))
        return {"accuracy": tf.reduce_sum(tf.cast(correct, tf.float32))}

    def display_images(self, inputs: np.ndarray) -> np.ndarray:
        """What a report or TensorBoard grid shows of each input (an image as it is)."""
        return inputs

    def sample_grid_png(self, model, inputs, targets, class_names):
        from components.reports.sample_grids import classification_grid_png

        # Keras's predict function on a model of several replicas gathers across them, which would
        # wait for workers that draw no picture: compiled only on one replica.
        one_replica = getattr(getattr(model, "distribute_strategy", None), "num_replicas_in_sync", 1) == 1
        probabilities = softmax_batches(model, np.asarray(inputs), compiled=one_replica)
        return classification_grid_png(self.display_images(np.asarray(inputs)), np.asarray(targets).argmax(-1),
                                       probabilities.argmax(-1), probabilities.max(-1), class_names)

    # evaluation ----------------------------------------------------------------------------------
    def known_metrics(self, evaluate_section) -> list:
        from components.tasks.classification_metrics import metric_names

        return metric_names(evaluate_section.top_k)

    def read_test(self, examples_dir, schema) -> dict:
        test = read_split(examples_dir, "test")
        check_labels(test["label"], schema["class_names"], str(examples_dir))
        return test

    def probabilities(self, model, test: dict, schema: dict) -> np.ndarray:
        return softmax_batches(model, self.decode_inputs(test["encoded"], schema))

    def report_sections(self, metrics: dict, samples: dict) -> list:
        from components.reports.html import classification_sections

        return classification_sections(metrics, samples, self.display_images(samples["images"]))

    def evaluate(self, model, test, schema, evaluate_section, out_dir) -> Evaluation:
        from components.tasks.classification_metrics import classification_metrics

        class_names = schema["class_names"]
        inputs = self.decode_inputs(test["encoded"], schema)
        probabilities = softmax_batches(model, inputs)
        metrics = classification_metrics(test["label"], probabilities, class_names, evaluate_section.top_k)
        write_predictions(Path(out_dir) / PREDICTIONS_FILE, test, probabilities, class_names)
        count = min(evaluate_section.num_sample_images, len(test["id"]))
        predicted = probabilities.argmax(axis=1)
        samples = {"images": inputs[:count], "true": test["label"][:count], "predicted": predicted[:count],
                   "probability": probabilities[np.arange(count), predicted[:count]]}
        top = f"top_{metrics['top_k']}_accuracy"
        summary = (f"{self.name}: test split ({metrics['num_examples']} examples): accuracy {metrics['accuracy']:.4f}, "
                   f"top-{metrics['top_k']} accuracy {metrics[top]:.4f}, loss {metrics['loss']:.4f}")
        return Evaluation(metrics=metrics, sections=self.report_sections(metrics, samples), summary=summary)

    def served_probabilities(self, saved_model: Path, test: dict, schema: dict) -> np.ndarray:
        from components import serving

        return serving.ServedModel(saved_model).classify_bytes(test["encoded"])["probabilities"]

    def evaluate_served(self, saved_model, test, schema, evaluate_section) -> dict:
        from components.tasks.classification_metrics import classification_metrics

        return classification_metrics(test["label"], self.served_probabilities(saved_model, test, schema),
                                      schema["class_names"], evaluate_section.top_k)

    def write_probe(self, test, probe_dir, count) -> None:
        probe_dir.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(test["encoded"][:count]):
            (probe_dir / f"{i:03d}.{image_extension(data)}").write_bytes(data)

    # export and predict --------------------------------------------------------------------------
    def export_archive(self, model, info):
        from components import serving

        return serving.export_archive(model, info["class_names"], info["input_shape"])

    def check_export(self, saved_model, model, probe_dir, info, scratch) -> dict:
        from components import serving

        encoded = [p.read_bytes() for p in sorted(Path(probe_dir).glob("*")) if p.is_file()]
        if not encoded:
            raise ExportMismatch(f"{probe_dir} holds no test images to check the export with")
        images = serving.decode_images(encoded, info["input_shape"])
        expected = softmax_batches(model, images)
        outputs = serving.probe_in_fresh_process(saved_model, encoded, images, scratch=scratch)
        names = [info["class_names"][i] for i in expected.argmax(-1)]
        if list(outputs["bytes_class_name"]) != names:
            raise ExportMismatch(f"serving_default class_name {list(outputs['bytes_class_name'])} differs from "
                                 f"the Keras model's {names}")
        return {serving.BYTES_SIGNATURE: float(np.abs(outputs["bytes_probabilities"] - expected).max()),
                serving.IMAGES_SIGNATURE: float(np.abs(outputs["images_probabilities"] - expected).max())}

    def predict_lines(self, saved_model, paths) -> list:
        from components import serving

        outputs = serving.ServedModel(saved_model).classify_bytes([Path(p).read_bytes() for p in paths])
        return [f"{path}\t{outputs['class_name'][i].decode()}\t{float(outputs['probabilities'][i].max()):.4f}"
                for i, path in enumerate(paths)]


TASK = ClassificationTask()
