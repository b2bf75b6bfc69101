"""dask_workers: the ingest stage on Beam's DaskRunner, 2 LocalCluster workers against 1, examples/s.

Alternated after a warm-up, on the same synthetic images (full size: 10,000 of 32x32):
  dask_1_worker    beam.runner=dask, a LocalCluster of 1 worker process (the baseline)
  dask_2_workers   the same with 2 worker processes
  direct           the default DirectRunner (in_memory, this process), for scale
Each Dask run starts its cluster and closes it, as a stage does (the workers import TensorFlow
then), so the full size also times a 16-example ingest per side to separate that start-up from
the per-example rate. Every run's Examples fingerprint is checked against the DirectRunner's:
a speed-up that wrote other bytes would not count.

`cpu_ceiling` (as in ingest_throughput) is what two processes can gain on this machine during the
run: the same pure-Python CPU-bound work in one process, then split over two.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks import data, timing
from benchmarks.ingest_throughput import spin_in_processes, throwaway_ingest
from benchmarks.report import Result

NAME = "dask_workers"
DESCRIPTION = "ingest on Beam's DaskRunner: LocalCluster 2 workers vs 1 (and the DirectRunner), examples/s"

SIZES = {
    "tiny": {"num_examples": 24, "image_size": 8, "rounds": 1, "startup": False},
    "quick": {"num_examples": 1000, "image_size": 32, "rounds": 1, "startup": False},
    "full": {"num_examples": 10_000, "image_size": 32, "rounds": 1, "startup": True},
}
MODES = {
    "dask_1_worker": ["beam.runner=dask", "beam.dask.workers=1"],
    "dask_2_workers": ["beam.runner=dask", "beam.dask.workers=2"],
    "direct": ["beam.runner=DirectRunner"],
}
STARTUP_EXAMPLES = 16


def run(size: str) -> Result:
    from pipeline.artifacts import fingerprint_dir

    s = SIZES[size]
    n = s["num_examples"]
    result = Result(NAME, DESCRIPTION, settings={"size": size, **s})
    started = time.perf_counter()
    fingerprints: dict[str, set] = {}
    with tempfile.TemporaryDirectory(prefix="convpipe-bench-dask-") as tmp:
        root = Path(tmp)
        runs = iter(range(10 ** 6))

        def side(mode: str, count: int, check: bool):
            config = data.pipeline_config(root, num_examples=count, image_size=s["image_size"],
                                          overrides=MODES[mode])

            def ingest():
                keep = (lambda out: fingerprints.setdefault(mode, set()).add(fingerprint_dir(out))) if check else None
                throwaway_ingest(config, root, f"run-{next(runs)}", root / "workers.log", inspect=keep)
            return ingest

        sides = {f"synthetic/{mode}": side(mode, n, check=True) for mode in MODES}
        if s["startup"]:
            sides.update({f"startup/{mode}": side(mode, STARTUP_EXAMPLES, check=False) for mode in MODES})
        side("dask_1_worker", STARTUP_EXAMPLES, check=False)()  # warm-up: imports, file cache
        sides["cpu_ceiling/1_process"] = lambda: spin_in_processes(1)
        sides["cpu_ceiling/2_processes"] = lambda: spin_in_processes(2)
        seconds = timing.alternate(sides, rounds=s["rounds"], warmup=0)

    for name, values in seconds.items():
        result.sample(name, values)
    distinct = set().union(*fingerprints.values())
    if len(distinct) != 1:
        raise RuntimeError(f"dask_workers: the runs wrote different Examples: fingerprints by mode {fingerprints}")
    result.note(f"every run wrote the same Examples (sha256 {next(iter(distinct))[:16]}) on every runner")
    rates = {mode: result.figure(f"synthetic/{mode}_examples_per_s", timing.rate(n, seconds[f"synthetic/{mode}"]),
                                 "examples/s") for mode in MODES}
    two_over_one = result.ratio("dask_2_workers_over_1_worker",
                                timing.ratio(rates["dask_2_workers"], rates["dask_1_worker"]),
                                "the 1-worker LocalCluster is the baseline, measured in this run")
    result.ratio("dask_1_worker_over_direct", timing.ratio(rates["dask_1_worker"], rates["direct"]),
                 "one Dask worker vs the in-process DirectRunner")
    result.target("dask: 2 workers / 1 worker", two_over_one, ">=", 1.6)
    ceiling = result.ratio("cpu_ceiling_2_over_1", timing.ratio(timing.median(seconds["cpu_ceiling/1_process"]),
                                                              timing.median(seconds["cpu_ceiling/2_processes"])),
                           "the same CPU-bound Python work split over 2 processes: the most 2 workers can gain now")
    result.note(f"two processes can gain at most {ceiling:.2f}x on this machine during this run")
    if s["startup"]:
        for mode in MODES:
            fixed = result.figure(f"startup/{mode}_seconds", timing.median(seconds[f"startup/{mode}"]), "s",
                                  f"a {STARTUP_EXAMPLES}-example ingest: the per-run cost (cluster, imports)")
            per_example = timing.median(seconds[f"synthetic/{mode}"]) - fixed
            result.figure(f"synthetic/{mode}_examples_per_s_after_startup",
                          (n - STARTUP_EXAMPLES) / per_example if per_example > 0 else float("nan"), "examples/s")
        after = {mode: result.figures[f"synthetic/{mode}_examples_per_s_after_startup"]["value"] for mode in MODES}
        result.ratio("dask_2_workers_over_1_worker_after_startup",
                     timing.ratio(after["dask_2_workers"], after["dask_1_worker"]), "start-up left out")
    result.seconds = time.perf_counter() - started
    return result
