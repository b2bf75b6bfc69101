"""precision_speed: the train stage's loop under mixed_bfloat16 against float32, images/s and test accuracy.

Two `PipelineTrainer`s (benchmarks/trainer.py: the stage's strategy, model, optimizer, reader,
backups and TensorBoard work) train the default CNN from the same seed on the same 64x64 synthetic
Examples, one under `train.precision=float32` and one under `mixed_bfloat16`; their epochs
alternate after a warm-up epoch each. After the same number of epochs both are scored on the test
split. Also recorded: what `train.precision=auto` picks on this machine and why (the CPU flags and
GPUs it looked at), since bfloat16 only pays where the hardware has bfloat16 matrix units.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks import data, timing
from benchmarks.report import Result

NAME = "precision_speed"
DESCRIPTION = "train stage loop, mixed_bfloat16 vs float32 at 64x64: images/s and test accuracy"

SIZES = {
    "tiny": {"num_examples": 40, "image_size": 16, "batch_size": 8, "epochs": 2},
    "quick": {"num_examples": 600, "image_size": 64, "batch_size": 32, "epochs": 4},
    "full": {"num_examples": 1400, "image_size": 64, "batch_size": 32, "epochs": 8},
}
PRECISIONS = ("float32", "mixed_bfloat16")


def run(size: str) -> Result:
    import keras
    import numpy as np

    from benchmarks.trainer import PipelineTrainer
    from components.training import precision

    s = SIZES[size]
    result = Result(NAME, DESCRIPTION, settings={"size": size, **s, "model": "cnn (default blocks)"})
    started = time.perf_counter()
    auto, reason = precision.choose("auto", on_gpu=bool(_gpus()))
    result.settings.update({"auto_picks": auto, "auto_reason": reason,
                            "bfloat16_cpu_flags": sorted(precision.cpu_flags() & {"amx_bf16", "avx512_bf16"})})
    with tempfile.TemporaryDirectory(prefix="convpipe-bench-") as tmp:
        root = Path(tmp)
        trainers = {}
        examples = None
        for policy in PRECISIONS:
            config = data.pipeline_config(root, num_examples=s["num_examples"], image_size=s["image_size"],
                                          batch_size=s["batch_size"], overrides=[f"train.precision={policy}"])
            if examples is None:
                examples = data.ingest(config, root)
            try:
                trainers[policy] = PipelineTrainer(config, examples, root / f"work-{policy}")
            finally:
                keras.config.set_dtype_policy("float32")
        images = trainers["float32"].train_size
        result.settings["train_images"] = images

        def epoch(trainer):
            def side():
                trainer.epoch()
                trainer.drain()
            return side

        seconds = timing.alternate({policy: epoch(trainer) for policy, trainer in trainers.items()},
                                   rounds=s["epochs"] - 1, warmup=1)
        x, y = data.split_arrays(examples, "test")
        accuracy = {}
        for policy, trainer in trainers.items():
            logits = np.concatenate([np.asarray(trainer.model(x[i:i + 256], training=False), np.float32)
                                     for i in range(0, len(x), 256)])
            accuracy[policy] = float((logits.argmax(-1) == np.asarray(y).argmax(-1)).mean())
            trainer.close()

    for policy, values in seconds.items():
        result.sample(policy, values)
    rates = {policy: result.figure(f"{policy}_images_per_s", timing.rate(images, values), "images/s")
             for policy, values in seconds.items()}
    for policy, value in accuracy.items():
        result.figure(f"{policy}_test_accuracy", value, "", f"after {s['epochs']} epochs, {len(x)} test images")
    speed = result.ratio("mixed_bfloat16_over_float32", timing.ratio(rates["mixed_bfloat16"], rates["float32"]),
                         "images/s, the stage's loop, alternated epochs")
    gap = result.figure("accuracy_gap", abs(accuracy["mixed_bfloat16"] - accuracy["float32"]), "",
                        "|test accuracy bf16 - float32| after the same epochs")
    result.target("mixed_bfloat16 / float32 images/s", speed, ">=", 1.8)
    result.target("test accuracy gap", gap, "<=", 0.01)
    result.seconds = time.perf_counter() - started
    return result


def _gpus() -> list:
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")
