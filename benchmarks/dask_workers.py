"""dask_workers: the ingest stage on Beam's DaskRunner, 2 LocalCluster workers against 1, examples/s.

Alternated after a warm-up, on the same synthetic images (full size: 10,000 of 32x32):
  dask_1_worker    beam.runner=dask, a LocalCluster of 1 worker process (the baseline)
  dask_2_workers   the same with 2 worker processes
  direct           the default DirectRunner (in_memory, this process), for scale
A convpipe process starts one LocalCluster on its first Beam pipeline (its workers import
TensorFlow then) and reuses it for the next ones (pipeline/beam_dask.py), so each Dask mode is
timed three ways, in turn, every run after the other clusters are closed (untimed):
  synthetic/<mode>  the whole ingest in a fresh process's cluster: start-up included, what
                    `convpipe run --to ingest` pays (the ratio the issue asks about)
  startup/<mode>    a 16-example ingest in a fresh cluster (full size only): the start-up alone
  warm/<mode>       then the whole ingest again on that running cluster: what a later stage of
                    the same process pays (full size only)
Every run's Examples fingerprint is checked against the DirectRunner's: a speed-up that wrote
other bytes would not count. The load average is recorded before and after.

`cpu_ceiling` (as in ingest_throughput) is what two processes can gain on this machine during the
run: the same pure-Python CPU-bound work in one process, then split over two.
"""
from __future__ import annotations

import os
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


def _alternate(sides: dict, rounds: int) -> dict[str, list[float]]:
    """Like timing.alternate, each side a (setup, run) pair whose setup is not timed."""
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, (setup, side) in sides.items():
            setup()
            seconds[name].append(timing.timed(side))
    return seconds


def _load() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def run(size: str) -> Result:
    from pipeline import beam_dask
    from pipeline.artifacts import fingerprint_dir

    s = SIZES[size]
    n = s["num_examples"]
    result = Result(NAME, DESCRIPTION, settings={"size": size, **s})
    started = time.perf_counter()
    fingerprints: dict[str, set] = {}
    load_before = _load()
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

        fresh, keep = beam_dask.SHARED.close_all, (lambda: None)
        sides = {}
        for mode in MODES:
            dask = mode.startswith("dask")
            sides[f"synthetic/{mode}"] = (fresh, side(mode, n, check=True))
            if s["startup"]:
                sides[f"startup/{mode}"] = (fresh, side(mode, STARTUP_EXAMPLES, check=False))
                if dask:
                    sides[f"warm/{mode}"] = (keep, side(mode, n, check=True))
        side("dask_1_worker", STARTUP_EXAMPLES, check=False)()  # warm-up: imports, file cache
        sides["cpu_ceiling/1_process"] = (fresh, lambda: spin_in_processes(1))
        sides["cpu_ceiling/2_processes"] = (keep, lambda: spin_in_processes(2))
        try:
            seconds = _alternate(sides, rounds=s["rounds"])
        finally:
            beam_dask.SHARED.close_all()
    result.note(f"load average (1/5/15 min) {load_before} before, {_load()} after, on {os.cpu_count()} cores")

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
                     timing.ratio(after["dask_2_workers"], after["dask_1_worker"]),
                     "the whole ingest less the 16-example one")
        warm = {mode: result.figure(f"warm/{mode}_examples_per_s", timing.rate(n, seconds[f"warm/{mode}"]),
                                    "examples/s", "the whole ingest on a running cluster (a later stage's)")
                for mode in MODES if mode.startswith("dask")}
        result.ratio("dask_2_workers_over_1_worker_warm", timing.ratio(warm["dask_2_workers"], warm["dask_1_worker"]),
                     "both on a running cluster: no start-up")
    result.seconds = time.perf_counter() - started
    return result
