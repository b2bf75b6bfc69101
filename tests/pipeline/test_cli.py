"""The convpipe command on fake stages: run, runs and show (--json), exit codes, config commands."""
import json
from pathlib import Path

import jsonschema
import pytest

from convpipe import cli
from pipeline.config import ConfigError, PipelineConfig
from tests.pipeline.conftest import REPO
from tests.pipeline.fake_stages import FAIL, STAGES


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)    # no ./pipeline_config.json: built-in defaults


def convpipe(capsys, *argv, stages=STAGES):
    code = cli.main(list(argv), stages=stages)
    out, err = capsys.readouterr()
    return code, out, err


def test_run_twice_then_runs_json_shows_everything_cached(capsys, tmp_path):
    code, out, _ = convpipe(capsys, "run", "--root", "r", "--set", "ingest.source.num_examples=3")
    assert code == 0 and "run 1 COMPLETE" in out
    code, out, _ = convpipe(capsys, "run", "--root", "r", "--set", "ingest.source.num_examples=3")
    assert code == 0
    code, out, _ = convpipe(capsys, "runs", "--root", "r", "--json")
    runs = json.loads(out)
    assert [(r["id"], r["state"], r["ran"], r["cached"]) for r in runs] == [
        (1, "COMPLETE", ["a", "b", "c"], []), (2, "COMPLETE", [], ["a", "b", "c"])]
    assert runs[1]["argv"] == ["convpipe", "run", "--root", "r", "--set", "ingest.source.num_examples=3"]
    assert (tmp_path / "r" / "logs" / "run-2.log").exists()

    code, out, _ = convpipe(capsys, "runs", "--root", "r")
    first, second = out.splitlines()
    assert first.split()[0] == "1" and first.endswith("a=ran b=ran c=ran")
    assert second.split()[3] == "COMPLETE" and second.endswith("a=cached b=cached c=cached")


def test_show_json_gives_params_reasons_and_lineage(capsys):
    convpipe(capsys, "run", "--root", "r")
    convpipe(capsys, "run", "--root", "r", "--set", "train.epochs=3")
    code, out, _ = convpipe(capsys, "show", "--root", "r", "--json")
    details = json.loads(out)
    assert details["run"]["id"] == 2 and details["run"]["config"]["train"]["epochs"] == 3
    a, b, c = details["executions"]
    assert (a["state"], a["why"]) == ("CACHED", "reused execution 1 of run 1 (same cache key)")
    assert (b["state"], b["params"], b["why"]) == ("COMPLETE", {"epochs": 3}, "params changed: epochs (8 -> 3)")
    assert b["inputs"][0]["produced_by"] == {"execution_id": 1, "stage": "a", "run_id": 1}
    assert c["inputs"][0]["produced_by"]["execution_id"] == b["id"]
    assert c["why"] == "inputs changed: result"
    assert Path(c["outputs"][0]["uri"], "report.txt").read_text() == "accuracy=" + str(sum(range(900)) * 3)

    code, out, _ = convpipe(capsys, "show", "1", "--root", "r")
    assert code == 0 and "why: no previous execution" in out and "in  data: Numbers #1" in out


def test_failed_stage_exits_1_and_show_has_the_error(capsys):
    FAIL.add("c")
    code, out, _ = convpipe(capsys, "run", "--root", "r")
    assert code == 1 and "run 1 FAILED: c: c failed on purpose" in out
    code, out, _ = convpipe(capsys, "show", "--root", "r", "--json")
    assert json.loads(out)["executions"][2]["error"] == "c failed on purpose"
    FAIL.clear()
    code, out, _ = convpipe(capsys, "run", "--root", "r", "--json")
    result = json.loads(out)
    assert code == 0 and [o["state"] for o in result["outcomes"]] == ["CACHED", "CACHED", "COMPLETE"]


def test_config_error_exits_2_without_traceback(capsys):
    code, out, err = convpipe(capsys, "run", "--root", "r", "--set", "train.batch_size=\"64\"")
    assert code == 2
    assert err.strip() == 'config: 1 problem(s)\n  train.batch_size: expected an integer >= 1, got "64"'
    assert not Path("r").exists()    # nothing ran, nothing was created
    code, _, err = convpipe(capsys, "run", "--root", "r", "--to", "nope")
    assert code == 2 and "--to nope: expected one of the stages a, b, c" in err


def test_config_file_errors_name_file_key_and_value(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": {"epochs": 0, "optimiser": "adam"}, "ingest": {"task": "pose"}}))
    code, _, err = convpipe(capsys, "config", "check", str(bad), stages=[])
    assert code == 2
    lines = err.splitlines()
    assert lines[0] == f"{bad}: 3 problem(s)"
    assert "  train.epochs: expected a number >= 1, got 0" in lines
    assert "  train.optimiser: unknown key (not part of the configuration schema)" in lines
    assert any(line.startswith("  ingest.task: expected one of 'classification'") and line.endswith('got "pose"')
               for line in lines)
    bad.write_text("{\"train\": {")
    code, _, err = convpipe(capsys, "config", "check", str(bad), stages=[])
    assert code == 2 and "not valid JSON" in err and "line 1" in err


def test_set_values_are_json_else_strings():
    config = cli.load_config(None, ["train.epochs=3", "model.name=fcn", "train.sweep={\"train.seed\": [1, 2]}",
                                    "ingest.image_size=[16, 24]"])
    assert (config.train.epochs, config.model.name) == (3, "fcn")
    assert config.train.sweep == {"train.seed": [1, 2]}
    assert config.ingest.image_size == (16, 24)
    with pytest.raises(ConfigError, match="--set train.epochs.x: train.epochs is not a section"):
        cli.load_config(None, ["train.epochs=3", "train.epochs.x=1"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        cli.load_config(None, ["train.epochs"])


def test_schema_is_generated_and_validates_the_default_config(capsys, tmp_path):
    code, _, _ = convpipe(capsys, "config", "schema", "--output", "schema.json")
    schema = json.loads(Path("schema.json").read_text())
    assert code == 0 and schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(PipelineConfig.model_json_schema(by_alias=True)["properties"])
    default = json.loads((REPO / "pipeline_config.json").read_text())
    jsonschema.validate(default, schema)
    default["train"]["batch_size"] = "64"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(default, schema)
    default["train"]["batch_size"] = 64
    default["train"]["unknown"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(default, schema)
    code, _, _ = convpipe(capsys, "config", "check", str(REPO / "pipeline_config.json"), stages=[])
    assert code == 0


def test_runs_on_an_empty_root(capsys):
    code, out, _ = convpipe(capsys, "runs", "--root", "empty", "--json")
    assert code == 0 and json.loads(out) == []
    code, _, err = convpipe(capsys, "show", "--root", "empty")
    assert code == 2 and "no metadata store" in err
    assert not Path("empty").exists()


def test_describe_model_input_comes_from_the_config():
    config = cli.load_config(None, ["ingest.task=segmentation", "ingest.source.num_classes=4"])
    assert cli.model_input(config, None, None) == ((32, 32, 3), 5)
    config = cli.load_config(None, ["ingest.task=video", "ingest.source.num_frames=6", "ingest.image_size=[16, 20]"])
    assert cli.model_input(config, None, None) == ((6, 16, 20, 3), 3)
    config = cli.load_config(None, ["ingest.source.name=tfds", "ingest.source.dataset=mnist"])
    with pytest.raises(ConfigError, match="pass --num-classes"):
        cli.model_input(config, "28,28,1", None)
    assert cli.model_input(config, "28,28,1", 10) == ((28, 28, 1), 10)


def test_config_check_runs_every_stage_check(capsys, tmp_path):
    from pipeline.stage import Stage

    def refuse(config):
        raise ConfigError(f"model.name: expected a registered model, got \"{config.model.name}\"")
    stages = [Stage("x", {"o": "T"}, lambda ctx: None, lambda c: {}, check=refuse)]
    good = tmp_path / "c.json"
    good.write_text(json.dumps({"model": {"name": "nope"}}))
    code, _, err = convpipe(capsys, "config", "check", str(good), stages=stages)
    assert code == 2 and err.strip() == 'model.name: expected a registered model, got "nope"'


def test_config_check_checks_every_trial_of_a_sweep(capsys, tmp_path):
    from pipeline.stage import Stage
    from pipeline.sweep import trial_configs

    stages = [Stage("train", {"model": "Model"}, lambda ctx: None, lambda c: {}, expand=trial_configs)]
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"train": {"sweep": {"train.optimizer.name": ["adam", "adamw"]}, "seeds": [0, 1]}}))
    code, _, err = convpipe(capsys, "config", "check", str(config), stages=stages)
    assert code == 2 and "trial optimizer=adamw,seed=0" in err and 'got "adamw"' in err
    config.write_text(json.dumps({"train": {"sweep": {"train.optimizer.name": ["adam", "sgd"]}, "seeds": [0, 1]}}))
    code, out, _ = convpipe(capsys, "config", "check", str(config), stages=stages)
    assert code == 0 and out.strip().endswith("valid (4 trials)")


def test_tensorboard_points_at_the_runs_logdir(capsys, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda command: calls.append(command) or 0)
    code, _, _ = convpipe(capsys, "tensorboard", "--root", "r", "--port", "6007")
    assert code == 0
    [command] = calls
    assert command[-4:] == ["--logdir", str(Path("r") / "tensorboard"), "--port", "6007"]
    assert (tmp_path / "r" / "tensorboard").is_dir()


def test_runs_counts_a_sweeps_trials_in_one_word_per_stage():
    from pipeline.history import stage_words

    stages = [{"stage": "ingest", "state": "CACHED"}] + [{"stage": "train", "state": state} for state in
                                                          ("COMPLETE", "CACHED", "CACHED", "FAILED")]
    stages.append({"stage": "compare", "state": "SKIPPED"})
    assert stage_words(stages) == "ingest=cached train=ran×1,cached×2,FAILED×1 compare=skipped"
