"""serving_latency: the exported SavedModel on encoded images against the Keras model on decoded tensors.

The export stage's SavedModel (components/serving/, written and loaded as export does) is called
per request, batch 1 and batch 32; every call is timed, and p50/p95 come from all calls of a side.
Sides, alternated in blocks of calls after a warm-up block:
  serving_default  signature on PNG bytes: decode + resize in the graph, model, softmax/argmax/names
  serving_images   signature on decoded float images: the model and post-processing only
  keras_function   the Keras model under tf.function on the decoded images (what a compiled
                   signature costs without decoding and post-processing: the target's baseline)
  keras_call       `model(images, training=False)`, eager, layer by layer
  decode_only      probe: the signature's decoding step alone (map_fn of the reader's
                   decode_image_tensor, resize included) under tf.function
  decode_png_only  probe: the same with tf.io.decode_png and no resize, the cheapest decode
serving_default over serving_images is the in-graph decoding; serving_images over keras_function
is the post-processing and signature call.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks import data, timing
from benchmarks.report import Result

NAME = "serving_latency"
DESCRIPTION = "SavedModel serving_default on encoded images vs the Keras model on decoded tensors"

SIZES = {
    "tiny": {"image_size": 8, "calls": 5, "rounds": 2},
    "quick": {"image_size": 32, "calls": 20, "rounds": 4},
    "full": {"image_size": 32, "calls": 50, "rounds": 7},
}
BATCHES = (1, 32)


def run(size: str) -> Result:
    import tensorflow as tf

    from components import serving
    from components.examples import decode_image_tensor, encode_image
    from components.sources.synthetic import class_names
    from models import build_model

    s = SIZES[size]
    image_shape = (s["image_size"], s["image_size"], 3)
    result = Result(NAME, DESCRIPTION, settings={"size": size, **s, "model": "cnn (default blocks)", "format": "png"})
    started = time.perf_counter()
    names = class_names(3, "classification")
    model = build_model("cnn", image_shape, len(names))
    x, _ = data.synthetic_arrays("classification", max(BATCHES), s["image_size"])
    encoded = [encode_image((image * 255).round().astype("uint8")) for image in x]
    decoded = serving.decode_images(encoded, image_shape)
    with tempfile.TemporaryDirectory(prefix="convpipe-bench-") as tmp:
        path = Path(tmp) / "1"
        serving.write_saved_model(model, names, image_shape, path, {"benchmark": NAME})
        served = serving.ServedModel(path)
        by_bytes = served.loaded.signatures[serving.BYTES_SIGNATURE]
        by_images = served.loaded.signatures[serving.IMAGES_SIGNATURE]
        compiled = tf.function(lambda images: model(images, training=False))
        signature = tf.TensorSpec(image_shape, tf.float32)
        decode_only = tf.function(lambda b: tf.map_fn(lambda e: decode_image_tensor(e, 3, image_shape[:2]), b,
                                                      fn_output_signature=signature))
        decode_png_only = tf.function(lambda b: tf.map_fn(
            lambda e: tf.image.convert_image_dtype(tf.io.decode_png(e, 3), tf.float32), b,
            fn_output_signature=tf.TensorSpec([None, None, 3], tf.float32)))

        latencies: dict[str, list[float]] = {}

        def block(name, call, argument):
            def side():
                times = latencies.setdefault(name, [])
                total = 0.0
                for _ in range(s["calls"]):
                    t0 = time.perf_counter()
                    outputs = call(argument)
                    _materialise(outputs)
                    elapsed = time.perf_counter() - t0
                    times.append(elapsed)
                    total += elapsed
                return total
            return side

        sides = {}
        for batch in BATCHES:
            bytes_in = tf.constant(encoded[:batch], dtype=tf.string)
            images_in = tf.constant(decoded[:batch])
            sides[f"serving_default/{batch}"] = block(f"serving_default/{batch}",
                                                      lambda v: by_bytes(**{serving.BYTES_INPUT: v}), bytes_in)
            sides[f"serving_images/{batch}"] = block(f"serving_images/{batch}",
                                                     lambda v: by_images(**{serving.IMAGES_INPUT: v}), images_in)
            sides[f"keras_function/{batch}"] = block(f"keras_function/{batch}", compiled, images_in)
            sides[f"keras_call/{batch}"] = block(f"keras_call/{batch}", lambda v: model(v, training=False), images_in)
            if batch > 1:
                sides[f"decode_only/{batch}"] = block(f"decode_only/{batch}", decode_only, bytes_in)
                sides[f"decode_png_only/{batch}"] = block(f"decode_png_only/{batch}", decode_png_only, bytes_in)
        timing.alternate(sides, rounds=1, warmup=1)  # warm-up block, then forget its latencies
        latencies.clear()
        timing.alternate(sides, rounds=s["rounds"], warmup=0)

    p50 = {}
    for name, times in latencies.items():
        batch = int(name.split("/")[1])
        p50[name] = result.figure(f"{name}_p50_ms", 1000 * timing.percentile(times, 50), "ms")
        result.figure(f"{name}_p95_ms", 1000 * timing.percentile(times, 95), "ms")
        if batch > 1:
            result.figure(f"{name}_p50_ms_per_image", 1000 * timing.percentile(times, 50) / batch, "ms/image")
    for batch in BATCHES:
        result.ratio(f"bytes_over_images/{batch}", timing.ratio(p50[f"serving_default/{batch}"], p50[f"serving_images/{batch}"]),
                     "serving_default / serving_images p50: the cost of decoding in the graph")
        result.ratio(f"signature_over_keras_function/{batch}",
                     timing.ratio(p50[f"serving_images/{batch}"], p50[f"keras_function/{batch}"]),
                     "serving_images / keras_function p50: post-processing and the signature call")
    big = max(BATCHES)
    over_function = result.ratio(f"serving_default_over_keras_function/{big}",
                                 timing.ratio(p50[f"serving_default/{big}"], p50[f"keras_function/{big}"]),
                                 "p50 per image; the target's ratio")
    result.ratio(f"serving_default_over_keras_call/{big}",
                 timing.ratio(p50[f"serving_default/{big}"], p50[f"keras_call/{big}"]), "p50 per image, eager call")
    result.target(f"batch-{big} p50 per image: serving_default / Keras", over_function, "<=", 1.2)
    result.seconds = time.perf_counter() - started
    return result


def _materialise(outputs) -> None:
    """Wait for the results the way a client would (copy them to the host)."""
    import tensorflow as tf

    for value in tf.nest.flatten(outputs):
        value.numpy()
