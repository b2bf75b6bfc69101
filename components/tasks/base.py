"""The TaskAdapter: everything train, evaluate, export and predict need to know about one task.

The stages stay task-blind: they read `schema["task"]` (from schema.json, or trial.json /
the served version's convpipe.json downstream), call `components.tasks.get_task(name)` and use
the methods below. One adapter per task module (`TASK = MyTask()`); subclass `TaskAdapter`, or a
sibling adapter when the task is a variant (video is clip classification).

Data an adapter passes to itself between calls:
  test split   a dict of equal-length lists, at least "id", "source" and "encoded" (what a client
               would send: bytes of an image, or a list of frame bytes for a clip), plus the
               task's targets (classification "label": int). Read once by `read_test`, used by
               `evaluate`, `evaluate_served` and `write_probe`.
  info         trial.json / convpipe.json fields: "task", "class_names", "input_shape" (the model
               input without the batch axis), plus anything the adapter adds in `serving_info`.

Every method that runs inside `tf.function` (`replica_loss`, `metric_sums`) must be pure TF.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

PREDICTIONS_FILE = "predictions.jsonl"


@dataclass
class Evaluation:
    """What `TaskAdapter.evaluate` returns to the evaluate stage."""
    metrics: dict
    """metrics.json: every name `evaluate.metric` and `evaluate.thresholds` may use, as floats."""
    sections: list = field(default_factory=list)
    """Report sections in order: (heading, HTML fragment); components/reports/html.py's `table_html`,
    `image_html` (PNG bytes -> embedded <img>) and `classification_sections` build them."""
    summary: str = ""
    """One log line, e.g. "accuracy 0.97, top-2 accuracy 1.00"."""


class ExportMismatch(ValueError):
    """The fresh-process SavedModel disagrees with the Keras model in a way tolerance cannot cover
    (e.g. different class names); the message says what was expected and what came back."""


def keras_replica_loss(model, loss, x, y, training: bool, num_replicas: int):
    """(outputs, mean loss of this replica's examples) for a batch, the default of `replica_loss`.

    A loss with `model_defined = True` (train.loss "detector") means the model computes its own:
    `model.compute_loss((x, y), training=...)` returns {"loss": scalar, ...terms}, and that dict is
    the outputs. Otherwise outputs = model(x) cast to float32 and the loss is `loss(y, outputs)`;
    a Keras Loss divides its batch mean by the number of replicas (scale_loss_for_distribution),
    which is undone here so every adapter returns the plain per-replica mean.
    """
    import keras
    import tensorflow as tf

    if getattr(loss, "model_defined", False):
        parts = model.compute_loss((x, y), training=training)
        return parts, tf.cast(parts["loss"], tf.float32)
    outputs = model(x, training=training)
    outputs = tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), outputs)
    value = tf.cast(loss(y, outputs), tf.float32)
    if isinstance(loss, keras.losses.Loss) or getattr(loss, "scaled_for_distribution", False):
        value = value * num_replicas
    return outputs, value


class TrainingHooks:
    """A trial's calls into the training loop (components/training/loop.fit), for tasks whose
    training changes from step to step (multitask schedules) or that measure more per epoch than
    per-batch sums allow. `TaskAdapter.training_hooks` returns one per trial; these do nothing."""

    def before_step(self, epoch: int, global_step: int) -> None:
        """Called before every training step: `epoch` 1-based, `global_step` the steps done so far
        (0-based, continuing across epochs and resumes)."""

    def loss_phase(self) -> str:
        """Names what the step losses now measure: losses of different phases (a multitask schedule
        training one head, then another) are not compared when checking for divergence."""
        return ""

    def end_of_epoch(self, epoch: int) -> dict:
        """Extra entries for the epoch's row, after its train and eval sums: they land in
        history.json and TensorBoard (names starting "val_" under eval/, the others under train/)."""
        return {}


def monitor_for(evaluate_metric: str, has_eval: bool, computed: tuple = ("accuracy",)) -> str:
    """The metric that picks the best epoch: the evaluation metric on the eval split when training
    computes it (`computed`), else the eval loss (or the train loss when there is no eval split)."""
    prefix = "val_" if has_eval else ""
    return prefix + (evaluate_metric if evaluate_metric in computed else "loss")


class TaskAdapter:
    """One task's behaviour in every stage. Defaults suit any model trained by a registered loss."""

    name: str = ""
    metric_names: tuple = ()
    """Per-step metrics the training loop logs besides the loss (keys of `metric_sums`); the
    evaluate metric picks the best epoch when it is among them, else the eval loss does."""
    signatures: tuple = ()
    """SavedModel signature names `export_archive` writes (serving_default first)."""

    # --------------------------------------------------------------------------------------------
    # schema
    # --------------------------------------------------------------------------------------------
    def input_shape(self, schema: dict) -> tuple:
        """The model's input without the batch axis, from schema.json (default: image_size)."""
        return tuple(int(v) for v in schema["image_size"])

    def num_classes(self, schema: dict) -> int:
        """`num_classes` for `models.build_model` (default: len(class_names))."""
        return len(schema["class_names"])

    # --------------------------------------------------------------------------------------------
    # training (components/training/trial.py and loop.py)
    # --------------------------------------------------------------------------------------------
    def build_loss(self, train_section):
        """The loss object for `train.loss` / `train.loss_params` (a registered name)."""
        from components.training.builders import build_loss

        return build_loss(train_section)

    def builder_params(self, model_section, train_section) -> dict:
        """The keyword arguments `models.build_model(model.name, ...)` receives: `model.params`, as
        this task resolves them (detection picks `by_stage`, multitask applies `train.multitask`).
        The one place they are resolved, for training and for `convpipe describe-model` alike."""
        return dict(model_section.params)

    def build_model_and_loss(self, model_section, train_section, input_shape, num_classes: int):
        """(model, loss), inside the strategy's scope: the model by `model.name` from `builder_params`,
        the loss by `build_loss`. A task whose loss needs the model (multitask) overrides this."""
        from components.training.builders import build_network

        section = model_section.model_copy(update={"params": self.builder_params(model_section, train_section)})
        return build_network(section, input_shape, num_classes), self.build_loss(train_section)

    def epochs(self, config) -> int:
        """Epochs the trial runs (default `train.epochs`); the learning-rate schedule spans them."""
        return config.train.epochs

    def monitor(self, config, has_eval: bool) -> str:
        """The epoch-row entry that picks the weights kept (default: `evaluate.metric` on the eval
        split when training computes it per step, else the eval loss); "epoch" keeps the last epoch."""
        return monitor_for(config.evaluate.metric, has_eval, self.metric_names)

    def training_hooks(self, model, loss, train_section, eval_data) -> TrainingHooks:
        """This trial's TrainingHooks; `eval_data()` gives the eval split's batches (None: no split)."""
        return TrainingHooks()

    def replica_loss(self, model, loss, x, y, training: bool, num_replicas: int):
        """(outputs, per-replica mean loss) of one replica's share of a batch, inside tf.function.
        `outputs` goes to `metric_sums`; the loop weights the mean by the replica's example count."""
        return keras_replica_loss(model, loss, x, y, training, num_replicas)

    def metric_sums(self, y, outputs) -> dict:
        """{name: sum over this replica's examples} for each of `metric_names` (the loop divides
        the summed totals by the example count); pure TF."""
        return {}

    def sample_grid_png(self, model, inputs: np.ndarray, targets, class_names: Sequence[str]) -> Optional[bytes]:
        """A PNG of sample test inputs with predictions and truths for TensorBoard, or None."""
        return None

    # --------------------------------------------------------------------------------------------
    # evaluation (components/evaluate/stage.py)
    # --------------------------------------------------------------------------------------------
    def known_metrics(self, evaluate_section) -> Optional[list]:
        """Names `evaluate.metric` / `evaluate.thresholds` may use (checked before a run), or None."""
        return None

    def decode_inputs(self, encoded: Sequence, schema: dict) -> np.ndarray:
        """Encoded test images -> the model's float inputs, decoded as the serving signature does."""
        from components.serving import decode_images

        return decode_images(encoded, schema["image_size"])

    def read_test(self, examples_dir: str | Path, schema: dict) -> dict:
        """The test split as a dict of lists (see the module docstring); labels are range-checked."""
        raise NotImplementedError(f"task {self.name!r} does not evaluate")

    def evaluate(self, model, test: dict, schema: dict, evaluate_section, out_dir: Path) -> Evaluation:
        """Run the Keras model on `test`, write `out_dir / PREDICTIONS_FILE` (one JSON line per
        example with at least "id" and "source"), return the metrics and report sections."""
        raise NotImplementedError(f"task {self.name!r} does not evaluate")

    def evaluate_training(self, history: dict, trial: dict) -> Evaluation:
        """Metrics and report sections read from the training record itself (history.json and
        trial.json of the Model artifact), added to those of `evaluate`; default none."""
        return Evaluation(metrics={})

    def evaluate_served(self, saved_model: Path, test: dict, schema: dict, evaluate_section) -> dict:
        """The metrics of a served SavedModel version on `test`, through its own serving_default,
        computed by the same arithmetic as `evaluate` (for the blessing's comparison)."""
        raise NotImplementedError(f"task {self.name!r} does not evaluate served models")

    def write_probe(self, test: dict, probe_dir: Path, count: int) -> None:
        """Save the first `count` test inputs as clients send them, for `check_export`."""
        raise NotImplementedError(f"task {self.name!r} does not export")

    # --------------------------------------------------------------------------------------------
    # export (components/export/stage.py) and predict (components/serving/predict.py)
    # --------------------------------------------------------------------------------------------
    def serving_info(self, info: dict) -> dict:
        """Extra fields for the version's convpipe.json beyond `info` (default none)."""
        return {}

    def export_archive(self, model, info: dict):
        """A `keras.export.ExportArchive` with `signatures`; serving_default takes encoded inputs and
        does its own pre- and post-processing."""
        raise NotImplementedError(f"task {self.name!r} does not export")

    def check_export(self, saved_model: Path, model, probe_dir: Path, info: dict, scratch: Path) -> dict:
        """Load `saved_model` in a fresh process (components/serving/probe.py), run every signature
        on the probe inputs and compare with the Keras model: {signature: max abs difference}.
        Raises ExportMismatch for disagreements no tolerance covers."""
        raise NotImplementedError(f"task {self.name!r} does not export")

    def comparison_sections(self, trials: dict) -> list:
        """Extra report sections (heading, HTML) comparing the trials of a sweep, for the compare
        stage: `trials` maps a trial name to {"metrics" (metrics.json), "history" (history.json's
        Keras-layout history), "trial" (trial.json), "values" (swept label -> value text)}."""
        return []

    def predict_lines(self, saved_model: Path, paths: Sequence[Path]) -> list:
        """One printable line per input file for `convpipe predict`, from the version's serving_default.
        Raises ValueError when a file cannot be read as this task's input."""
        raise NotImplementedError(f"task {self.name!r} has no predict")
