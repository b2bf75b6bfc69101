"""The gradient-descent variants through the real train stage and its loop: batch GD makes one update
per epoch, stochastic GD one per training example, mini-batch ceil(n / batch) (counted by the
optimizer's own `iterations`, read from the per-epoch backups); and every variant starts from the
same weights for the same seed, one trial after another in one process."""
import json

import numpy as np
import pytest

from tests.components import classification_fixtures as fx

TRAIN_EXAMPLES = 12


def iterations_per_backup(work_dir) -> list[int]:
    """The optimizer's iteration counter in every backup under `work_dir`, in order."""
    import tensorflow as tf

    counts = []
    for index in work_dir.rglob("*.index"):
        prefix = str(index)[:-len(".index")]
        names = [n for n, _ in tf.train.list_variables(prefix) if n.startswith("optimizer/") and "iterations" in n]
        if names:
            counts.append(int(tf.train.load_variable(prefix, names[0])))
    return sorted(counts)


def train(tmp_path, optimizer: str, epochs: int = 2, learning_rate: float = 0.05, seed: int = 0, tag: str = ""):
    from components.train.stage import STAGE

    examples = tmp_path / "examples"
    if not examples.exists():
        fx.write_examples(examples, {"train": TRAIN_EXAMPLES, "eval": 6, "test": 6})
    config = fx.tiny_config(tmp_path, epochs=epochs, batch_size=5, seed=seed, num_sample_images=0,
                            optimizer={"name": optimizer, "learning_rate": learning_rate})
    work = tmp_path / f"work-{optimizer}{tag}"
    ctx = fx.context(config, tmp_path, f"train-{optimizer}{tag}", {"examples": examples}, ["model"], work_dir=work)
    STAGE.executor(ctx)
    return ctx, work


@pytest.mark.parametrize("optimizer, batch, updates_per_epoch", [
    ("batch_gd", TRAIN_EXAMPLES, 1), ("stochastic_gd", 1, TRAIN_EXAMPLES), ("sgd", 5, 3)])
def test_updates_per_epoch_through_the_train_loop(tmp_path, optimizer, batch, updates_per_epoch):
    ctx, work = train(tmp_path, optimizer)
    trial = json.loads((ctx.outputs["model"] / "trial.json").read_text())
    assert trial["params"]["effective_batch_size"] == batch
    assert trial["params"]["steps_per_epoch"] == updates_per_epoch
    # the optimizer's own counter after epoch 1 and after epoch 2
    assert iterations_per_backup(work) == [updates_per_epoch, 2 * updates_per_epoch]
    history = json.loads((ctx.outputs["model"] / "history.json").read_text())
    assert history["history"]["steps"] == [updates_per_epoch, 2 * updates_per_epoch] and trial["steps"] == 2 * updates_per_epoch


def test_every_variant_starts_from_the_same_weights_for_one_seed(tmp_path):
    """A learning rate of 1e-9 leaves the weights where they started (to 1e-6): the trials, trained one after
    another in this process, agree; a different seed starts elsewhere."""
    from components.training.model_artifact import load_keras_model

    weights = {}
    for optimizer, seed in (("momentum", 3), ("adam", 3), ("adagrad", 3), ("momentum", 4)):
        ctx, _ = train(tmp_path, optimizer, epochs=1, learning_rate=1e-9, seed=seed, tag=f"-{seed}")
        weights[optimizer, seed] = load_keras_model(ctx.outputs["model"]).get_weights()
    for key in (("adam", 3), ("adagrad", 3)):
        for a, b in zip(weights["momentum", 3], weights[key]):
            np.testing.assert_allclose(a, b, atol=1e-6)
    assert not all(np.allclose(a, b, atol=1e-3) for a, b in zip(weights["momentum", 3], weights["momentum", 4]))
