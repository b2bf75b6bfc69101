"""Fake stages with trials, shaped like train -> evaluate -> compare -> export, without TensorFlow.

    data      {"n": ingest.source.num_examples}                        -> data/n.txt
    fit       expands train.sweep x train.seeds; score from loss, optimizer and seed -> model/score.json
    measure   per trial: copies the score                              -> evaluation/score.json
    pick      gathers model and evaluation, chooses the highest score   -> comparison/trials.json
    ship      reads fit.model and measure.evaluation (the chosen trial) -> pushed/shipped.json

Module-level so that a child process (parallel trials) finds them by module and name.
FAKE_CALLS=<file> makes each executor append "<stage> <trial>"; FAKE_FAIL_TRIAL=<name> fails that trial;
FAKE_BLOCK=<dir> makes fit write <dir>/started-<pid> and wait for <dir>/release.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pipeline.stage import Stage, StageError
from pipeline.sweep import parallel_trials, trial_configs

LOSS_SCORES = {"categorical_crossentropy": 0.5, "hinge": 0.7, "mse": 0.2, "focal": 0.9, "mae": 0.1}
OPTIMIZER_SCORES = {"adam": 0.05, "sgd": 0.0, "momentum": 0.02}


def _called(stage: str, trial) -> None:
    if os.environ.get("FAKE_CALLS"):
        with open(os.environ["FAKE_CALLS"], "a") as f:
            f.write(f"{stage} {trial}\n")


def run_data(ctx):
    _called("data", ctx.trial)
    ctx.outputs["data"].joinpath("n.txt").write_text(str(ctx.params["n"]))


def fit_params(config):
    return {"loss": config.train.loss, "optimizer": config.train.optimizer.name, "seed": config.train.seed,
            "lr": config.train.optimizer.learning_rate}


def run_fit(ctx):
    _called("fit", ctx.trial)
    if ctx.trial and ctx.trial == os.environ.get("FAKE_FAIL_TRIAL"):
        raise StageError(f"trial {ctx.trial} failed on purpose")
    block = os.environ.get("FAKE_BLOCK")
    if block:
        Path(block, f"started-{os.getpid()}").write_text(ctx.trial or "")
        deadline = time.monotonic() + 60
        while not Path(block, "release").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    p = ctx.params
    score = LOSS_SCORES[p["loss"]] + OPTIMIZER_SCORES[p["optimizer"]] + 0.001 * p["seed"]
    ctx.outputs["model"].joinpath("score.json").write_text(json.dumps(
        {"score": score, "trial": ctx.trial, "pid": os.getpid(), "params": p}))
    ctx.log.info("fit %s: score %.3f", ctx.trial, score)
    ctx.properties["model"] = {"score": score}


def run_measure(ctx):
    _called("measure", ctx.trial)
    data = json.loads(ctx.inputs["model"].uri.joinpath("score.json").read_text())
    ctx.outputs["evaluation"].joinpath("score.json").write_text(json.dumps({"score": data["score"]}))


def run_pick(ctx):
    _called("pick", None)
    scores = {trial: json.loads(a.uri.joinpath("score.json").read_text())["score"]
              for trial, a in ctx.trials["evaluation"].items()}
    assert list(scores) == list(ctx.trials["model"])
    ctx.outputs["comparison"].joinpath("trials.json").write_text(json.dumps(scores))
    ctx.chosen_trial = max(scores, key=scores.get)


def run_ship(ctx):
    _called("ship", None)
    model = json.loads(ctx.inputs["model"].uri.joinpath("score.json").read_text())
    evaluation = json.loads(ctx.inputs["evaluation"].uri.joinpath("score.json").read_text())
    ctx.outputs["pushed"].joinpath("shipped.json").write_text(json.dumps(
        {"trial": model["trial"], "score": model["score"], "evaluation_score": evaluation["score"]}))


DATA = Stage("data", {"data": "Numbers"}, run_data, lambda c: {"n": c.ingest.source.num_examples})
FIT = Stage("fit", {"model": "Model"}, run_fit, fit_params, inputs={"data": "data.data"},
            expand=trial_configs, parallel=parallel_trials)
MEASURE = Stage("measure", {"evaluation": "ModelEvaluation"}, run_measure, lambda c: {"metric": c.evaluate.metric},
                inputs={"model": "fit.model"}, per_trial=True)
PICK = Stage("pick", {"comparison": "TrialComparison"}, run_pick, lambda c: {"metric": c.evaluate.metric},
             inputs={"model": "fit.model", "evaluation": "measure.evaluation"}, gathers=("model", "evaluation"))
SHIP = Stage("ship", {"pushed": "PushedModel"}, run_ship, lambda c: {},
             inputs={"model": "fit.model", "evaluation": "measure.evaluation"})
STAGES = [DATA, FIT, MEASURE, PICK, SHIP]
