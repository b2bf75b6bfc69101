"""End-of-epoch work beside training (components/training/epoch_end.py): a backup holds the state of
the moment it was queued, a job's error reaches the training thread, and a SIGKILL while backups are
being written in the background resumes from the newest complete one."""
import json
import logging
import re
import signal

import numpy as np
import pytest

from tests.components import classification_fixtures as fx
from tests.components.train.test_train import run_train



def trackables():
    import keras
    import tensorflow as tf

    from components.training.backups import BestWeights

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))
    optimizer = keras.optimizers.Adam(0.1)
    optimizer.build(model.trainable_variables)
    progress = tf.Variable("{}", dtype=tf.string, trainable=False)
    best = BestWeights(model)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, progress=progress, best=best.variables)
    return model, optimizer, progress, best, checkpoint


class FakeProgress:
    def __init__(self, variable, text):
        self.variable, self.text = variable, text

    def sync(self):
        self.variable.assign(self.text)


def test_a_background_backup_holds_the_state_of_the_moment_it_was_queued(tmp_path):
    from components.training.backups import Backups
    from components.training.epoch_end import BackgroundEndOfEpoch, Mirror, checkpoint_variables
    from components.training.tensorboard import TrainingLogs

    model, optimizer, progress, best, checkpoint = trackables()
    mirror_model, _, _, _, mirror_checkpoint = trackables()
    assert len(checkpoint_variables(checkpoint)) == 2 + 2 * 2 + 2 + 1 + 2  # weights, Adam slots, counters, progress, best
    backups = Backups(tmp_path / "backups", checkpoint)
    end = BackgroundEndOfEpoch(backups, TrainingLogs(tmp_path / "tb", enabled=False), logging.getLogger("test"),
                               Mirror(checkpoint, mirror_checkpoint, mirror_model))
    kernel = model.get_layer("dense").kernel
    kernel.assign(np.full((3, 2), 1.0, np.float32))
    best.save(1)
    end.step_backup(FakeProgress(progress, '{"step": 1}'), epoch=1, step=1)
    kernel.assign(np.full((3, 2), 2.0, np.float32))  # training goes on while the backup is written
    end.step_backup(FakeProgress(progress, '{"step": 2}'), epoch=1, step=2)
    kernel.assign(np.full((3, 2), 3.0, np.float32))
    end.close()
    assert backups.numbers() == [1, 2]

    fresh_model, _, fresh_progress, fresh_best, fresh_checkpoint = trackables()
    for number, value, text in ((1, 1.0, '{"step": 1}'), (2, 2.0, '{"step": 2}')):
        fresh_checkpoint.read(str(backups.prefix(number))).assert_existing_objects_matched()
        np.testing.assert_array_equal(fresh_model.get_layer("dense").kernel.numpy(), np.full((3, 2), value))
        assert fresh_progress.numpy().decode() == text
    fresh_model.get_layer("dense").kernel.assign(np.zeros((3, 2), np.float32))
    fresh_best.load("epoch-1")  # the best weights travel inside the backup
    np.testing.assert_array_equal(fresh_model.get_layer("dense").kernel.numpy(), np.full((3, 2), 1.0))


def test_an_error_in_a_background_job_reaches_the_training_thread(tmp_path):
    from components.training.epoch_end import BackgroundEndOfEpoch, Mirror
    from components.training.tensorboard import TrainingLogs

    model, _, progress, _, checkpoint = trackables()
    mirror_model, _, _, _, mirror_checkpoint = trackables()

    class FullDisk:
        checkpoint = None

        def save(self, checkpoint=None):
            raise OSError("No space left on device")

    end = BackgroundEndOfEpoch(FullDisk(), TrainingLogs(tmp_path / "tb", enabled=False), logging.getLogger("test"),
                               Mirror(checkpoint, mirror_checkpoint, mirror_model))
    end.step_backup(FakeProgress(progress, "{}"), epoch=1, step=1)
    with pytest.raises(OSError, match="No space left on device"):
        end.close()


def test_a_sigkill_while_backups_are_written_in_the_background_resumes_from_the_newest_complete_one(tmp_path):
    from components.training.backups import Backups

    examples_dir = fx.write_examples(tmp_path / "examples", counts={"train": 96, "eval": 12, "test": 12})
    config = fx.tiny_config(tmp_path, epochs=2, batch_size=4, save_freq_steps=1)  # a backup every step
    process, work_dir = fx.start_trial_process(tmp_path, config, examples_dir)
    seen, logged = [], []
    for line in process.stdout:
        seen.append(line)
        logged += re.findall(r"step backup ckpt-(\d+) at epoch (\d+), step (\d+)", line)
        if len(logged) == 6:  # the thread has just finished one; the next step's is being written
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen[-20:])
    assert any("run beside the next epoch" in line for line in seen)
    newest_logged = max(int(number) for number, _, _ in logged)
    on_disk = Backups(work_dir / "backups", None).numbers()
    assert on_disk and max(on_disk) >= newest_logged and len(on_disk) <= 3  # a complete one is never pruned early

    ctx = run_train(tmp_path, config, examples_dir, work_dir=work_dir)
    resumed = [m for m in fx.messages(ctx) if m.startswith("resuming from epoch")]
    assert len(resumed) == 1, fx.messages(ctx)
    epoch, step, backup = re.match(r"resuming from epoch (\d+), step (\d+) \(backup ckpt-(\d+)", resumed[0]).groups()
    assert int(backup) >= newest_logged  # the newest complete backup, not an older one
    history = json.loads((ctx.outputs["model"] / "history.json").read_text())
    assert history["history"]["epoch"] == [1, 2]
    assert history["steps"] == 2 * 24  # no step trained twice in the count, none skipped
