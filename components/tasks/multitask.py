"""Multitask: one backbone, several heads (models/multitask/network.py), trained by one weighted loss.

Training. The model is the `multitask` builder with `train.multitask`'s heads, weighting and
static weights (models/multitask/training.py); the loss is MultitaskLoss (per-head
masked means added by the model's TaskWeighting, whose learned s_i train with the model). The
schedule (`joint`, `alternating`, `consecutive`) speaks through the loss's `active` mask, set
before every step by this task's TrainingHooks; a consecutive schedule runs the sum of its
phases' epochs and keeps the last epoch's weights (forgetting is measured against them), the
others keep the epoch with the lowest eval loss (every head active). After every epoch the hooks
log the task weights (`task_weight_<head>`, and `log_variance_<head>` = s_i when learned) to
history.json and TensorBoard; about ten times a trial, at every phase end and at the last epoch
they evaluate every head on the eval split (mean IoU, AP50, mAP, MAE and the mean head score as
`val_*` entries). Accuracy and each head's unweighted loss come from the per-step sums.

Evaluation. Every head on the test split (components/tasks/multitask_scores.py): classification
accuracy (and top-k, loss, macro P/R/F1), segmentation mean IoU and pixel accuracy, detection COCO
mAP/AP50/AP75/AR after NMS, regression MAE/RMSE, as `<head>_<metric>` in metrics.json; forgetting
per head from history.json (its eval metric at the end of its consecutive phase minus at the end
of training, `forgetting_<head>`); a report with every head's table, the task weights and the
heads' metrics per epoch, forgetting and sample predictions.

SavedModel signatures (the post-processing is multitask_scores.postprocess, the same graph
evaluation scores):
  serving_default(image_bytes: string [batch])   encoded images, decoded and resized inside ->
      classification_probabilities [B, K], classification_class_id, classification_class_name,
      segmentation_probabilities [B, H, W, K+1], segmentation_class_id [B, H, W],
      detection_boxes [B, D, 4] rel_xyxy, detection_scores, detection_classes, detection_num_detections,
      regression_values [B, R]     (the keys of the heads the model has)
  serving_images(images: float32 [batch, H, W, C] in [0, 1]) -> the same outputs
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from components.reports.sample_grids import multitask_grid_png
from components.tasks import multitask_report as report
from components.tasks import multitask_scores as scores
from components.tasks.base import PREDICTIONS_FILE, Evaluation, ExportMismatch, TaskAdapter, TrainingHooks
from components.tasks.multitask_schedule import (MultitaskHooks, ScheduledLoss, evaluation_epochs, heads_of, phase_ends,
                                                 schedule_of)

BYTES_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "serving_images"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"


# ------------------------------------------------------------------------------------------------
# the adapter
# ------------------------------------------------------------------------------------------------
class MultitaskTask(TaskAdapter):
    name = "multitask"
    metric_names = ("classification_accuracy",)
    signatures = (BYTES_SIGNATURE, IMAGES_SIGNATURE)

    # training ------------------------------------------------------------------------------------
    def builder_params(self, model_section, train_section) -> dict:
        """`model.params` with train.multitask's heads, weighting and weights applied
        (models/multitask/training.py)."""
        from models.multitask.training import builder_params

        multitask = train_section.multitask
        return builder_params(model_section.params, multitask.heads, multitask.weighting, multitask.weights)

    def build_model_and_loss(self, model_section, train_section, input_shape, num_classes):
        from models import build_model
        from models.multitask.losses import MultitaskLoss

        multitask = train_section.multitask
        params = self.builder_params(model_section, train_section)
        model = build_model(model_section.name, tuple(input_shape), num_classes, **params)
        if not hasattr(model, "head_config") or not hasattr(model, "task_weighting"):
            raise ValueError(f"model.name: the multitask task expects the 'multitask' builder (a model with named "
                             f"heads and task weighting), got {model_section.name!r}")
        loss = MultitaskLoss.for_model(model, losses=multitask.losses, loss_params=multitask.loss_params)
        return model, ScheduledLoss(loss)

    def epochs(self, config) -> int:
        return schedule_of(config.train, heads_of(config.model, config.train)).epochs(config.train.epochs)

    def monitor(self, config, has_eval: bool) -> str:
        """Consecutive: the last epoch (forgetting is measured against it); else the lowest eval
        loss with every head active (the train loss without an eval split)."""
        if config.train.multitask.schedule == "consecutive":
            return "epoch"
        return "val_loss" if has_eval else "loss"

    def training_hooks(self, model, loss, train_section, eval_data) -> TrainingHooks:
        return MultitaskHooks(model, loss, schedule_of(train_section, model.heads), eval_data,
                              evaluation_epochs(train_section, model.heads))

    def replica_loss(self, model, loss, x, y, training, num_replicas):
        """Outputs {"heads": raw outputs, "head_losses": unweighted per-head means} and the
        scheduled, weighted total."""
        import tensorflow as tf

        outputs = {head: tf.cast(value, tf.float32) for head, value in model(x, training=training).items()}
        total, head_losses = loss.total_and_head_losses(y, outputs)
        return {"heads": outputs, "head_losses": head_losses}, tf.cast(total, tf.float32)

    def metric_sums(self, y, outputs) -> dict:
        """Correct classifications among labelled examples, and each head's unweighted loss times
        the examples (the loop divides by the examples: the batch-weighted mean loss per head)."""
        import tensorflow as tf

        count = tf.cast(tf.shape(y["labels"] if "labels" in y else tf.nest.flatten(y)[0])[0], tf.float32)
        sums = {f"{head}_loss": value * count for head, value in outputs["head_losses"].items()}
        if "classification" in outputs["heads"] and "class" in y:
            labelled = tf.reduce_any(y["class"] > 0, axis=-1)
            correct = tf.equal(tf.argmax(outputs["heads"]["classification"], -1), tf.argmax(y["class"], -1))
            sums["classification_accuracy"] = tf.reduce_sum(tf.cast(correct & labelled, tf.float32))
        return sums

    def sample_grid_png(self, model, inputs, targets, class_names):
        labels = None
        if isinstance(targets, dict) and "class" in targets:
            one_hot = np.asarray(targets["class"])
            labels = np.where(one_hot.any(-1), one_hot.argmax(-1), -1)
        outputs = scores.predict(model, np.asarray(inputs), class_names)
        return multitask_grid_png(np.asarray(inputs), outputs, class_names, labels)

    # evaluation ----------------------------------------------------------------------------------
    def known_metrics(self, evaluate_section) -> list:
        return scores.metric_names(evaluate_section.top_k)

    def read_test(self, examples_dir, schema) -> dict:
        test = scores.read_split(examples_dir, "test")
        bad = sorted({label for label in test["label"] if not -1 <= label < len(schema["class_names"])})
        bad += sorted({int(label) for labels in test["box_labels"] if labels is not None for label in labels
                       if not 0 <= label < len(schema["class_names"])})
        if bad:
            raise ValueError(f"test labels {bad} are outside 0..{len(schema['class_names']) - 1} ({examples_dir})")
        return test

    def evaluate(self, model, test, schema, evaluate_section, out_dir) -> Evaluation:
        from components.serving import decode_images

        class_names = schema["class_names"]
        images = decode_images(test["encoded"], schema["image_size"])
        targets = scores.targets_of(test, schema["image_size"])
        outputs = scores.predict(model, images, class_names)
        regression = model.head_config.get("regression", {}).get("target", "count")
        metrics, details = scores.score_heads(outputs, targets, class_names, schema["image_size"],
                                              evaluate_section.top_k, regression)
        write_predictions(Path(out_dir) / PREDICTIONS_FILE, test, outputs, class_names)
        metrics["num_examples"] = len(test["id"])
        metrics["heads"] = model.heads
        metrics["per_head"] = details
        count = min(evaluate_section.num_sample_images, len(images))
        sections = [("Every head on the test split", report.heads_table(metrics, model.heads))]
        sections += report.per_class_tables(details)
        if count:
            sample = {key: value[:count] for key, value in outputs.items()}
            sections.append(("Sample predictions", report.image_html(multitask_grid_png(
                images[:count], sample, class_names, targets["label"][:count]), "sample predictions")))
        summary = f"multitask: test split ({len(images)} examples): " + ", ".join(
            f"{scores.headline(h)} {metrics[scores.headline(h)]:.4f}" for h in model.heads
            if not math.isnan(metrics[scores.headline(h)])) + f"; mean head score {metrics['mean_head_score']:.4f}"
        return Evaluation(metrics=metrics, sections=sections, summary=summary)

    def evaluate_training(self, history: dict, trial: dict) -> Evaluation:
        """Forgetting per head (`forgetting_<head>` and the table under "forgetting") and the
        report's task weights and per-epoch head metrics, from history.json and trial.json."""
        from pydantic import ValidationError

        from pipeline.config import TrainSection

        values = history.get("history", {})
        params = trial.get("params") or {}
        try:
            train = TrainSection.model_validate(params["train"])
        except (KeyError, ValidationError):  # a Model artifact from before train.multitask existed
            return Evaluation(metrics={})
        if not values:
            return Evaluation(metrics={})
        heads = [h for h in scores.HEADLINE if f"task_weight_{h}" in values]
        ends = phase_ends(train, heads) if heads else {}
        rows = scores.forgetting_rows(values, ends)
        schedule = train.multitask.schedule
        metrics = {f"forgetting_{row['task']}": row["forgetting"] for row in rows}
        metrics["forgetting"] = {"schedule": schedule, "split": "eval", "rows": rows}
        metrics["task_weights"] = {h: values[f"task_weight_{h}"] for h in heads}
        sections = [("Task weights per epoch", report.image_html(report.weights_png(values), "task weights")),
                    ("Every head per epoch", report.image_html(report.head_curves_png(
                        values, ends if schedule == "consecutive" else None), "head metrics per epoch"))]
        if rows:
            sections.append(("Forgetting", report.forgetting_html(rows, schedule)))
        return Evaluation(metrics=metrics, sections=sections)

    def served_outputs(self, saved_model: Path, encoded: Sequence[bytes]) -> dict:
        from components.serving import ServedModel

        values = np.empty(len(encoded), dtype=object)
        values[:] = [bytes(e) for e in encoded]
        return ServedModel(saved_model, signatures=self.signatures).run(BYTES_SIGNATURE, **{BYTES_INPUT: values})

    def evaluate_served(self, saved_model, test, schema, evaluate_section) -> dict:
        outputs = self.served_outputs(saved_model, test["encoded"])
        targets = scores.targets_of(test, schema["image_size"])
        return scores.score_heads(outputs, targets, schema["class_names"], schema["image_size"],
                                  evaluate_section.top_k)[0]

    def write_probe(self, test, probe_dir, count) -> None:
        from components.tasks.classification import image_extension

        probe_dir.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(test["encoded"][:count]):
            (probe_dir / f"{i:03d}.{image_extension(data)}").write_bytes(data)

    def comparison_sections(self, trials: dict) -> list:
        return report.comparison_sections(trials)

    # export and predict --------------------------------------------------------------------------
    def export_archive(self, model, info):
        from components import serving

        class_names = list(info["class_names"])

        def serve_images(images):
            return scores.postprocess(model(images, training=False), model.head_config, class_names)

        return serving.image_archive(model, info["input_shape"], serve_images)

    def check_export(self, saved_model, model, probe_dir, info, scratch) -> dict:
        """Both signatures in a fresh process against the Keras model's post-processed outputs:
        the largest difference over every float output; class names and detection counts must match."""
        from components.serving import decode_images
        from components.serving.probe import run_in_fresh_process

        encoded = [p.read_bytes() for p in sorted(Path(probe_dir).glob("*")) if p.is_file()]
        if not encoded:
            raise ExportMismatch(f"{probe_dir} holds no test images to check the export with")
        images = decode_images(encoded, info["input_shape"])
        expected = scores.predict(model, images, info["class_names"])
        values = np.empty(len(encoded), dtype=object)
        values[:] = encoded
        served = run_in_fresh_process(saved_model, {BYTES_SIGNATURE: {BYTES_INPUT: values},
                                                    IMAGES_SIGNATURE: {IMAGES_INPUT: images}}, scratch)
        differences = {}
        for signature, outputs in served.items():
            missing = sorted(set(expected) - set(outputs))
            if missing:
                raise ExportMismatch(f"{signature} lacks the outputs {missing} (it has {sorted(outputs)})")
            for key in ("classification_class_name", "detection_num_detections", "detection_classes"):
                if key in expected and [str(v) for v in np.ravel(outputs[key])] != [
                        v.decode() if isinstance(v, bytes) else str(v) for v in np.ravel(expected[key])]:
                    raise ExportMismatch(f"{signature} {key} {np.asarray(outputs[key]).tolist()} differs from the "
                                         f"Keras model's {np.asarray(expected[key]).tolist()}")
            differences[signature] = max(float(np.abs(np.asarray(outputs[key], np.float64) - expected[key]).max())
                                         for key in expected if expected[key].dtype.kind == "f" and expected[key].size)
        return differences

    def predict_lines(self, saved_model, paths) -> list:
        """`<path>\t<class> <p>\tmask: <class> <share>, ...\tboxes: <class> <score> [x0 y0 x1 y1], ...\tcount <n>`
        (the parts of the heads the model has; boxes scoring at least 0.5)."""
        from components.serving import read_info

        info = read_info(saved_model)
        class_names = list(info.get("class_names", []))
        outputs = self.served_outputs(saved_model, [Path(p).read_bytes() for p in paths])
        lines = []
        for i, path in enumerate(paths):
            parts = [str(path)]
            if "classification_probabilities" in outputs:
                p = outputs["classification_probabilities"][i]
                parts.append(f"{outputs['classification_class_name'][i].decode()} {float(p.max()):.4f}")
            if "segmentation_class_id" in outputs:
                ids = outputs["segmentation_class_id"][i]
                names = scores.mask_class_names(outputs["segmentation_probabilities"].shape[-1], class_names)
                counts = np.bincount(ids.reshape(-1), minlength=len(names)) / ids.size
                parts.append("mask: " + ", ".join(f"{names[k]} {counts[k]:.2f}" for k in np.flatnonzero(counts)))
            if "detection_boxes" in outputs:
                found = [f"{class_names[int(outputs['detection_classes'][i][k])]} {float(outputs['detection_scores'][i][k]):.2f} "
                         f"[{' '.join(f'{v:.3f}' for v in outputs['detection_boxes'][i][k])}]"
                         for k in range(int(outputs["detection_num_detections"][i]))
                         if outputs["detection_scores"][i][k] >= 0.5]
                parts.append("boxes: " + (", ".join(found) or "none"))
            if "regression_values" in outputs:
                parts.append(f"count {float(outputs['regression_values'][i][0]):.2f}")
            lines.append("\t".join(parts))
        return lines


def write_predictions(path: Path, test: dict, outputs: dict, class_names: Sequence[str]) -> None:
    """One line per test example: the predicted class, the predicted mask's share of each class,
    the detections (score >= 0.05, at most scores.MAX_DETECTIONS) and the regression value."""
    with open(path, "w") as handle:
        for i, example_id in enumerate(test["id"]):
            line = {"id": example_id, "source": test["source"][i]}
            if "classification_probabilities" in outputs:
                p = outputs["classification_probabilities"][i]
                line["classification"] = {"predicted": class_names[int(p.argmax())], "probability": float(p.max()),
                                          "true": class_names[test["label"][i]] if test["label"][i] >= 0 else None}
            if "segmentation_class_id" in outputs:
                ids = outputs["segmentation_class_id"][i]
                line["segmentation"] = {"class_share": (np.bincount(ids.reshape(-1), minlength=outputs[
                    "segmentation_probabilities"].shape[-1]) / ids.size).round(4).tolist()}
            if "detection_boxes" in outputs:
                n = int(outputs["detection_num_detections"][i])
                line["detection"] = [{"class": class_names[int(c)], "score": round(float(s), 4),
                                      "box": [round(float(v), 4) for v in b]}
                                     for b, s, c in zip(outputs["detection_boxes"][i][:n], outputs["detection_scores"][i][:n],
                                                        outputs["detection_classes"][i][:n])]
            if "regression_values" in outputs:
                line["regression"] = [float(v) for v in outputs["regression_values"][i]]
            handle.write(json.dumps(line) + "\n")


TASK = MultitaskTask()
