"""trainer_overhead: the train stage's loop against plain `model.fit` of the same model, images/s.

Three sides, one epoch each per round, alternated after a warm-up epoch:
  pipeline            loop.fit on the gzip-shard reader, with the stage's backups, best weights,
                      TensorBoard scalars and sample predictions (components/training/)
  pipeline_in_memory  the same loop fed the in-memory batches instead of the reader
  pipeline_no_samples the pipeline side with train.num_sample_images=0 (no sample-prediction
                      image in TensorBoard at the end of each epoch)
  fit                 plain `model.fit` of the same network, loss and optimizer on in-memory batches
The first two differ only in the input, the last two only in the loop, so the ratios say where
a shortfall comes from. The pipeline's epoch is also split into the loop's own time (steps) and
the end-of-epoch work (backups, best weights, summaries), from the loop's own clock.
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
    "tiny": {"num_examples": 40, "image_size": 8, "batch_size": 8, "rounds": 2},
    "quick": {"num_examples": 640, "image_size": 32, "batch_size": 32, "rounds": 4},
    # ~1260 train images a epoch: the default pipeline's (900 synthetic, 70% train, one augmented copy)
    "full": {"num_examples": 1400, "image_size": 32, "batch_size": 32, "rounds": 7},
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
        in_memory = PipelineTrainer(config, examples, root / "work-memory", placement=pipeline.placement)
        no_samples = PipelineTrainer(config, examples, root / "work-no-samples", placement=pipeline.placement,
                                     sample_images=False)
        in_memory.train_data = lambda epoch: memory  # the same loop, fed fixed in-memory batches
        model = plain_keras(config, pipeline.input_shape, len(pipeline.class_names), pipeline.steps_per_epoch,
                            jit=pipeline.jit)
        result.settings.update({"train_images": images, "strategy": pipeline.placement.kind, "jit_compile": pipeline.jit})

        loop_seconds: dict[str, list[float]] = {"pipeline": [], "pipeline_in_memory": []}

        def on_loop_clock(name, trainer):
            def epoch():
                before = trainer.progress.seconds
                trainer.epoch()
                loop_seconds[name].append(trainer.progress.seconds - before)
            return epoch

        seconds = timing.alternate({
            "pipeline": on_loop_clock("pipeline", pipeline),
            "pipeline_in_memory": on_loop_clock("pipeline_in_memory", in_memory),
            "pipeline_no_samples": no_samples.epoch,
            "fit": lambda: model.fit(memory, epochs=1, verbose=0),
        }, rounds=s["rounds"], warmup=1)
        parts = end_of_epoch_parts(pipeline, rounds=s["rounds"])
        for trainer in (pipeline, in_memory, no_samples):
            trainer.close()

    loop_seconds = {name: values[1:] for name, values in loop_seconds.items()}  # drop the warm-up epoch
    for name, values in seconds.items():
        result.sample(name, values)
    rates = {name: result.figure(f"{name}_images_per_s", timing.rate(images, values), "images/s")
             for name, values in seconds.items()}
    loop_rate = result.figure("pipeline_steps_only_images_per_s", timing.rate(images, loop_seconds["pipeline"]),
                              "images/s", "the loop's own clock: reader + steps, without the end-of-epoch work")
    memory_loop_rate = result.figure("pipeline_in_memory_steps_only_images_per_s",
                                     timing.rate(images, loop_seconds["pipeline_in_memory"]), "images/s",
                                     "the loop's own clock on in-memory batches: the steps alone")
    end = [wall - loop for wall, loop in zip(seconds["pipeline"], loop_seconds["pipeline"])]
    result.figure("pipeline_end_of_epoch_seconds", timing.median(end), "s",
                  "backups, best weights, TensorBoard scalars and sample predictions per epoch")
    for part, values in parts.items():
        result.figure(f"end_of_epoch_{part}_seconds", timing.median(values), "s")
    overall = result.ratio("pipeline_over_fit", timing.ratio(rates["pipeline"], rates["fit"]),
                           "whole epochs, the stage's loop and reader vs plain fit")
    result.ratio("pipeline_steps_only_over_fit", timing.ratio(loop_rate, rates["fit"]),
                 "without the end-of-epoch work")
    result.ratio("pipeline_no_samples_over_fit", timing.ratio(rates["pipeline_no_samples"], rates["fit"]),
                 "whole epochs with train.num_sample_images=0")
    result.ratio("reader_over_in_memory", timing.ratio(rates["pipeline"], rates["pipeline_in_memory"]),
                 "same loop: gzip-shard reader vs in-memory batches")
    result.ratio("loop_over_fit", timing.ratio(rates["pipeline_in_memory"], rates["fit"]),
                 "same in-memory batches: the stage's loop vs fit, whole epochs")
    result.ratio("loop_steps_only_over_fit", timing.ratio(memory_loop_rate, rates["fit"]),
                 "same in-memory batches, the loop's steps alone vs fit's whole epoch")
    result.target("pipeline / fit", overall, ">=", 0.95)
    result.seconds = time.perf_counter() - started
    return result


def end_of_epoch_parts(pipeline, rounds: int) -> dict[str, list[float]]:
    """Seconds of each piece of work the loop does after an epoch's steps, each timed on its own."""
    epoch = pipeline.progress.epochs_done
    return timing.alternate({
        "backup": pipeline.backups.save,
        "best_weights": lambda: pipeline.best.save(epoch),
        "tensorboard_scalars": lambda: pipeline.logs.scalars(epoch, {"loss": 1.0, "accuracy": 0.5}, {}, 1e-3),
        "sample_predictions": lambda: pipeline.on_epoch_end(epoch),
    }, rounds=rounds, warmup=0)
