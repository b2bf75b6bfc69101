"""evaluate: metrics against hand-computed values, the artifact files, the blessing and the served comparison."""
import json

import numpy as np
import pytest

from components.tasks.classification_metrics import classification_metrics, not_worse
from tests.components import classification_fixtures as fx


def test_metrics_match_hand_computed_values():
    # true:      0 0 1 1 2 ; predicted (argmax): 0 1 1 1 0
    probabilities = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.5, 0.1, 0.4]])
    metrics = classification_metrics([0, 0, 1, 1, 2], probabilities, ["a", "b", "c"], top_k=2)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    # top-2 sets: {0,1} {1,0} {1,0} {1,2} {0,2} -> the true class is in every one
    assert metrics["top_2_accuracy"] == pytest.approx(1.0)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # precision: a 1/2, b 2/3, c 0 (never predicted); recall: a 1/2, b 1, c 0
    assert metrics["per_class"]["a"]["precision"] == pytest.approx(0.5)
    assert metrics["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["c"]["precision"] == 0.0
    assert metrics["per_class"]["b"]["recall"] == pytest.approx(1.0)
    assert metrics["macro_recall"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert metrics["per_class"]["b"]["f1"] == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert metrics["loss"] == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.8, 0.5, 0.4])))
    assert [metrics["per_class"][n]["support"] for n in "abc"] == [2, 2, 1]


def test_not_worse_follows_the_metric_direction():
    assert not_worse("accuracy", 0.90, 0.92, 0.02) and not not_worse("accuracy", 0.89, 0.92, 0.02)
    assert not_worse("loss", 0.31, 0.30, 0.02) and not not_worse("loss", 0.40, 0.30, 0.02)


def run_evaluate(tmp_path, config, model_dir, examples_dir, execution_id=1):
    from components.evaluate.stage import STAGE

    ctx = fx.context(config, tmp_path, "evaluate", {"examples": examples_dir, "model": model_dir}, ["evaluation"],
                     execution_id=execution_id)
    STAGE.executor(ctx)
    return ctx, ctx.outputs["evaluation"]


def test_evaluate_writes_metrics_predictions_report_and_blessing(tmp_path):
    examples_dir = fx.write_examples(tmp_path / "examples")
    model_dir = fx.write_model_artifact(tmp_path / "model")
    config = fx.tiny_config(tmp_path)
    ctx, out = run_evaluate(tmp_path, config, model_dir, examples_dir)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == 1.0 and metrics["num_examples"] == 12
    assert metrics["confusion_matrix"] == [[4, 0, 0], [0, 4, 0], [0, 0, 4]]
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 12
    first = lines[0]
    assert set(first) >= {"id", "source", "true", "predicted", "probability"}
    assert first["true"] == fx.CLASS_NAMES[int(first["id"].split("-")[1]) % 3] == first["predicted"]
    assert first["source"].startswith("tiny:test/") and 0.34 < first["probability"] <= 1.0
    blessing = json.loads((out / "blessing.json").read_text())
    assert blessing["blessed"] is True and blessing["served"] is None
    assert [c["kind"] for c in blessing["checks"]] == ["threshold"]
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 3  # confusion matrix, curves, sample grid
    assert "<script" not in report and "http" not in report.replace("http-equiv", "")
    assert len(list((out / "probe").glob("*.png"))) == 8
    assert ctx.properties["evaluation"]["blessed"] is True


def test_threshold_not_met_is_not_blessed(tmp_path):
    examples_dir = fx.write_examples(tmp_path / "examples")
    model_dir = fx.write_model_artifact(tmp_path / "model", fx.oracle_model(wrong=True))
    config = fx.tiny_config(tmp_path)
    _, out = run_evaluate(tmp_path, config, model_dir, examples_dir)
    blessing = json.loads((out / "blessing.json").read_text())
    assert blessing["blessed"] is False
    assert blessing["checks"][0] == {"kind": "threshold", "metric": "accuracy", "value": 0.0, "reference": 0.5,
                                     "passed": False, "detail": "accuracy >= 0.5"}


def test_blessing_compares_with_the_served_model_on_the_same_test_split(tmp_path):
    from components import serving

    examples_dir = fx.write_examples(tmp_path / "examples")
    config = fx.tiny_config(tmp_path)
    served_dir = tmp_path / "serving" / "tiny"
    # A perfect model is served; a perfect candidate is blessed (not worse), a worse one is not.
    serving.write_saved_model(fx.oracle_model(), fx.CLASS_NAMES, (8, 8, 3), served_dir / "1", {"model_fingerprint": "x"})
    config.evaluate.thresholds = {"accuracy": 0.0}
    _, out = run_evaluate(tmp_path, config, fx.write_model_artifact(tmp_path / "good"), examples_dir)
    good = json.loads((out / "blessing.json").read_text())
    assert good["blessed"] is True
    assert good["served"] == {"version": 1, "path": str(served_dir / "1"), "accuracy": 1.0}

    worse_dir = fx.write_model_artifact(tmp_path / "worse", fx.oracle_model(wrong=True))
    _, out = run_evaluate(tmp_path, config, worse_dir, examples_dir, execution_id=2)
    worse = json.loads((out / "blessing.json").read_text())
    assert worse["blessed"] is False
    served_check = [c for c in worse["checks"] if c["kind"] == "served"][0]
    assert (served_check["value"], served_check["reference"], served_check["passed"]) == (0.0, 1.0, False)


def test_served_fingerprint_ignores_versions_this_root_exported(tmp_path):
    from components import serving
    from components.evaluate.stage import served_fingerprint

    config = fx.tiny_config(tmp_path)
    served_dir = tmp_path / "serving" / "tiny"
    assert served_fingerprint(config) == ""
    own = {"model_fingerprint": "a", "pipeline_root": str((tmp_path / "root").resolve())}
    (served_dir / "1" / "assets.extra").mkdir(parents=True)
    (served_dir / "1" / "assets.extra" / "convpipe.json").write_text(json.dumps(own))
    assert served_fingerprint(config) == ""
    (served_dir / "2" / "assets.extra").mkdir(parents=True)
    (served_dir / "2" / "assets.extra" / "convpipe.json").write_text(json.dumps({"model_fingerprint": "b"}))
    assert served_fingerprint(config) != ""
    assert serving.versions(served_dir) == [1, 2]
