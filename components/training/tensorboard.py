"""TensorBoard logs of one training run: scalars per epoch, the learning rate, sample predictions, the graph.

Every run writes under one root (`pipeline.tensorboard_root`, default `<root>/tensorboard`), one
directory per run with `train/` and `eval/` below it, and the same tag names in both, so
`tensorboard --logdir <root>` overlays train and eval curves and shows all runs side by side.
Only the chief writes; other workers get no-op writers.

HParams: the trial's hyperparameters are written in the run's own directory, which makes the run
an HParams session whose metrics are every scalar below it (the plugin names them by tag and
sub-directory): `train/epoch_loss`, `eval/epoch_accuracy`, and the test metrics and time to target
the compare stage adds with `final_metrics` (`test/epoch_accuracy`, `comparison/epochs_to_target`).
Tags are the same in every trial, so the dashboard puts each trial in one row with the same columns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, which the format puts first."""
    if len(png) < 24 or png[:8] != _PNG_SIGNATURE or png[12:16] != b"IHDR":
        raise ValueError(f"expected PNG bytes (signature and IHDR chunk), got {png[:16]!r}")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def tensorboard_dir(root: str | Path, tensorboard_root: Optional[str], run_name: str) -> Path:
    """`<tensorboard_root or root/tensorboard>/<run_name>`."""
    base = Path(tensorboard_root) if tensorboard_root else Path(root) / "tensorboard"
    return base / run_name


class TrainingLogs:
    def __init__(self, logdir: str | Path, enabled: bool = True):
        import tensorflow as tf

        self.logdir = Path(logdir)
        self.enabled = enabled
        if enabled:
            self.train = tf.summary.create_file_writer(str(self.logdir / "train"))
            self.eval = tf.summary.create_file_writer(str(self.logdir / "eval"))
        else:
            self.train = self.eval = tf.summary.create_noop_writer()

    def scalars(self, epoch: int, train: dict, evaluation: dict, learning_rate: float) -> None:
        """Per-epoch scalars as `epoch_<name>` in train/ and eval/ (the tags Keras's callback uses)."""
        import tensorflow as tf

        with self.train.as_default(step=epoch):
            for name, value in train.items():
                tf.summary.scalar(f"epoch_{name}", value)
            tf.summary.scalar("learning_rate", learning_rate)
        with self.eval.as_default(step=epoch):
            for name, value in evaluation.items():
                tf.summary.scalar(f"epoch_{name}", value)
        self.flush()

    def sample_predictions(self, epoch: int, png: bytes) -> None:
        """The grid's PNG as an image summary, its bytes as they are.

        `tf.summary.image` takes pixels and encodes them again: decoding the grid only to have it
        re-encoded was two thirds of the picture's cost at every epoch (~25 of 40 ms on the default
        run here). The image plugin's tensor is [width, height, encoded image...] (strings), which
        is what this writes, with the plugin's own metadata, so TensorBoard shows it the same way.
        """
        import tensorflow as tf
        from tensorboard.plugins.image import metadata

        width, height = png_size(png)
        summary_metadata = metadata.create_summary_metadata(
            display_name="sample_predictions",
            description="Sample test images after this epoch: the predictions beside the truth "
                        "(classes with probabilities, masks or boxes, by task)")
        with self.eval.as_default(step=epoch):
            tf.summary.write("sample_predictions", tf.constant([str(width), str(height), png]),
                             metadata=summary_metadata)
        self.flush()

    def graph(self, concrete_function) -> None:
        """The model's forward graph (shown in TensorBoard's Graphs tab)."""
        import tensorflow as tf

        with self.train.as_default(step=0):
            tf.summary.graph(concrete_function.graph)
        self.flush()

    def hparams(self, params: dict) -> None:
        """Trial hyperparameters for the HParams dashboard (flat scalars and strings only), in the run's
        directory, so that train/ and eval/ (and test/ later) hold the session's metrics."""
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hp

        if not self.enabled:
            return
        flat = {k: v for k, v in params.items() if isinstance(v, (bool, int, float, str))}
        writer = tf.summary.create_file_writer(str(self.logdir))
        with writer.as_default(step=0):
            hp.hparams(flat)
        writer.close()

    def flush(self) -> None:
        self.train.flush()
        self.eval.flush()

    def close(self) -> None:
        self.train.close()
        self.eval.close()


def final_metrics(logdir: str | Path, group: str, step: int, metrics: dict) -> bool:
    """Scalars `metrics` at `step` in `<logdir>/<group>/` (e.g. the test metrics, once, after training):
    HParams metrics of the run's session. Written once: False (nothing written) if the group exists."""
    import tensorflow as tf

    directory = Path(logdir) / group
    if directory.exists():
        return False
    writer = tf.summary.create_file_writer(str(directory))
    with writer.as_default(step=step):
        for name, value in metrics.items():
            tf.summary.scalar(name, value)
    writer.close()
    return True
