"""The epoch log line names the epoch's own seconds and the elapsed total (resumes included)."""
from components.training.history import Progress


def _progress():
    progress = Progress.__new__(Progress)  # the line needs no tf.Variable
    progress.reset()
    return progress


def test_epoch_seconds_and_elapsed_seconds_are_named_apart():
    progress = _progress()
    row = {"epoch": 1, "loss": 0.5, "learning_rate": 0.001, "seconds": 9.9, "steps": 8}
    assert progress.epoch_line(row, 3, 2.0) == ("epoch 1/3: loss=0.5, learning_rate=0.001, epoch_seconds=2.0, "
                                                "elapsed_seconds=2.0")
    line = progress.epoch_line({**row, "epoch": 2}, 3, 1.5)
    assert line.endswith("epoch_seconds=1.5, elapsed_seconds=3.5") and " seconds=" not in line
    restored = _progress()
    for key, value in __import__("json").loads(progress.to_json()).items():
        setattr(restored, key, value)
    assert restored.epoch_line({**row, "epoch": 3}, 3, 1.0).endswith("elapsed_seconds=4.5")
