"""The benchmarks keep running as the code they measure changes: their output's shape, never their speed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import timing
from benchmarks.report import Result

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_trainer_overhead_runs_and_reports_its_figures(tmp_path):
    out = tmp_path / "figures.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    process = subprocess.run([sys.executable, "-m", "benchmarks", "--tiny", "--only", "trainer_overhead",
                              "--json", str(out)], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert "== trainer_overhead" in process.stdout and "target pipeline / fit" in process.stdout

    document = json.loads(out.read_text())
    assert document["size"] == "tiny" and document["failed"] == {}
    assert {"cpu_model", "cores", "memory_gib", "tensorflow"} <= set(document["machine"])
    result = document["benchmarks"]["trainer_overhead"]
    figures = result["figures"]
    for side in ("pipeline", "pipeline_in_memory", "fit"):
        assert figures[f"{side}_images_per_s"]["unit"] == "images/s"
        assert figures[f"{side}_images_per_s"]["value"] > 0
        assert len(result["samples"][side]) == result["settings"]["rounds"]
    ratio = result["ratios"]["pipeline_over_fit"]["value"]
    expected = figures["pipeline_images_per_s"]["value"] / figures["fit_images_per_s"]["value"]
    assert ratio == pytest.approx(expected, rel=2e-3)
    [target] = result["targets"]
    assert target["target"] == ">= 0.98" and target["met"] == (target["measured"] >= 0.98)


@pytest.mark.slow
def test_the_issue_17_benchmarks_run_at_tiny_size_and_report_their_figures(tmp_path):
    """precision_speed, compute_efficiency (64/128 against the same dtype's peak), input_headroom,
    serving_latency and default_run, in one --tiny run: every figure and target the README's table quotes."""
    out = tmp_path / "figures.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    names = ["precision_speed", "compute_efficiency", "input_headroom", "serving_latency", "default_run"]
    command = [sys.executable, "-m", "benchmarks", "--tiny", "--json", str(out)]
    for name in names:
        command += ["--only", name]
    process = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=1200)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    document = json.loads(out.read_text())
    assert document["failed"] == {} and sorted(document["benchmarks"]) == sorted(names)
    figures = {name: result["figures"] for name, result in document["benchmarks"].items()}
    targets = {name: {t["name"]: t for t in result["targets"]} for name, result in document["benchmarks"].items()}

    precision = document["benchmarks"]["precision_speed"]
    for policy in ("float32", "mixed_bfloat16"):
        assert figures["precision_speed"][f"{policy}_images_per_s"]["value"] > 0
        assert 0.0 <= figures["precision_speed"][f"{policy}_test_accuracy"]["value"] <= 1.0
    assert precision["settings"]["auto_picks"] in ("float32", "mixed_bfloat16", "mixed_float16")
    assert targets["precision_speed"]["mixed_bfloat16 / float32 images/s"]["target"] == ">= 1.8"
    assert targets["precision_speed"]["test accuracy gap"]["target"] == "<= 0.01"

    compute = figures["compute_efficiency"]
    assert compute["size_16_bf16_fraction_of_peak"]["unit"] == "of bfloat16 matmul peak"
    assert compute["size_16_fraction_of_peak"]["unit"] == "of float32 matmul peak"
    assert compute["matmul_bfloat16_peak_gflops"]["value"] > 0
    assert "size_16_bf16_over_float32" in document["benchmarks"]["compute_efficiency"]["ratios"]

    assert targets["input_headroom"]["input wait share"]["target"] == "< 0.02"
    assert targets["serving_latency"]["batch-32 p50 per image: serving_default / Keras"]["target"] == "<= 1.2"

    run = figures["default_run"]
    stages = ["ingest", "validate", "augment", "train", "evaluate", "compare", "export"]
    assert all(f"{stage}_seconds" in run for stage in stages)
    assert run["fresh_run_seconds"]["value"] >= sum(run[f"{stage}_seconds"]["value"] for stage in stages)
    assert run["cached_run_seconds"]["value"] > 0
    assert targets["default_run"]["fresh run seconds"]["target"] == "<= 35"
    assert targets["default_run"]["cached rerun seconds"]["target"] == "< 2"


def test_alternate_runs_warmup_then_sides_in_turn():
    calls = []

    def b():
        calls.append("b")
        return 0.25  # seconds it measured itself

    seconds = timing.alternate({"a": lambda: calls.append("a"), "b": b}, rounds=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert len(seconds["a"]) == 3 and seconds["b"] == [0.25, 0.25, 0.25]


def test_percentile_interpolates_between_ranks():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert timing.percentile(values, 50) == 3.0
    assert timing.percentile(values, 95) == pytest.approx(4.8)  # 4 + 0.8 * (5 - 4)
    assert timing.percentile([7.0], 95) == 7.0
    assert timing.rate(64, [2.0, 1.0, 4.0]) == 32.0


def test_targets_record_the_bound_and_whether_it_was_met():
    result = Result("x", "y")
    assert result.target("a / b", 0.96, ">=", 0.95) is True
    assert result.target("wait share", 0.07, "<", 0.05) is False
    assert result.target("nan", float("nan"), ">=", 1.0) is False
    assert [t["met"] for t in result.targets] == [True, False, False]
    assert result.targets[1]["target"] == "< 0.05"


def test_flops_of_the_default_cnn_by_hand():
    from benchmarks.flops import forward_flops, training_flops_per_example
    from models import build_model

    model = build_model("cnn", (32, 32, 3), 3)
    # 2 * output pixels * filters * (3 * 3 * input channels); pools 32 -> 16 -> 7
    expected = {"block1_conv": 2 * 32 * 32 * 16 * 27, "block2_conv": 2 * 16 * 16 * 32 * 144,
                "block3_conv": 2 * 7 * 7 * 64 * 288, "logits": 2 * 64 * 3}
    assert forward_flops(model) == expected
    assert training_flops_per_example(model) == 3 * 5_050_752


def test_flops_count_every_call_of_a_shared_layer():
    import keras

    from benchmarks.flops import forward_flops

    shared = keras.layers.Dense(5, name="shared")
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], keras.layers.Add()([shared(a), shared(b)]))
    assert forward_flops(model) == {"shared": 2 * (2 * 5 * 4)}
