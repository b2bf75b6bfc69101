"""The runner: order, caching and its invalidation, why-it-ran, failures and resume, --from/--to."""
from pathlib import Path

import pytest

from pipeline.config import ConfigError
from pipeline.metadata import MetadataStore
from pipeline.cache import cache_key
from pipeline.runner import Runner
from pipeline.stage import Artifact, Stage
from tests.pipeline import fake_stages
from tests.pipeline.fake_stages import CALLS, FAIL, STAGES


@pytest.fixture
def versions():
    return {"a": "code-a1", "b": "code-b1", "c": "code-c1"}


@pytest.fixture
def run(tmp_path, make_config, versions):
    def run(*overrides, stages=STAGES, **options):
        runner = Runner(make_config(*overrides), stages, tmp_path / "root",
                        code_version=lambda stage: versions[stage.name])
        return runner.run(**options)
    return run


def states(result):
    return [(o.stage, o.state) for o in result.outcomes]


def test_first_run_publishes_outputs_and_records_lineage(run, tmp_path):
    result = run()
    assert result.ok and states(result) == [("a", "COMPLETE"), ("b", "COMPLETE"), ("c", "COMPLETE")]
    assert CALLS == ["a", "b", "c"]
    root = tmp_path / "root"
    a_id, b_id, c_id = (o.execution_id for o in result.outcomes)
    # seeds 0..4 summed = 10, times epochs (default 8) = 80
    assert (root / "b" / str(b_id) / "result" / "sum.txt").read_text() == "80"
    assert (root / "c" / str(c_id) / "report" / "report.txt").read_text() == "accuracy=80"
    assert not list(root.glob("*/.tmp-*")) and not list(root.glob("*/.work/*"))
    with MetadataStore(root) as store:
        b_inputs = store.inputs(b_id)
        assert b_inputs["data"].id == store.outputs(a_id)["data"].id
        assert store.producer(b_inputs["data"].id).id == a_id
        assert store.outputs(a_id)["data"].properties == {"count": 5}
        assert store.execution(a_id).reason["summary"] == "no previous execution"
        assert store.run(result.run_id).state == "COMPLETE"
    assert result.log_file.read_text().count("COMPLETE") >= 3


def test_unchanged_rerun_reuses_every_execution(run):
    first = run()
    CALLS.clear()
    second = run()
    assert CALLS == []
    assert states(second) == [("a", "CACHED"), ("b", "CACHED"), ("c", "CACHED")]
    assert second.outcomes[2].reason["execution_id"] == first.outcomes[2].execution_id
    with MetadataStore(Path(second.log_file).parents[1]) as store:
        cached_c = store.outputs(second.outcomes[2].execution_id)["report"]
        assert cached_c.id == store.outputs(first.outcomes[2].execution_id)["report"].id


def test_param_change_reruns_the_stage_and_downstream_only(run):
    run()
    CALLS.clear()
    result = run("train.epochs=2")
    assert states(result) == [("a", "CACHED"), ("b", "COMPLETE"), ("c", "COMPLETE")]
    assert CALLS == ["b", "c"]
    b_reason, c_reason = result.outcomes[1].reason, result.outcomes[2].reason
    assert b_reason["params_changed"] == {"epochs": [8, 2]}
    assert b_reason["summary"] == "params changed: epochs (8 -> 2)"
    assert c_reason["inputs_changed"] == ["result"] and c_reason["params_changed"] == {}


def test_downstream_param_change_leaves_upstream_cached(run):
    run()
    CALLS.clear()
    result = run("evaluate.metric=loss")
    assert states(result) == [("a", "CACHED"), ("b", "CACHED"), ("c", "COMPLETE")]
    assert result.outcomes[2].reason["params_changed"] == {"metric": ["accuracy", "loss"]}


def test_input_change_propagates(run):
    run()
    CALLS.clear()
    result = run("ingest.source.seed=1")
    assert CALLS == ["a", "b", "c"]
    assert result.outcomes[1].reason["inputs_changed"] == ["data"]
    assert result.outcomes[1].reason["params_changed"] == {}


def test_code_change_reruns_that_stage(run, versions):
    run()
    CALLS.clear()
    versions["c"] = "code-c2"
    result = run()
    assert CALLS == ["c"]
    assert result.outcomes[2].reason["code_changed"] is True
    assert result.outcomes[2].reason["summary"] == "code changed"


def test_force_reruns_cached_stages(run):
    run()
    CALLS.clear()
    result = run(force=True, from_stage="b")
    assert CALLS == ["b", "c"]
    assert result.outcomes[0].reason["summary"].startswith("forced (--force)")


def test_from_and_to_select_stages(run):
    result = run(to_stage="b")
    assert states(result) == [("a", "COMPLETE"), ("b", "COMPLETE")]
    CALLS.clear()
    result = run(from_stage="c", to_stage="c")
    assert states(result) == [("c", "COMPLETE")] and CALLS == ["c"]
    # c read b's artifact from the earlier run
    assert result.outcomes[0].reason["summary"] == "no previous execution"


def test_from_without_upstream_output_fails_clearly(run):
    result = run(from_stage="b")
    assert not result.ok
    assert "stage a has never completed" in result.error and "convpipe run --to a" in result.error


def test_unknown_stage_names_are_config_errors(run):
    with pytest.raises(ConfigError, match="--from train: expected one of the stages a, b, c"):
        run(from_stage="train")
    with pytest.raises(ConfigError, match="--from c comes after --to a"):
        run(from_stage="c", to_stage="a")


def test_failure_is_recorded_and_the_next_run_resumes_there(run, tmp_path):
    FAIL.add("b")
    failed = run()
    assert states(failed) == [("a", "COMPLETE"), ("b", "FAILED")]
    assert failed.error == "b: b failed on purpose"
    root = tmp_path / "root"
    b_id = failed.outcomes[1].execution_id
    assert not (root / "b" / str(b_id)).exists() and not list(root.glob("b/.tmp-*"))
    # the work dir survives the failed attempt (it holds backups)
    assert [p.read_text() for p in root.glob("b/.work/*/attempts.txt")] == ["1"]
    with MetadataStore(root) as store:
        record = store.execution(b_id)
        assert (record.state, record.error) == ("FAILED", "b failed on purpose")
        assert store.run(failed.run_id).state == "FAILED"
        assert store.outputs(b_id) == {}

    FAIL.clear()
    CALLS.clear()
    resumed = run()
    assert states(resumed) == [("a", "CACHED"), ("b", "COMPLETE"), ("c", "COMPLETE")]
    assert CALLS == ["b", "c"]
    assert resumed.outcomes[1].reason["retry_of"] == b_id
    assert f"retrying after execution {b_id} failed" in resumed.outcomes[1].reason["summary"]
    assert not list(root.glob("b/.work/*"))   # removed after success


def test_unexpected_exception_is_recorded_with_type(run, tmp_path):
    def boom(ctx):
        raise ZeroDivisionError("division by zero")
    stages = [fake_stages.A, Stage("b", {"result": "Numbers"}, boom, lambda c: {}, inputs={"data": "a.data"})]
    result = run(stages=stages)
    assert result.outcomes[1].error == "ZeroDivisionError: division by zero"
    with MetadataStore(tmp_path / "root") as store:
        assert "ZeroDivisionError" in store.execution(result.outcomes[1].execution_id).traceback


def test_disabled_stage_passes_its_input_through(run):
    first = run("augment.enabled=false")
    assert states(first) == [("a", "COMPLETE"), ("b", "SKIPPED"), ("c", "COMPLETE")]
    assert CALLS == ["a", "c"]
    with MetadataStore(Path(first.log_file).parents[1]) as store:
        a_out = store.outputs(first.outcomes[0].execution_id)["data"]
        assert store.outputs(first.outcomes[1].execution_id)["result"].id == a_out.id
        assert store.inputs(first.outcomes[2].execution_id)["result"].id == a_out.id


def test_checks_run_before_any_stage(run):
    def refuse(config):
        raise ConfigError("evaluate.metric: expected a metric c knows, got \"accuracy\"")
    stages = [*STAGES[:2], Stage("c", {"report": "Report"}, fake_stages.run_c, lambda c: {},
                                 inputs={"result": "b.result"}, check=refuse)]
    with pytest.raises(ConfigError, match="expected a metric c knows"):
        run(stages=stages)
    assert CALLS == []


def test_missing_upstream_stage_is_named(run):
    with pytest.raises(ConfigError, match="stage c reads b.result, but stage b is not an earlier stage"):
        run(stages=[fake_stages.A, fake_stages.C])


def test_cache_key_depends_on_each_part():
    art = Artifact(1, "T", Path("/x"), "f1")
    base = cache_key("s", "v", {"p": 1}, {"i": art}, None)
    assert base == cache_key("s", "v", {"p": 1}, {"i": Artifact(9, "T", Path("/y"), "f1")}, None)
    changed = [cache_key("t", "v", {"p": 1}, {"i": art}, None), cache_key("s", "w", {"p": 1}, {"i": art}, None),
               cache_key("s", "v", {"p": 2}, {"i": art}, None),
               cache_key("s", "v", {"p": 1}, {"i": Artifact(1, "T", Path("/x"), "f2")}, None),
               cache_key("s", "v", {"p": 1}, {"i": art}, "ext")]
    assert len({base, *changed}) == 6


def test_deleted_outputs_are_not_reused(run, tmp_path):
    import shutil
    first = run(to_stage="a")
    shutil.rmtree(tmp_path / "root" / "a" / str(first.outcomes[0].execution_id))
    CALLS.clear()
    second = run(to_stage="a")
    assert CALLS == ["a"]
    assert "missing from disk" in second.outcomes[0].reason["summary"]


def test_a_disabled_stage_must_have_one_input_and_one_output(run):
    two_inputs = Stage("c", {"report": "Report"}, fake_stages.run_c, lambda c: {},
                       inputs={"result": "b.result", "data": "a.data"}, enabled=lambda c: False)
    with pytest.raises(ConfigError, match="stage c is disabled, but only a stage with one input"):
        run(stages=[*STAGES[:2], two_inputs])
    assert CALLS == []


def test_from_uses_the_upstream_execution_matching_the_config(run, caplog):
    run("train.epochs=2")
    run("train.epochs=3")           # b's latest execution now has epochs=3
    CALLS.clear()
    result = run("train.epochs=2", from_stage="c")
    assert CALLS == []              # c's key matches its run with epochs=2: b's epochs=2 output was chosen
    assert states(result) == [("c", "CACHED")]
    result = run("train.epochs=5", from_stage="c")
    # no b with epochs=5: the latest b (epochs=3) is used, with a warning, and c on it is cached
    assert "no execution matches the current config and code (params changed: epochs (3 -> 5))" in caplog.text
    with MetadataStore(Path(result.log_file).parents[1]) as store:
        report = store.outputs(result.outcomes[0].execution_id)["report"].uri
    assert (report / "report.txt").read_text() == "accuracy=30"     # sum(0..4) * 3
