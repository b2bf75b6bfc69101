"""default_run: the wall time of `convpipe run` on the default config, fresh and cached, stage by stage.

What `make run` does, in fresh processes as a user runs it: `python -m convpipe.cli run` on
pipeline_config.json with a new root (every stage runs), then the same command again (every
stage is reused from the cache). Each run's wall time is taken around the process; the stage
split is the runner's own summary table (the seconds it prints per stage), and what is left
(process start, imports, config, metadata) is reported as `outside_stages`. The fresh run
is repeated `rounds` times on new roots, the cached one after each; medians are reported.
A single run cannot be alternated with a baseline, so these figures move with the machine's
load (printed beside them); the ratio that does not is each stage's share of the run.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import timing
from benchmarks.report import Result

NAME = "default_run"
DESCRIPTION = "convpipe run on the default config: wall time fresh and cached, stage by stage"

PROJECT = Path(__file__).resolve().parent.parent
STAGE_LINE = re.compile(r"^(\w+)\s+(COMPLETE|CACHED|FAILED|SKIPPED)\s+([\d.]+) s\b", re.MULTILINE)

SIZES = {
    # a few examples, one epoch: the shape of the figures only
    "tiny": {"rounds": 1, "overrides": ["ingest.source.num_examples=60", "ingest.source.image_size=8",
                                        "train.epochs=1", "augment.copies=0"]},
    "quick": {"rounds": 1, "overrides": []},
    "full": {"rounds": 2, "overrides": []},
}


def run(size: str) -> Result:
    s = SIZES[size]
    result = Result(NAME, DESCRIPTION, settings={"size": size, "config": "pipeline_config.json", **s})
    started = time.perf_counter()
    fresh, cached, stages = [], [], {}
    for round_ in range(s["rounds"]):
        with tempfile.TemporaryDirectory(prefix="convpipe-bench-run-") as tmp:
            seconds, table = convpipe_run(Path(tmp), s["overrides"])
            fresh.append(seconds)
            for stage, (state, stage_seconds) in table.items():
                stages.setdefault(stage, []).append(stage_seconds)
            seconds, table = convpipe_run(Path(tmp), s["overrides"])
            cached.append(seconds)
            if any(state not in ("CACHED", "SKIPPED") for state, _ in table.values()):
                raise RuntimeError(f"default_run: the rerun did not reuse every stage: {table}")
    result.sample("fresh", fresh)
    result.sample("cached", cached)
    wall = result.figure("fresh_run_seconds", timing.median(fresh), "s", "wall time of the process, every stage run")
    for stage, values in stages.items():
        result.figure(f"{stage}_seconds", timing.median(values), "s")
    inside = sum(timing.median(values) for values in stages.values())
    result.figure("outside_stages_seconds", wall - inside, "s", "process start, imports, config, metadata, summary")
    for stage, values in stages.items():
        result.ratio(f"{stage}_share", timing.median(values) / wall, "of the fresh run's wall time")
    rerun = result.figure("cached_run_seconds", timing.median(cached), "s", "the same command again: all cached")
    result.target("fresh run seconds", wall, "<=", 35.0)
    result.target("cached rerun seconds", rerun, "<", 2.0)
    result.seconds = time.perf_counter() - started
    return result


def convpipe_run(root: Path, overrides) -> tuple[float, dict]:
    """Wall seconds of one `convpipe run` on `root`, and its summary table: stage -> (state, seconds)."""
    command = [sys.executable, "-m", "convpipe.cli", "run", "--config", str(PROJECT / "pipeline_config.json"),
               "--root", str(root / "artifacts"), "--set", f"export.serving_root={root / 'serving'}"]
    for override in overrides:
        command += ["--set", override]
    path = os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, PYTHONPATH=str(PROJECT) + (os.pathsep + path if path else ""))
    t0 = time.perf_counter()
    process = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    seconds = time.perf_counter() - t0
    if process.returncode != 0:
        tail = "\n".join((process.stdout + process.stderr).strip().splitlines()[-20:])
        raise RuntimeError(f"default_run: convpipe run exited with {process.returncode}:\n{tail}")
    table = {m.group(1): (m.group(2), float(m.group(3))) for m in STAGE_LINE.finditer(process.stdout + process.stderr)}
    if not table:
        raise RuntimeError("default_run: no stage summary in the output of convpipe run")
    return seconds, table
