"""Three tiny stages (a -> b -> c) that exercise the runner without TensorFlow or Beam.

Parameters come from real config keys so `--set` changes them:
    a: {"seed": ingest.source.seed, "n": ingest.source.num_examples}  -> data/numbers.txt
    b: {"epochs": train.epochs}; disabled when augment.enabled is false  -> result/sum.txt
    c: {"metric": evaluate.metric}                                       -> report/report.txt

Behaviour switches, for in-process tests and for subprocesses (environment variables):
    FAIL (set of stage names) or FAKE_FAIL=b,c   the executor raises
    FAKE_CALLS=<file>                            each executor call appends "<stage>\\n"
    FAKE_BLOCK=<dir>                             b writes <dir>/started and waits for <dir>/release
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from pipeline.stage import Stage, StageError

CALLS: list[str] = []
FAIL: set[str] = set()


def _called(stage: str) -> None:
    CALLS.append(stage)
    if os.environ.get("FAKE_CALLS"):
        with open(os.environ["FAKE_CALLS"], "a") as f:
            f.write(stage + "\n")
    if stage in FAIL or stage in os.environ.get("FAKE_FAIL", "").split(","):
        raise StageError(f"{stage} failed on purpose")


def run_a(ctx):
    ctx.outputs["data"].joinpath("numbers.txt").write_text(
        "\n".join(str(ctx.params["seed"] + i) for i in range(ctx.params["n"])))
    _called("a")
    ctx.properties["data"] = {"count": ctx.params["n"]}


def run_b(ctx):
    attempts = ctx.work_dir / "attempts.txt"
    count = int(attempts.read_text()) + 1 if attempts.exists() else 1
    attempts.write_text(str(count))
    numbers = [int(v) for v in (ctx.inputs["data"].uri / "numbers.txt").read_text().split()]
    block = os.environ.get("FAKE_BLOCK")
    if block:
        Path(block, "started").write_text(str(os.getpid()))
        ctx.outputs["result"].joinpath("partial.txt").write_text("half written")
        deadline = time.monotonic() + 60
        while not Path(block, "release").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    _called("b")
    ctx.outputs["result"].joinpath("sum.txt").write_text(str(sum(numbers) * ctx.params["epochs"]))


def run_c(ctx):
    _called("c")
    total = (ctx.inputs["result"].uri / ("sum.txt" if (ctx.inputs["result"].uri / "sum.txt").exists()
                                         else "numbers.txt")).read_text()
    ctx.outputs["report"].joinpath("report.txt").write_text(f"{ctx.params['metric']}={total}")


A = Stage("a", {"data": "Numbers"}, run_a,
          lambda c: {"seed": c.ingest.source.seed, "n": c.ingest.source.num_examples})
B = Stage("b", {"result": "Numbers"}, run_b, lambda c: {"epochs": c.train.epochs},
          inputs={"data": "a.data"}, enabled=lambda c: c.augment.enabled)
C = Stage("c", {"report": "Report"}, run_c, lambda c: {"metric": c.evaluate.metric},
          inputs={"result": "b.result"})
STAGES = [A, B, C]
