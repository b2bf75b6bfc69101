"""scaling: images/s of MirroredStrategy over 1 and 2 logical CPU devices, per model family.

Logical CPU devices are fixed when TensorFlow starts, so each device count runs in a fresh
process (`python -m benchmarks.scaling --worker ...`), and the two are alternated as whole
processes. Inside a worker, the strategy comes from the train stage's own `make_strategy`
("mirrored", logical_cpu_devices=N); each family trains on in-memory synthetic batches of one
global batch size, so 2 devices means half the batch per replica:
  cnn        the default classification CNN (the stage's StepFunctions)
  video      slow fusion over 8-frame clips, as configs/video.json (StepFunctions; clips/s, frames/s)
  detector   the one-stage detector; its step differentiates `model.compute_loss` (the detector
             interface has no train_step), with gradients summed over replicas
Each worker times a warm-up epoch, then `epochs` epochs per family, and reports the median.
A worker spends 30-50 s starting TensorFlow and tracing three models, so --quick runs one
process per device count (A B) and the full size alternates three (A B A B A B).
Both logical devices share this machine's cores and one intra-op thread pool, so two replicas
can only gain where one replica leaves cores idle.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from benchmarks import timing
from benchmarks.report import Result

NAME = "scaling"
DESCRIPTION = "MirroredStrategy on 1 vs 2 logical CPU devices; cnn, video and detector images/s"

SIZES = {
    "tiny": {"processes": 1, "epochs": 2, "cnn": (32, 8, 8), "video": (8, 8, 8, 4), "detector": (8, 32, 4)},
    "quick": {"processes": 1, "epochs": 3, "cnn": (256, 32, 32), "video": (32, 32, 16, 8), "detector": (32, 64, 16)},
    "full": {"processes": 3, "epochs": 5, "cnn": (1024, 32, 32), "video": (128, 32, 32, 8), "detector": (128, 64, 16)},
}
"""cnn: (images, size, batch); video: (clips, size, batch, frames); detector: (images, size, batch)."""
DEVICES = (1, 2)
VIDEO_MODEL = {"fusion": "slow", "filters": [16, 32, 32], "dense_units": 64}


def run(size: str) -> Result:
    from benchmarks.subprocesses import run_worker

    s = SIZES[size]
    result = Result(NAME, DESCRIPTION, settings={"size": size, **{k: list(v) if isinstance(v, tuple) else v
                                                                for k, v in s.items()}, "video_model": VIDEO_MODEL})
    started = time.perf_counter()
    answers: dict[int, list[dict]] = {n: [] for n in DEVICES}
    for _ in range(s["processes"]):
        for devices in DEVICES:
            answers[devices].append(run_worker("benchmarks.scaling", {"size": size, "devices": devices}))
    for family in ("cnn", "video", "detector"):
        rates = {}
        for devices in DEVICES:
            per_process = [a[family]["images"] / timing.median(a[family]["seconds"]) for a in answers[devices]]
            result.sample(f"{family}/{devices}_devices", [t for a in answers[devices] for t in a[family]["seconds"]])
            unit = "clips/s" if family == "video" else "images/s"
            rates[devices] = result.figure(f"{family}/{devices}_devices_{unit.split('/')[0]}_per_s",
                                           timing.median(per_process), unit)
            if family == "video":
                result.figure(f"video/{devices}_devices_frames_per_s", rates[devices] * s["video"][3], "frames/s")
        result.ratio(f"{family}/2_devices_over_1", timing.ratio(rates[2], rates[1]), "MirroredStrategy, same global batch")
    result.settings["strategy"] = answers[2][0]["strategy"]
    result.settings["replicas"] = {n: answers[n][0]["replicas"] for n in DEVICES}
    result.seconds = time.perf_counter() - started
    return result


# ------------------------------------------------------------------------------------------------
# the worker: one device count, every family
# ------------------------------------------------------------------------------------------------
def _detector_step(strategy, model, optimizer):
    import tensorflow as tf

    def replica(x, boxes, labels):
        with tf.GradientTape() as tape:
            loss = model.compute_loss((x, {"boxes": boxes, "labels": labels}))["loss"]
            scaled = loss / strategy.num_replicas_in_sync
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return loss

    @tf.function
    def step(batch):
        x, targets = batch
        losses = strategy.run(replica, args=(x, targets["boxes"], targets["labels"]))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, losses, axis=None)

    return lambda batch: float(step(batch))


def _distribute(strategy, dataset):
    """As the train loop distributes its global batches (StepFunctions.distribute): sharded by data."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def _family(name: str, s: dict, placement):
    """(train one epoch, images an epoch) for one model family under the placement's strategy."""
    import keras

    from benchmarks import data
    from components.training.loop import StepFunctions
    from models import build_model, get_loss

    strategy = placement.strategy
    keras.utils.set_random_seed(0)
    if name == "detector":
        count, image_size, batch = s["detector"]
        x, y = data.synthetic_arrays("detection", count, image_size, max_shapes=3)
        with strategy.scope():
            model = build_model("detector", (image_size, image_size, 3), 3)
            optimizer = keras.optimizers.Adam(1e-3)
            optimizer.build(model.trainable_variables)
        step = _detector_step(strategy, model, optimizer)
    else:
        if name == "video":
            count, image_size, batch, frames = s["video"]
            x, y = data.synthetic_arrays("video", count, image_size, num_classes=4, num_frames=frames)
        else:
            count, image_size, batch = s["cnn"]
            x, y = data.synthetic_arrays("classification", count, image_size)
        with strategy.scope():
            model = (build_model("video", x.shape[1:], 4, **VIDEO_MODEL) if name == "video"
                     else build_model("cnn", x.shape[1:], 3))
            optimizer = keras.optimizers.Adam(1e-3)
            optimizer.build(model.trainable_variables)
            steps = StepFunctions(strategy, model, optimizer, get_loss("categorical_crossentropy"))

        def step(batch):
            return {k: float(v) for k, v in steps.train_step(batch).items()}
    distributed = _distribute(strategy, data.in_memory_dataset(x, y, batch))

    def epoch():
        for batch_ in distributed:
            step(batch_)
    return epoch, count


def _worker(payload: dict) -> dict:
    from components.training.strategy import make_strategy

    placement = make_strategy("mirrored", payload["devices"])  # before any other TensorFlow op
    s = SIZES[payload["size"]]
    answer = {"strategy": placement.kind, "replicas": placement.num_replicas}
    for name in ("cnn", "video", "detector"):
        epoch, images = _family(name, s, placement)
        epoch()  # warm-up: tracing
        seconds = []
        for _ in range(s["epochs"]):
            t0 = time.perf_counter()
            epoch()
            seconds.append(time.perf_counter() - t0)
        answer[name] = {"images": images, "seconds": seconds}
    return answer


if __name__ == "__main__":
    from benchmarks.subprocesses import answer

    parser = argparse.ArgumentParser(description="scaling worker (one logical device count in a fresh process)")
    parser.add_argument("--worker", required=True, help='JSON: {"size": ..., "devices": N}')
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    answer(_worker(json.loads(parser.parse_args().worker)))
    sys.exit(0)
