"""trainer_overhead: the train stage's loop against plain `model.fit` of the same model, images/s.

Five sides, `epochs_per_round` epochs each per round, alternated after a warm-up round:
  pipeline            loop.fit on the gzip-shard reader, with the stage's backups, best weights,
                      TensorBoard scalars and sample predictions, written beside the next epoch
                      as the stage does (components/training/epoch_end.py)
  pipeline_inline     the same with that end-of-epoch work on the training thread (as before)
  pipeline_in_memory  the pipeline fed the in-memory batches instead of the reader
  pipeline_no_samples the pipeline side with train.num_sample_images=0 (no sample-prediction
                      image in TensorBoard at the end of each epoch)
  fit                 plain `model.fit` of the same network, loss and optimizer on in-memory batches
The pipeline sides' round ends when their background work has finished (the last epoch's backup
is counted in full, as a trial's is before it writes its model), and a round holds several
epochs so that the work runs beside training as it does in a run of several epochs. The ratios
say where a shortfall comes from. The pipeline's epoch is also split into the loop's own time
(steps) and the end-of-epoch work, from the loop's own clock.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks import data, timing
from benchmarks.report import Result

NAME = "trainer_overhead"
DESCRIPTION = "train stage loop vs plain model.fit, same model and batches"

SIZES = {
    "tiny": {"num_examples": 40, "image_size": 8, "batch_size": 8, "rounds": 2, "epochs_per_round": 1},
    "quick": {"num_examples": 640, "image_size": 32, "batch_size": 32, "rounds": 4, "epochs_per_round": 3},
    # ~1260 train images a epoch: the default pipeline's (900 synthetic, 70% train, one augmented copy)
    "full": {"num_examples": 1400, "image_size": 32, "batch_size": 32, "rounds": 7, "epochs_per_round": 3},
}


def run(size: str) -> Result:
    from benchmarks.trainer import PipelineTrainer, plain_keras

    s = SIZES[size]
    result = Result(NAME, DESCRIPTION, settings={"size": size, **s, "model": "cnn (default blocks)"})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="convpipe-bench-") as tmp:
        root = Path(tmp)
        config = data.pipeline_config(root, num_examples=s["num_examples"], image_size=s["image_size"],
                                      batch_size=s["batch_size"])
        examples = data.ingest(config, root)
        x, y = data.split_arrays(examples)
        images = len(x)
        memory = data.in_memory_dataset(x, y, s["batch_size"])

        pipeline = PipelineTrainer(config, examples, root / "work-pipeline")
        inline = PipelineTrainer(config, examples, root / "work-inline", placement=pipeline.placement,
                                 background=False)
        in_memory = PipelineTrainer(config, examples, root / "work-memory", placement=pipeline.placement)
        no_samples = PipelineTrainer(config, examples, root / "work-no-samples", placement=pipeline.placement,
                                     sample_images=False)
        in_memory.train_data = lambda epoch: memory  # the same loop, fed fixed in-memory batches
        model = plain_keras(config, pipeline.input_shape, len(pipeline.class_names), pipeline.steps_per_epoch,
                            jit=pipeline.jit)
        epochs = s["epochs_per_round"]
        result.settings.update({"train_images": images, "strategy": pipeline.placement.kind, "jit_compile": pipeline.jit,
                                "end_of_epoch_in_background": pipeline.end.background})

        loop_seconds: dict[str, list[float]] = {"pipeline": [], "pipeline_in_memory": []}

        def run_epochs(trainer, name=None):
            def side():
                before = trainer.progress.seconds
                for _ in range(epochs):
                    trainer.epoch()
                trainer.drain()
                if name:
                    loop_seconds[name].append(trainer.progress.seconds - before)
            return side

        seconds = timing.alternate({
            "pipeline": run_epochs(pipeline, "pipeline"),
            "pipeline_inline": run_epochs(inline),
            "pipeline_in_memory": run_epochs(in_memory, "pipeline_in_memory"),
            "pipeline_no_samples": run_epochs(no_samples),
            "fit": lambda: model.fit(memory, epochs=epochs, verbose=0),
        }, rounds=s["rounds"], warmup=1)
        parts = end_of_epoch_parts(inline, pipeline, rounds=s["rounds"])
        for trainer in (pipeline, inline, in_memory, no_samples):
            trainer.close()

    loop_seconds = {name: values[1:] for name, values in loop_seconds.items()}  # drop the warm-up epoch
    for name, values in seconds.items():
        result.sample(name, values)
    images = images * epochs  # per round
    rates = {name: result.figure(f"{name}_images_per_s", timing.rate(images, values), "images/s")
             for name, values in seconds.items()}
    loop_rate = result.figure("pipeline_steps_only_images_per_s", timing.rate(images, loop_seconds["pipeline"]),
                              "images/s", "the loop's own clock: reader + steps, without the end-of-epoch work")
    memory_loop_rate = result.figure("pipeline_in_memory_steps_only_images_per_s",
                                     timing.rate(images, loop_seconds["pipeline_in_memory"]), "images/s",
                                     "the loop's own clock on in-memory batches: the steps alone")
    end = [wall - loop for wall, loop in zip(seconds["pipeline"], loop_seconds["pipeline"])]
    result.figure("pipeline_end_of_epoch_seconds", timing.median(end) / epochs, "s",
                  "what the training thread spends per epoch outside the loop's clock: the mirror copy, "
                  "waiting for the background work, and the last epoch's work in full (per epoch)")
    for part, values in parts.items():
        result.figure(f"end_of_epoch_{part}_seconds", timing.median(values), "s")
    overall = result.ratio("pipeline_over_fit", timing.ratio(rates["pipeline"], rates["fit"]),
                           "whole epochs, the stage's loop and reader vs plain fit")
    result.ratio("pipeline_steps_only_over_fit", timing.ratio(loop_rate, rates["fit"]),
                 "without the end-of-epoch work")
    result.ratio("pipeline_inline_over_fit", timing.ratio(rates["pipeline_inline"], rates["fit"]),
                 "the end-of-epoch work on the training thread, as before epoch_end.py")
    result.ratio("pipeline_no_samples_over_fit", timing.ratio(rates["pipeline_no_samples"], rates["fit"]),
                 "whole epochs with train.num_sample_images=0")
    result.ratio("reader_over_in_memory", timing.ratio(rates["pipeline"], rates["pipeline_in_memory"]),
                 "same loop: gzip-shard reader vs in-memory batches")
    result.ratio("loop_over_fit", timing.ratio(rates["pipeline_in_memory"], rates["fit"]),
                 "same in-memory batches: the stage's loop vs fit, whole epochs")
    result.ratio("loop_steps_only_over_fit", timing.ratio(memory_loop_rate, rates["fit"]),
                 "same in-memory batches, the loop's steps alone vs fit's whole epoch")
    result.target("pipeline / fit", overall, ">=", 0.98)
    result.seconds = time.perf_counter() - started
    return result


def end_of_epoch_parts(inline, background, rounds: int) -> dict[str, list[float]]:
    """Seconds of each piece of end-of-epoch work, each timed on its own on the training thread,
    and the mirror copy that is all the background side does there."""
    epoch = inline.progress.epochs_done
    parts = {
        "backup": inline.backups.save,
        "best_weights": lambda: inline.best.save(epoch),
        "tensorboard_scalars": lambda: inline.logs.scalars(epoch, {"loss": 1.0, "accuracy": 0.5}, {}, 1e-3),
    }
    if inline.sample_predictions is not None:
        parts["sample_predictions"] = lambda: inline.sample_predictions(epoch)
    if background.end.background:
        parts["mirror_copy"] = background.end.mirror.update
    return timing.alternate(parts, rounds=rounds, warmup=1)
