"""compare: statistics over seeds on hand-computed cases, ranking without a winner on noise, and the stage
on hand-made Model and ModelEvaluation artifacts (no training)."""
import json
import math
import re

import pytest

from components.compare.comparison import (TrialRow, best_trial, overlaps, reach, spread, summarize, t_critical,
                                   verdict)
from tests.components import classification_fixtures as fx


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------
def test_t_critical_values_and_the_large_sample_limit():
    assert t_critical(1) == 12.706 and t_critical(2) == 4.303 and t_critical(30) == 2.042
    assert t_critical(60) == pytest.approx(2.000, abs=2e-3) and t_critical(10_000) == pytest.approx(1.960, abs=1e-3)
    with pytest.raises(ValueError, match="df=0"):
        t_critical(0)


def test_spread_by_hand():
    s = spread([0.9, 0.8, 0.85])
    assert (s.n, s.mean) == (3, pytest.approx(0.85))
    assert s.std == pytest.approx(0.05)                                    # sqrt((0.0025 + 0.0025 + 0) / 2)
    assert s.half_width == pytest.approx(4.303 * 0.05 / math.sqrt(3))      # 0.12422
    assert s.interval == (pytest.approx(0.72578, abs=1e-5), pytest.approx(0.97422, abs=1e-5))
    one = spread([0.7, None, float("nan")])
    assert (one.n, one.mean, one.std, one.interval) == (1, 0.7, None, None)
    assert spread([]).mean is None


def test_overlap_of_intervals():
    a, b, c = spread([0.90, 0.92, 0.91]), spread([0.80, 0.82, 0.81]), spread([0.85, 0.95, 0.90])
    assert not overlaps(a, b)                                               # [0.885, 0.935] vs [0.785, 0.835]
    assert overlaps(a, c) and overlaps(c, a)
    assert overlaps(a, spread([0.5]))                                       # one seed: cannot be told apart


def test_reach_finds_the_first_epoch_and_its_training_seconds():
    history = {"epoch": [1, 2, 3, 4], "val_accuracy": [0.5, 0.85, 0.95, 0.97], "seconds": [1.0, 2.5, 4.0, 5.5],
               "loss": [1.0, 0.5, 0.3, 0.2], "val_loss": [0.9, 0.6, 0.35, 0.3]}
    assert reach(history, "accuracy", 0.9) == (3, 4.0)
    assert reach(history, "accuracy", 0.99) == (None, None)
    assert reach(history, "loss", 0.6) == (2, 2.5)                          # lower is better: val_loss <= 0.6
    assert reach({"epoch": [1, 2], "accuracy": [0.6, 0.8]}, "accuracy", 0.7) == (2, None)   # no eval split
    assert reach(history, "accuracy", None) == (None, None)


def rows_of(values: dict, losses: dict = None) -> list:
    return [TrialRow(f"{group},seed={i}", group, i, v, (losses or {}).get(group, 1.0))
            for group, vs in values.items() for i, v in enumerate(vs)]


def test_ranking_notes_ties_and_the_best_trial_comes_from_the_best_group():
    rows = rows_of({"optimizer=adam": [0.90, 0.92, 0.91], "optimizer=sgd": [0.80, 0.82, 0.81],
                    "optimizer=momentum": [0.85, 0.95, 0.90], "optimizer=adagrad": [0.70, 0.99, 0.60]})
    summaries = summarize(rows, "accuracy")
    assert [s.group for s in summaries] == ["optimizer=adam", "optimizer=momentum", "optimizer=sgd",
                                            "optimizer=adagrad"]
    assert [round(s.metric.mean, 4) for s in summaries] == [0.91, 0.9, 0.81, 0.7633]
    by_group = {s.group: s for s in summaries}
    assert "optimizer=sgd" not in by_group["optimizer=adam"].tied_with
    assert "optimizer=momentum" in by_group["optimizer=adam"].tied_with
    # adagrad has the single best trial (0.99) but not the best mean: the best trial is adam's best seed
    assert best_trial(rows, summaries, "accuracy") == "optimizer=adam,seed=1"
    sentence = verdict(summaries, "accuracy")
    assert sentence.startswith("optimizer=adam has the best mean accuracy (0.9100 ± 0.0100 over 3 seeds), but its "
                               "95% interval overlaps that of optimizer=momentum")
    assert "no winner among them is claimed" in sentence


def test_rank_order_by_mean():
    rows = rows_of({"a": [0.5, 0.7], "b": [0.9, 0.9], "c": [0.1, 0.2]})
    summaries = summarize(rows, "accuracy")
    assert [(s.rank, s.group) for s in summaries] == [(1, "b"), (2, "a"), (3, "c")]
    assert [s.group for s in summarize(rows, "loss")] == ["c", "a", "b"]    # lower is better for a loss


def test_a_clear_winner_and_a_single_seed_are_said_so():
    clear = summarize(rows_of({"loss=focal": [0.95, 0.96, 0.94], "loss=mse": [0.60, 0.62, 0.61]}), "accuracy")
    assert verdict(clear, "accuracy") == (
        "loss=focal is best (accuracy 0.9500 ± 0.0100 over 3 seeds); its 95% interval does not overlap any other "
        "group's (next: loss=mse, 0.6100 ± 0.0100 over 3 seeds).")
    single = summarize(rows_of({"loss=focal": [0.95], "loss=mse": [0.6]}), "accuracy")
    assert "with one seed per group there is no interval: no winner is claimed" in verdict(single, "accuracy")


def test_equal_seeds_are_broken_by_the_lower_final_loss():
    rows = [TrialRow("g,seed=0", "g", 0, 0.9, 0.30), TrialRow("g,seed=1", "g", 1, 0.9, 0.20),
            TrialRow("h,seed=0", "h", 0, 0.5, 0.1)]
    assert best_trial(rows, summarize(rows, "accuracy"), "accuracy") == "g,seed=1"


# ------------------------------------------------------------------------------------------------
# the stage on hand-made artifacts
# ------------------------------------------------------------------------------------------------
SCORES = {"optimizer=sgd": [0.60, 0.64, 0.62], "optimizer=adam": [0.95, 0.97, 0.96]}


def make_trial(tmp_path, name: str, accuracy: float, seed: int, fast: bool):
    model, evaluation = tmp_path / "models" / name, tmp_path / "evaluations" / name
    model.mkdir(parents=True)
    evaluation.mkdir(parents=True)
    history = {"epoch": [1, 2, 3], "loss": [1.0, 0.6 if fast else 0.9, 0.3 if fast else 0.8],
               "val_accuracy": [0.5, 0.92 if fast else 0.6, 0.96 if fast else 0.7], "seconds": [1.0, 2.0, 3.0]}
    (model / "history.json").write_text(json.dumps({"history": history, "best_epoch": 3}))
    (model / "trial.json").write_text(json.dumps({"name": name, "params": {"train": {"seed": seed}}, "epochs_run": 3}))
    (evaluation / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "loss": 1 - accuracy}))
    (evaluation / "blessing.json").write_text(json.dumps({"blessed": accuracy > 0.9, "checks": []}))
    (evaluation / "report.html").write_text("<html></html>")
    return model, evaluation


def compare_context(tmp_path):
    from pipeline.stage import Artifact

    config = fx.tiny_config(tmp_path, sweep={"train.optimizer.name": ["sgd", "adam"]}, seeds=[0, 1, 2])
    config.evaluate.target = 0.9
    ctx = fx.context(config, tmp_path, "compare", {}, ["comparison"])
    for group, scores in SCORES.items():
        for seed, accuracy in enumerate(scores):
            name = f"{group},seed={seed}"
            model, evaluation = make_trial(tmp_path, name, accuracy, seed, fast=group.endswith("adam"))
            ctx.trials.setdefault("model", {})[name] = Artifact(1, "Model", model, f"fp-m-{name}")
            ctx.trials.setdefault("evaluation", {})[name] = Artifact(2, "ModelEvaluation", evaluation, f"fp-e-{name}")
    return ctx


def test_the_stage_ranks_groups_chooses_a_trial_and_writes_the_report(tmp_path):
    from components.compare.stage import STAGE

    ctx = compare_context(tmp_path)
    STAGE.executor(ctx)
    assert ctx.chosen_trial == "optimizer=adam,seed=1"
    document = json.loads((ctx.outputs["comparison"] / "comparison.json").read_text())
    first, second = document["groups"]
    assert first["group"] == "optimizer=adam" and first["tied_with"] == []
    assert first["metric"]["mean"] == pytest.approx(0.96) and first["metric"]["std"] == pytest.approx(0.01)
    assert first["metric"]["half_width_95"] == pytest.approx(4.303 * 0.01 / math.sqrt(3))
    assert first["epochs_to_target"] == {"n": 3, "mean": 2.0, "std": 0.0, "half_width_95": 0.0}
    assert first["seconds_to_target"]["mean"] == 2.0 and first["reached_target"] == 3
    assert second["reached_target"] == 0 and second["epochs_to_target"]["mean"] is None
    assert first["final_loss"]["mean"] == pytest.approx(0.3) and second["final_loss"]["mean"] == pytest.approx(0.8)
    trial = next(t for t in document["trials"] if t["trial"] == "optimizer=sgd,seed=2")
    assert trial["values"] == {"optimizer": "sgd"} and trial["seed"] == 2 and trial["accuracy"] == 0.62
    assert document["verdict"].startswith("optimizer=adam is best (accuracy 0.9600 ± 0.0100 over 3 seeds)")
    assert ctx.properties["comparison"]["best_group"] == "optimizer=adam"

    report = (ctx.outputs["comparison"] / "report.html").read_text()
    for text in ("Verdict", "0.9600 ± 0.0100", "[0.9352, 0.9848]", "2.0 ± 0.0 (3/3)", "- (0/3)", "2.0 ± 0.0</td>",
                 "Curves by optimizer", "optimizer=adam,seed=1", "its evaluation report"):
        assert text in report, text
    assert len(re.findall(r'src="data:image/png;base64,', report)) == 3      # intervals, curves, panels


def test_a_trial_without_the_metric_is_ranked_last_and_none_with_it_fails(tmp_path):
    from components.compare.stage import STAGE
    from pipeline.stage import StageError

    ctx = compare_context(tmp_path)
    (ctx.trials["evaluation"]["optimizer=adam,seed=1"].uri / "metrics.json").write_text(json.dumps({"loss": 0.5}))
    STAGE.executor(ctx)
    assert any("(trial optimizer=adam,seed=1) has no number 'accuracy' (evaluate.metric); it has ['loss']" in m
               for m in fx.messages(ctx))
    document = json.loads((ctx.outputs["comparison"] / "comparison.json").read_text())
    assert document["groups"][0]["metric"]["n"] == 2 and document["groups"][0]["metric"]["mean"] == pytest.approx(0.955)
    assert ctx.chosen_trial == "optimizer=adam,seed=2"

    for evaluation in ctx.trials["evaluation"].values():
        (evaluation.uri / "metrics.json").write_text(json.dumps({"loss": 0.5}))
    with pytest.raises(StageError, match=r"no trial's metrics.json has a number 'accuracy' \(evaluate.metric\)"):
        STAGE.executor(ctx)
