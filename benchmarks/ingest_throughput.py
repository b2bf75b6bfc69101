"""ingest_throughput: the Beam ingest stage against a plain loop doing the same work, examples/s.

For each source (synthetic, and image_folder over PNG files written from the same synthetic
images), alternated after a warm-up:
  beam_in_memory   the ingest stage as configured by default (DirectRunner, in_memory, 1 worker)
  beam_1_worker    DirectRunner, multi_processing, 1 worker process
  beam_2_workers   DirectRunner, multi_processing, 2 worker processes
  plain_loop       one Python loop: the source's reader, the stage's own per-record `prepare`
                   (resize, encode, decode again, check, summarise) and stats combiner, and
                   tf.io.TFRecordWriter writing the same gzip shards per split
pipeline/beam.py builds the FnApiRunner itself (Beam's DirectRunner would try the Prism binary
first) and passes the options to it; the FnApiRunner reads `direct_num_workers` and
`direct_running_mode` from them at run time and starts that many SDK worker processes.
Each Beam run also pays a start-up (worker processes import TensorFlow); the full size measures
it on a 16-example ingest so the per-example rate can be separated from it. The warm-up is one
16-example in-memory ingest and one plain loop (imports, file cache): a multi_processing run
starts fresh workers every time, so there is nothing else to warm.

`cpu_ceiling` is what two processes can gain on this machine at this moment: the same pure-Python
CPU-bound work in one process, then split over two. On a shared machine it caps what two Beam
workers can reach, whatever Beam does.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import data, timing
from benchmarks.report import Result

NAME = "ingest_throughput"
DESCRIPTION = "Beam ingest (1 and 2 workers) vs a plain TFRecordWriter loop, examples/s"

SIZES = {
    "tiny": {"num_examples": 24, "image_size": 8, "rounds": 1, "startup": False},
    "quick": {"num_examples": 150, "image_size": 32, "rounds": 2, "startup": False},
    "full": {"num_examples": 3000, "image_size": 32, "rounds": 3, "startup": True},
}
MODES = {
    "beam_in_memory": ["beam.direct_running_mode=in_memory", "beam.direct_num_workers=1"],
    "beam_1_worker": ["beam.direct_running_mode=multi_processing", "beam.direct_num_workers=1"],
    "beam_2_workers": ["beam.direct_running_mode=multi_processing", "beam.direct_num_workers=2"],
}
STARTUP_EXAMPLES = 16


def plain_loop(config, out: Path) -> int:
    """The stage's per-record work in one process, written with tf.io.TFRecordWriter; returns records written."""
    import json

    import tensorflow as tf

    from components import examples as ex
    from components.ingest import records as ingest
    from components.ingest import stats as stats_lib
    from components.sources import make_reader

    source, settings = config.ingest.source, config.ingest
    reader = make_reader(source, settings)
    class_names = list(reader.class_names())
    extras = dict(reader.schema_extras())
    splits = settings.splits
    rules = ingest.RecordRules(
        task=settings.task, num_classes=len(class_names), num_mask_classes=len(class_names),
        ignore_value=extras.get("ignore_value"), image_size=tuple(settings.image_size) if settings.image_size else None,
        image_format=settings.image_format, split_bounds=(splits.train, splits.train + splits.eval))
    shards = settings.num_shards
    writers = {}
    for split in ex.SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
        writers[split] = [tf.io.TFRecordWriter(str(out / split / f"data-{k:05d}-of-{shards:05d}{ex.SHARD_SUFFIX}"),
                                               options="GZIP") for k in range(shards)]
    combiner = stats_lib.StatsCombineFn()
    accumulator = combiner.create_accumulator()
    written = 0
    for item in reader.list_items():
        for record in reader.read(item):
            split, serialized, summary = ingest.prepare(record, rules)
            writers[split][written % shards].write(serialized)
            accumulator = combiner.add_input(accumulator, summary)
            written += 1
    for split_writers in writers.values():
        for writer in split_writers:
            writer.close()
    stats = stats_lib.finalize(combiner.extract_output(accumulator), class_names)
    (out / ex.STATS_FILE).write_text(json.dumps(stats, indent=2, sort_keys=True))
    return written


@contextlib.contextmanager
def worker_output_to(path: Path):
    """Send this process's stderr, which Beam's SDK worker processes inherit and log to, into `path`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def throwaway_ingest(config, root: Path, name: str, worker_log: Path, inspect=None) -> None:
    """One timed ingest into `root/name`, Beam workers' output sent to `worker_log`; `inspect(out_dir)`
    sees the Examples before the run's directories are removed again."""
    with worker_output_to(worker_log):
        out = data.ingest(config, root, name=name)
    if inspect is not None:
        inspect(out)
    shutil.rmtree(root / name, ignore_errors=True)
    shutil.rmtree(root / f"{name}-work", ignore_errors=True)


SPIN = 3_000_000


def _spin(count: int) -> int:
    total = 0
    for i in range(count):
        total += i * i % 7
    return total


def spin_in_processes(processes: int) -> float:
    """Seconds for SPIN iterations of a pure-Python loop split evenly over `processes` processes
    (started and warmed before the clock starts)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        pool.map(_spin, [1] * processes)
        started = time.perf_counter()
        pool.map(_spin, [SPIN // processes] * processes, chunksize=1)
        return time.perf_counter() - started


def run(size: str) -> Result:
    s = SIZES[size]
    n = s["num_examples"]
    result = Result(NAME, DESCRIPTION, settings={"size": size, **s})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="convpipe-bench-") as tmp:
        root = Path(tmp)
        folder = data.write_image_folder(root / "images", n, s["image_size"])
        sources = {
            "synthetic": [f"ingest.source.num_examples={n}", f"ingest.source.image_size={s['image_size']}"],
            "image_folder": ['ingest.source={"name": "image_folder", "path": "%s"}' % folder],
        }
        runs = iter(range(10 ** 6))

        def beam_side(overrides):
            config = data.pipeline_config(root, overrides=overrides)

            def side():
                throwaway_ingest(config, root, f"run-{next(runs)}", root / "beam-workers.log")
            return side

        def plain_side(overrides):
            config = data.pipeline_config(root, overrides=overrides)

            def side():
                out = root / f"run-{next(runs)}"
                written = plain_loop(config, out)
                shutil.rmtree(out, ignore_errors=True)
                if written != n:
                    raise RuntimeError(f"plain loop: expected {n} records written, got {written}")
            return side

        sides = {}
        for source, overrides in sources.items():
            for mode, beam_overrides in MODES.items():
                sides[f"{source}/{mode}"] = beam_side([*overrides, *beam_overrides])
            sides[f"{source}/plain_loop"] = plain_side(overrides)
        if s["startup"]:
            small = [f"ingest.source.num_examples={STARTUP_EXAMPLES}", f"ingest.source.image_size={s['image_size']}"]
            for mode, beam_overrides in MODES.items():
                sides[f"startup/{mode}"] = beam_side([*small, *beam_overrides])
        beam_side([f"ingest.source.num_examples={STARTUP_EXAMPLES}", *MODES["beam_in_memory"]])()
        sides["synthetic/plain_loop"]()
        sides["cpu_ceiling/1_process"] = lambda: spin_in_processes(1)
        sides["cpu_ceiling/2_processes"] = lambda: spin_in_processes(2)
        seconds = timing.alternate(sides, rounds=s["rounds"], warmup=0)

    for name, values in seconds.items():
        result.sample(name, values)
    for source in sources:
        rates = {mode: result.figure(f"{source}/{mode}_examples_per_s", timing.rate(n, seconds[f"{source}/{mode}"]),
                                     "examples/s") for mode in (*MODES, "plain_loop")}
        two_over_one = result.ratio(f"{source}/2_workers_over_1_worker",
                                    timing.ratio(rates["beam_2_workers"], rates["beam_1_worker"]), "multi_processing")
        in_memory_over_plain = result.ratio(f"{source}/in_memory_over_plain",
                                            timing.ratio(rates["beam_in_memory"], rates["plain_loop"]),
                                            "the stage's default runner vs the plain loop")
        one_over_plain = result.ratio(f"{source}/1_worker_over_plain",
                                      timing.ratio(rates["beam_1_worker"], rates["plain_loop"]),
                                      "one multi_processing worker vs the plain loop")
        result.target(f"{source}: 2 workers / 1 worker", two_over_one, ">=", 1.6)
        result.target(f"{source}: Beam 1 worker / plain", one_over_plain, ">=", 0.5)
        result.target(f"{source}: Beam in_memory / plain", in_memory_over_plain, ">=", 0.5)
    ceiling = result.ratio("cpu_ceiling_2_over_1", timing.ratio(timing.median(seconds["cpu_ceiling/1_process"]),
                                                              timing.median(seconds["cpu_ceiling/2_processes"])),
                           "the same CPU-bound Python work split over 2 processes: the most 2 workers can gain now")
    result.note(f"two processes can gain at most {ceiling:.2f}x on this machine during this run")
    if s["startup"]:
        for mode in MODES:
            fixed = result.figure(f"startup/{mode}_seconds", timing.median(seconds[f"startup/{mode}"]), "s",
                                  f"a {STARTUP_EXAMPLES}-example ingest: the per-run cost")
            per_example = timing.median(seconds[f"synthetic/{mode}"]) - fixed
            result.figure(f"synthetic/{mode}_examples_per_s_after_startup",
                          (n - STARTUP_EXAMPLES) / per_example if per_example > 0 else float("nan"), "examples/s")
    result.seconds = time.perf_counter() - started
    return result
