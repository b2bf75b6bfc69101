"""compute_efficiency: the default CNN's training FLOP/s as a fraction of the machine's matmul peak.

The peak is what TensorFlow gets from a large `tf.linalg.matmul` of the side's own dtype on this
machine (float32, and bfloat16 for the mixed_bfloat16 sides, since a CPU without bfloat16 units
runs bfloat16 far below its float32 peak); the CNN's FLOPs are counted from its layer shapes
(benchmarks/flops.py), times three for training. All run in turn in one process, so the fraction
is measured under the same load. Besides the default 32x32 the CNN is measured at 64x64 and
128x128 inputs (`size_64`, `size_128`, float32 and bfloat16), the sizes where convolutions, not
per-op overhead, should dominate. The train step is the
stage's own (`StepFunctions`, default strategy) on batches already in memory, so input costs nothing.

Variants change one thing each against the same baseline, in the same alternation:
  jit             jit_compile=True (XLA)
  batch_<n>       a larger batch
  channels_first  the same network with NCHW tensors (benchmarks/cnn_variants.py)
  keras_bn        the same network with Keras's own BatchNormalization, which the CNN used before
                  models/layers/fused_batch_normalization.py (TensorFlow's fused kernel)
  mixed_bfloat16  Keras's mixed_bfloat16 policy (train.precision), against the bfloat16 peak
and, in a fresh process each (the full size only), thread-pool sizes set through
`tf.config.threading` and oneDNN turned off (TF_ENABLE_ONEDNN_OPTS=0).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from benchmarks import timing
from benchmarks.report import Result

NAME = "compute_efficiency"
DESCRIPTION = "default CNN training FLOP/s as a fraction of measured matmul peak"

SIZES = {
    "tiny": {"matmul": 512, "image_size": 16, "images_per_run": 64, "rounds": 2, "variants": False, "threads": False,
             "sizes": (16,)},
    "quick": {"matmul": 2048, "image_size": 32, "images_per_run": 512, "rounds": 4, "variants": True, "threads": False,
              "sizes": (64, 128)},
    "full": {"matmul": 2048, "image_size": 32, "images_per_run": 1024, "rounds": 7, "variants": True, "threads": True,
             "sizes": (64, 128)},
}

BASELINE = {"batch_size": 32, "jit": False, "layout": "channels_last", "batch_norm": "fused", "precision": "float32"}
VARIANTS = {
    "jit": {"jit": True},
    "batch_64": {"batch_size": 64},
    "batch_128": {"batch_size": 128},
    "batch_256": {"batch_size": 256},
    "batch_128_jit": {"batch_size": 128, "jit": True},
    "channels_first": {"layout": "channels_first"},
    "keras_bn": {"batch_norm": "keras"},
    "mixed_bfloat16": {"precision": "mixed_bfloat16"},
}
THREAD_SETTINGS = {
    "intra1_inter1": {"intra": 1, "inter": 1},
    "intra2_inter1": {"intra": 2, "inter": 1},
    "intra1_inter2": {"intra": 1, "inter": 2},
    "intra2_inter2": {"intra": 2, "inter": 2},
    "intra4_inter1": {"intra": 4, "inter": 1},
    "onednn_off": {"onednn": False},
}
CLASSES = 3


class CnnSide:
    """One variant's model and train step over a fixed list of in-memory batches."""

    def __init__(self, variant: dict, image_size: int, images_per_run: int):
        image_size = variant.get("image_size", image_size)
        import keras
        import numpy as np
        import tensorflow as tf

        from benchmarks.cnn_variants import replica_cnn
        from benchmarks.flops import training_flops_per_example
        from components.training.loop import StepFunctions
        from models import build_model, get_loss

        self.variant = variant
        keras.utils.set_random_seed(0)
        policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy(variant["precision"])
        try:
            if variant["layout"] == "channels_last" and variant["batch_norm"] == "fused":  # models.classification.cnn's own
                self.model = build_model("cnn", (image_size, image_size, 3), CLASSES)
            else:
                self.model = replica_cnn(image_size, 3, CLASSES, variant["layout"], variant["batch_norm"])
        finally:
            keras.config.set_dtype_policy(policy)
        self.flops_per_image = training_flops_per_example(self.model)
        optimizer = keras.optimizers.Adam(1e-3)
        optimizer.build(self.model.trainable_variables)
        self.steps = StepFunctions(tf.distribute.get_strategy(), self.model, optimizer,
                                   get_loss("categorical_crossentropy"), jit_compile=variant["jit"])
        batch = variant["batch_size"]
        count = max(2, images_per_run * 32 * 32 // (image_size * image_size) // batch)  # equal FLOPs a run
        rng = np.random.default_rng(0)
        self.batches = []
        for _ in range(count):
            x = rng.random((batch, image_size, image_size, 3), dtype=np.float32)
            if variant["layout"] == "channels_first":
                x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
            y = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, batch)]
            self.batches.append((tf.constant(x), tf.constant(y)))
        self.images = count * batch

    def __call__(self):
        for batch in self.batches:
            {k: float(v) for k, v in self.steps.train_step(batch).items()}


def matmul_side(n: int, dtype: str = "float32"):
    import tensorflow as tf

    a = tf.cast(tf.random.normal((n, n), seed=1), dtype)
    b = tf.cast(tf.random.normal((n, n), seed=2), dtype)
    matmul = tf.function(tf.linalg.matmul)

    def side():
        matmul(a, b)[0, 0].numpy()  # returns None: timed as a whole
    return side


def peak_dtype(variant: dict) -> str:
    return "bfloat16" if variant.get("precision") == "mixed_bfloat16" else "float32"


def measure(variants: dict[str, dict], s: dict) -> dict:
    """Alternate the matmuls and every variant; per side: seconds, images a run and training FLOPs an image."""
    dtypes = sorted({peak_dtype({**BASELINE, **change}) for change in variants.values()})
    sides = {("matmul" if dtype == "float32" else f"matmul_{dtype}"): matmul_side(s["matmul"], dtype)
             for dtype in dtypes}
    cnns = {}
    for name, change in variants.items():
        cnns[name] = CnnSide({**BASELINE, **change}, s["image_size"], s["images_per_run"])
        sides[name] = cnns[name]
    seconds = timing.alternate(sides, rounds=s["rounds"], warmup=1)
    return {"matmul_flops": 2.0 * s["matmul"] ** 3, "seconds": seconds,
            "images": {name: side.images for name, side in cnns.items()},
            "flops_per_image": {name: side.flops_per_image for name, side in cnns.items()},
            "peak_dtype": {name: peak_dtype({**BASELINE, **change}) for name, change in variants.items()}}


def size_variants(sizes) -> dict[str, dict]:
    """The CNN at larger inputs, float32 and bfloat16: `size_<n>` and `size_<n>_bf16`."""
    found = {}
    for n in sizes:
        found[f"size_{n}"] = {"image_size": n}
        found[f"size_{n}_bf16"] = {"image_size": n, "precision": "mixed_bfloat16"}
    return found


def run(size: str) -> Result:
    from benchmarks.subprocesses import run_worker

    s = SIZES[size]
    result = Result(NAME, DESCRIPTION, settings={"size": size, **s, "model": "cnn (default blocks)",
                                                 "flops": "conv + dense multiply-adds x2, training = 3x forward"})
    started = time.perf_counter()
    variants = {"baseline": {}, "jit": VARIANTS["jit"]}
    if s["variants"]:
        variants.update(VARIANTS)
    variants.update(size_variants(s["sizes"]))
    measured = measure(variants, s)
    peaks = _report_peaks(result, measured)
    base_rate = None
    for name in variants:
        rate = _report_variant(result, measured, name, peaks[measured["peak_dtype"][name]])
        if name == "baseline":
            base_rate = rate
        elif "image_size" not in variants[name]:
            result.ratio(f"{name}_over_baseline", timing.ratio(rate, base_rate), "images/s, same alternation")
    for n in s["sizes"]:
        result.ratio(f"size_{n}_bf16_over_float32", timing.ratio(result.figures[f"size_{n}_bf16_images_per_s"]["value"],
                                                                 result.figures[f"size_{n}_images_per_s"]["value"]),
                     f"images/s at {n}x{n}, mixed_bfloat16 / float32")
    biggest = max(s["sizes"])
    for n in sorted(set(s["sizes"]) & {64} or {biggest}):
        result.target(f"fraction of float32 matmul peak at {n}x{n}",
                      result.figures[f"size_{n}_fraction_of_peak"]["value"], ">=", 0.5)

    if s["threads"]:
        for name, setting in THREAD_SETTINGS.items():
            env = {} if setting.get("onednn", True) else {"TF_ENABLE_ONEDNN_OPTS": "0"}
            answer = run_worker("benchmarks.compute_efficiency", {"size": size, **setting}, env=env)
            _report_setting(result, name, answer)
    result.seconds = time.perf_counter() - started
    return result


def _report_peaks(result: Result, measured: dict) -> dict[str, float]:
    """GFLOP/s of the matmul of each dtype (the median of its alternated runs)."""
    peaks = {}
    for dtype in sorted(set(measured["peak_dtype"].values())):
        name = "matmul" if dtype == "float32" else f"matmul_{dtype}"
        seconds = measured["seconds"][name]
        result.sample(name, seconds)
        result.figure(f"{name}_gflops_best", measured["matmul_flops"] / min(seconds) / 1e9, "GFLOP/s")
        peaks[dtype] = result.figure(f"{name}_peak_gflops", timing.rate(measured["matmul_flops"], seconds) / 1e9,
                                     "GFLOP/s", "median of the alternated runs: the peak under this run's load")
    if "bfloat16" in peaks:
        result.ratio("matmul_bfloat16_over_float32", timing.ratio(peaks["bfloat16"], peaks["float32"]),
                     "the same matmul in bfloat16 / float32 (above 1 only with bfloat16 matrix units)")
    return peaks


def _report_variant(result: Result, measured: dict, name: str, peak: float) -> float:
    seconds = measured["seconds"][name]
    images = measured["images"][name]
    result.sample(name, seconds)
    rate = result.figure(f"{name}_images_per_s", timing.rate(images, seconds), "images/s")
    gflops = result.figure(f"{name}_train_gflops", rate * measured["flops_per_image"][name] / 1e9, "GFLOP/s")
    result.figure(f"{name}_fraction_of_peak", gflops / peak, f"of {measured['peak_dtype'][name]} matmul peak",
                  "training FLOP/s / median matmul FLOP/s of the same dtype")
    return rate


def _report_setting(result: Result, name: str, answer: dict) -> None:
    """A thread/oneDNN setting measured in its own process: its own peak, baseline and jit."""
    peak = timing.rate(answer["matmul_flops"], answer["seconds"]["matmul"]) / 1e9  # float32 sides only
    for side in ("baseline", "jit"):
        images, seconds = answer["images"][side], answer["seconds"][side]
        rate = timing.rate(images, seconds)
        gflops = rate * answer["flops_per_image"][side] / 1e9
        result.figure(f"{name}/{side}_images_per_s", rate, "images/s")
        result.figure(f"{name}/{side}_fraction_of_peak", gflops / peak, f"of its own matmul peak ({peak:.0f} GFLOP/s)")
    result.figure(f"{name}/matmul_peak_gflops", peak, "GFLOP/s")


def _worker(payload: dict) -> dict:
    """In a fresh process: set the thread pools before TensorFlow starts, then measure baseline and jit."""
    import tensorflow as tf

    if "intra" in payload:
        tf.config.threading.set_intra_op_parallelism_threads(payload["intra"])
    if "inter" in payload:
        tf.config.threading.set_inter_op_parallelism_threads(payload["inter"])
    measured = measure({"baseline": {}, "jit": VARIANTS["jit"]}, SIZES[payload["size"]])  # float32 only
    measured["threads"] = {"intra": tf.config.threading.get_intra_op_parallelism_threads(),
                           "inter": tf.config.threading.get_inter_op_parallelism_threads()}
    return measured


if __name__ == "__main__":
    from benchmarks.subprocesses import answer

    parser = argparse.ArgumentParser(description="compute_efficiency worker (one setting in a fresh process)")
    parser.add_argument("--worker", required=True, help="JSON: size, and intra/inter thread counts")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    answer(_worker(json.loads(parser.parse_args().worker)))
    sys.exit(0)
