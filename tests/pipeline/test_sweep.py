"""Sweeps: trial expansion and names (pipeline/sweep.py), and the runner's trial fan-out with fake stages."""
import dataclasses
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from pipeline import metadata as md
from pipeline.config import ConfigError, load_config
from pipeline.metadata import MetadataStore
from pipeline.runner import Runner
from pipeline.sweep import expand, key_labels
from tests.pipeline import fake_sweep_stages as fake
from tests.pipeline.conftest import PYTHON

SWEEP = '{"train.loss": ["hinge", "focal"], "train.optimizer.name": ["sgd", "adam"]}'


def config(*overrides):
    return load_config(None, ["ingest.source.num_examples=5", *overrides])


# ------------------------------------------------------------------------------------------------
# expansion
# ------------------------------------------------------------------------------------------------
def test_grid_times_seeds_in_order_with_stable_names_and_groups():
    trials = expand(config(f"train.sweep={SWEEP}", "train.seeds=[0, 7]"))
    assert [t.name for t in trials] == [
        "loss=hinge,optimizer=sgd,seed=0", "loss=hinge,optimizer=sgd,seed=7",
        "loss=hinge,optimizer=adam,seed=0", "loss=hinge,optimizer=adam,seed=7",
        "loss=focal,optimizer=sgd,seed=0", "loss=focal,optimizer=sgd,seed=7",
        "loss=focal,optimizer=adam,seed=0", "loss=focal,optimizer=adam,seed=7"]
    assert trials[3].group == "loss=hinge,optimizer=adam" and trials[3].seed == 7
    assert trials[3].values == {"loss": "hinge", "optimizer": "adam"}
    third = trials[3].config
    assert (third.train.loss, third.train.optimizer.name, third.train.seed) == ("hinge", "adam", 7)
    # how to run the sweep is not part of a trial
    assert third.train.sweep == {} and third.train.seeds == [] and third.train.parallel_trials == 1


def test_adding_a_value_keeps_every_other_trial_and_its_config():
    before = {t.name: t.config.to_dict() for t in expand(config(f"train.sweep={SWEEP}", "train.seeds=[0, 1]"))}
    grown = '{"train.loss": ["hinge", "focal", "mse"], "train.optimizer.name": ["sgd", "adam"]}'
    after = {t.name: t.config.to_dict()
             for t in expand(config(f"train.sweep={grown}", "train.seeds=[0, 1]", "train.parallel_trials=2"))}
    assert set(after) - set(before) == {f"loss=mse,optimizer={o},seed={s}" for o in ("sgd", "adam") for s in (0, 1)}
    assert all(after[name] == before[name] for name in before)


def test_a_trial_equals_the_plain_run_with_its_values():
    trial = expand(config('train.sweep={"train.loss": ["hinge", "focal"]}'))[1]
    assert trial.name == "loss=focal" and trial.group == "loss=focal"
    assert trial.config.to_dict() == config("train.loss=focal").to_dict()


def test_no_sweep_is_one_default_trial_and_seeds_alone_repeat_it():
    (only,) = expand(config("train.seed=4"))
    assert (only.name, only.group, only.seed, only.config.train.seed) == ("default", "default", 4, 4)
    repeated = expand(config("train.seeds=[1, 2, 3]"))
    assert [t.name for t in repeated] == ["seed=1", "seed=2", "seed=3"]
    assert {t.group for t in repeated} == {"default"}


def test_section_values_merge_and_are_named_by_their_name():
    sweep = json.dumps({"train.optimizer": [{"name": "adadelta", "learning_rate": 1.0},
                                            {"name": "sgd", "learning_rate": 0.1},
                                            {"name": "sgd", "learning_rate": 0.01}]})
    trials = expand(config(f"train.sweep={sweep}", "train.optimizer.schedule=cosine"))
    assert [t.name for t in trials] == ["optimizer=adadelta(learning_rate=1)", "optimizer=sgd(learning_rate=0.1)",
                                        "optimizer=sgd(learning_rate=0.01)"]
    assert expand(config('train.sweep={"train.optimizer": [{"name": "adam"}]}'))[0].name == "optimizer=adam"
    lists = expand(config('train.sweep={"model.params.blocks": [[{"filters": 8}], [{"filters": 16}]]}'))
    assert [t.name for t in lists] == ["blocks=h" + hashlib.sha256(json.dumps(v).encode()).hexdigest()[:6]
                                       for v in ([{"filters": 8}], [{"filters": 16}])]
    first = trials[0].config.train.optimizer
    assert (first.name, first.learning_rate, first.schedule) == ("adadelta", 1.0, "cosine")  # schedule kept


def test_labels_are_the_shortest_distinct_tails():
    assert key_labels(["train.optimizer.name", "train.optimizer.learning_rate", "model.params.fusion",
                       "model.name"]) == {"train.optimizer.name": "optimizer",
                                          "train.optimizer.learning_rate": "learning_rate",
                                          "model.params.fusion": "fusion", "model.name": "model"}
    assert key_labels(["model.params.head.units", "model.params.units"]) == {
        "model.params.head.units": "head.units", "model.params.units": "params.units"}
    numbers = expand(config('train.sweep={"train.optimizer.learning_rate": [0.001, 1e-05, 0.1]}'))
    assert [t.name for t in numbers] == ["learning_rate=0.001", "learning_rate=1e-05", "learning_rate=0.1"]


@pytest.mark.parametrize("overrides, fragment", [
    (['train.sweep={"augment.copies": [1, 2]}'], "key 'augment.copies' cannot be swept"),
    (['train.sweep={"train.seed": [1, 2]}'], "key 'train.seed' cannot be swept"),
    (['train.sweep={"train.loss": []}'], "train.sweep.train.loss: expected at least one value"),
    (['train.sweep={"train.loss": ["mse", "mse"]}'], 'values "mse" appear more than once'),
    (["train.seeds=[1, 1]"], "train.seeds: seeds [1] appear more than once"),
    (['train.sweep={"train.optimizer.name": ["adam", "rmsprop"]}'], "trial optimizer=rmsprop"),
    (['train.sweep={"train.epochs": [0]}'], "trial epochs=0: 1 problem(s)\n  train.epochs: expected a number >= 1, got 0"),
])
def test_bad_sweeps_are_named(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        expand(config(*overrides))
    assert fragment in str(err.value)


# ------------------------------------------------------------------------------------------------
# the runner: one execution per trial, per-trial stages, gathering, choosing
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def calls(tmp_path, monkeypatch):
    path = tmp_path / "calls.txt"
    monkeypatch.setenv("FAKE_CALLS", str(path))
    monkeypatch.delenv("FAKE_FAIL_TRIAL", raising=False)

    def read():
        lines = path.read_text().splitlines() if path.exists() else []
        path.unlink(missing_ok=True)
        return lines
    return read


def run_sweep(tmp_path, *overrides, **options):
    runner = Runner(config(*overrides), fake.STAGES, tmp_path / "root")
    return runner.run(**options)


def states(outcome):
    return {t["trial"]: t["state"] for t in outcome.trials}


def test_each_trial_is_an_execution_and_the_chosen_one_reaches_later_stages(tmp_path, calls):
    result = run_sweep(tmp_path, f"train.sweep={SWEEP}", "train.seeds=[0, 1]")
    assert result.ok, result.error
    data, fit, measure, pick, ship = result.outcomes
    assert fit.state == md.COMPLETE and len(fit.trials) == 8 and fit.execution_id is None
    assert set(states(fit).values()) == {md.COMPLETE} and set(states(measure).values()) == {md.COMPLETE}
    assert [t["trial"] for t in measure.trials] == [t["trial"] for t in fit.trials]
    assert sorted(calls()) == sorted(["data None", "pick None", "ship None"]
                                     + [f"{stage} {t['trial']}" for stage in ("fit", "measure") for t in fit.trials])
    with MetadataStore(tmp_path / "root") as store:
        fits = [store.execution(t["execution_id"]) for t in fit.trials]
        assert [e.trial for e in fits] == [t["trial"] for t in fit.trials]
        assert fits[0].params == {"loss": "hinge", "optimizer": "sgd", "seed": 0, "lr": 0.001}
        assert len({e.cache_key for e in fits}) == 8
        best = "loss=focal,optimizer=adam,seed=1"                       # 0.9 + 0.05 + 0.001
        comparison = store.outputs(pick.execution_id)["comparison"]
        assert comparison.properties["chosen_trial"] == best
        assert len(store.inputs(pick.execution_id)) == 16                # model[...] and evaluation[...] per trial
        assert f"model[{best}]" in store.inputs(pick.execution_id)
        shipped_inputs = store.inputs(ship.execution_id)
        best_fit = next(t["execution_id"] for t in fit.trials if t["trial"] == best)
        assert shipped_inputs["model"].id == store.outputs(best_fit)["model"].id
        shipped = json.loads((store.outputs(ship.execution_id)["pushed"].uri / "shipped.json").read_text())
    assert shipped == {"trial": best, "score": pytest.approx(0.951), "evaluation_score": pytest.approx(0.951)}


def test_adding_a_value_runs_only_the_new_trials(tmp_path, calls):
    assert run_sweep(tmp_path, f"train.sweep={SWEEP}", "train.seeds=[0, 1]").ok
    calls()
    unchanged = run_sweep(tmp_path, f"train.sweep={SWEEP}", "train.seeds=[0, 1]")
    assert [o.state for o in unchanged.outcomes] == [md.CACHED] * 5 and calls() == []

    grown = '{"train.loss": ["hinge", "focal", "mae"], "train.optimizer.name": ["sgd", "adam"]}'
    result = run_sweep(tmp_path, f"train.sweep={grown}", "train.seeds=[0, 1]", "train.parallel_trials=1")
    assert result.ok, result.error
    fit = result.outcomes[1]
    new = {f"loss=mae,optimizer={o},seed={s}" for o in ("sgd", "adam") for s in (0, 1)}
    assert {t for t, s in states(fit).items() if s == md.COMPLETE} == new
    assert {t for t, s in states(fit).items() if s == md.CACHED} == set(states(fit)) - new and len(fit.trials) == 12
    assert fit.reason["summary"].startswith("12 trials: 4 ran, 8 cached (ran loss=mae,optimizer=sgd,seed=0, ")
    assert all(t["summary"] == f"trial {t['trial']}: new trial" for t in fit.trials if t["trial"] in new)
    ran = calls()
    assert sorted(c for c in ran if c.startswith("fit")) == sorted(f"fit {t}" for t in new)
    assert sorted(c for c in ran if c.startswith("measure")) == sorted(f"measure {t}" for t in new)
    assert "pick None" in ran                                            # more trials to compare
    assert result.outcomes[4].state == md.CACHED                         # the chosen trial is the same


def test_a_failed_trial_lets_its_siblings_finish_and_is_retried_alone(tmp_path, calls, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL_TRIAL", "loss=focal,optimizer=sgd")
    result = run_sweep(tmp_path, f"train.sweep={SWEEP}")
    assert not result.ok and [o.stage for o in result.outcomes] == ["data", "fit"]
    fit = result.outcomes[1]
    assert fit.state == md.FAILED and states(fit)["loss=focal,optimizer=sgd"] == md.FAILED
    assert list(states(fit).values()).count(md.COMPLETE) == 3
    assert "trial loss=focal,optimizer=sgd: trial loss=focal,optimizer=sgd failed on purpose" in result.error
    calls()
    monkeypatch.delenv("FAKE_FAIL_TRIAL")
    retried = run_sweep(tmp_path, f"train.sweep={SWEEP}")
    assert retried.ok
    assert {t: s for t, s in states(retried.outcomes[1]).items() if s == md.COMPLETE} == {
        "loss=focal,optimizer=sgd": md.COMPLETE}
    assert "retrying after execution" in next(t["summary"] for t in retried.outcomes[1].trials
                                              if t["trial"] == "loss=focal,optimizer=sgd")


def test_the_code_version_is_read_once_per_run_though_the_checkout_changes(tmp_path):
    reads = []

    def code_version(stage):  # a checkout edited while the sweep runs: every read differs
        reads.append(stage.name)
        return f"{stage.name}-{len(reads)}"
    runner = Runner(config(f"train.sweep={SWEEP}"), fake.STAGES, tmp_path / "root", code_version=code_version)
    result = runner.run()
    assert result.ok and sorted(reads) == sorted(s.name for s in fake.STAGES)
    with MetadataStore(tmp_path / "root") as store:
        versions = {store.execution(t["execution_id"]).code_version for t in result.outcomes[1].trials}
    assert len(versions) == 1


def test_several_trials_without_a_choice_stop_the_run_with_a_reason(tmp_path):
    stages = [fake.DATA, fake.FIT, dataclasses.replace(fake.SHIP, inputs={"model": "fit.model"})]
    result = Runner(config(f"train.sweep={SWEEP}"), stages, tmp_path / "root").run()
    assert not result.ok
    assert "stage ship reads fit.model, which holds 4 trials, and no earlier stage chose one" in result.error


def test_one_trial_flows_like_a_plain_artifact(tmp_path, calls):
    result = run_sweep(tmp_path)
    assert result.ok
    fit = result.outcomes[1]
    assert fit.execution_id is not None and [t["trial"] for t in fit.trials] == ["default"]
    with MetadataStore(tmp_path / "root") as store:
        assert store.execution(fit.execution_id).trial == "default"
        assert store.outputs(result.outcomes[3].execution_id)["comparison"].properties["chosen_trial"] == "default"


def test_from_a_later_stage_reuses_the_trials_and_the_choice(tmp_path, calls):
    assert run_sweep(tmp_path, f"train.sweep={SWEEP}").ok
    calls()
    result = run_sweep(tmp_path, f"train.sweep={SWEEP}", from_stage="ship", force=True)
    assert result.ok and [o.stage for o in result.outcomes] == ["ship"]
    assert calls() == ["ship None"]
    with MetadataStore(tmp_path / "root") as store:
        shipped = json.loads((store.outputs(result.outcomes[0].execution_id)["pushed"].uri / "shipped.json").read_text())
    assert shipped["trial"] == "loss=focal,optimizer=adam"


def test_parallel_trials_run_in_child_processes_with_the_same_results(tmp_path, calls, caplog):
    caplog.set_level("INFO", logger="convpipe")
    result = run_sweep(tmp_path / "parallel", f"train.sweep={SWEEP}", "train.parallel_trials=3")
    assert result.ok, result.error
    sequential = run_sweep(tmp_path / "sequential", f"train.sweep={SWEEP}")
    with MetadataStore(tmp_path / "parallel" / "root") as store:
        parallel_out = {t["trial"]: json.loads((store.outputs(t["execution_id"])["model"].uri / "score.json")
                                               .read_text()) for t in result.outcomes[1].trials}
    with MetadataStore(tmp_path / "sequential" / "root") as store:
        sequential_out = {t["trial"]: json.loads((store.outputs(t["execution_id"])["model"].uri / "score.json")
                                                 .read_text()) for t in sequential.outcomes[1].trials}
    assert {t: v["score"] for t, v in parallel_out.items()} == {t: v["score"] for t, v in sequential_out.items()}
    assert {v["pid"] for v in sequential_out.values()} == {os.getpid()}
    assert os.getpid() not in {v["pid"] for v in parallel_out.values()} and len({v["pid"] for v in parallel_out.values()}) == 4
    # the children's log lines came back under the stage's logger, and properties were recorded
    assert "fit loss=hinge,optimizer=adam: score 0.750" in caplog.messages
    with MetadataStore(tmp_path / "parallel" / "root") as store:
        first = result.outcomes[1].trials[0]
        assert store.outputs(first["execution_id"])["model"].properties == {"score": pytest.approx(0.7)}


def test_a_failing_child_is_recorded_and_its_siblings_finish(tmp_path, calls, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL_TRIAL", "loss=hinge,optimizer=adam")
    result = run_sweep(tmp_path, f"train.sweep={SWEEP}", "train.parallel_trials=2")
    fit = result.outcomes[1]
    assert fit.state == md.FAILED and list(states(fit).values()).count(md.COMPLETE) == 3
    with MetadataStore(tmp_path / "root") as store:
        failed = next(t["execution_id"] for t in fit.trials if t["state"] == md.FAILED)
        assert store.execution(failed).error == "trial loss=hinge,optimizer=adam failed on purpose"
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "root" / "fit").iterdir())


CLI_CHILD = textwrap.dedent("""
    import sys
    from convpipe import cli
    from tests.pipeline.fake_sweep_stages import STAGES
    sys.exit(cli.main(sys.argv[1:], stages=STAGES))
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(")")[-1].split()[0] == "Z")


def _blocked_parallel_run(tmp_path, subprocess_env):
    block = tmp_path / "block"
    block.mkdir()
    root = tmp_path / "root"
    env = dict(subprocess_env, FAKE_BLOCK=str(block))
    process = subprocess.Popen([PYTHON, "-c", CLI_CHILD, "run", "--root", str(root), "--set", f"train.sweep={SWEEP}",
                                "--set", "train.parallel_trials=2"], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(list(block.glob("started-*"))) < 2:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "two trials never started"
        time.sleep(0.05)
    children = [int(p.name.split("-")[1]) for p in block.glob("started-*")]
    return process, root, children


def _wait_gone(pids, timeout=20.0):
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if _alive(pid)]


def test_sigterm_kills_the_running_trials_and_records_them_failed(tmp_path, subprocess_env):
    process, root, children = _blocked_parallel_run(tmp_path, subprocess_env)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert _wait_gone(children) == []
    assert not list(root.glob("*/.tmp-*"))
    with MetadataStore(root) as store:
        [run] = store.runs()
        fits = [e for e in store.executions(run.id) if e.stage == "fit"]
    assert [e.state for e in fits] == [md.FAILED, md.FAILED]            # the two queued trials never started
    assert all(e.error == "interrupted (Interrupted: signal SIGTERM)" for e in fits)


def test_sigkill_of_the_runner_takes_its_trials_with_it(tmp_path, subprocess_env):
    process, root, children = _blocked_parallel_run(tmp_path, subprocess_env)
    process.kill()
    process.communicate(timeout=60)
    assert _wait_gone(children) == []                                     # PR_SET_PDEATHSIG
    result = Runner(config(f"train.sweep={SWEEP}"), fake.STAGES, root).run()
    assert result.ok
    with MetadataStore(root) as store:
        assert [e.state for e in store.executions(1) if e.stage == "fit"] == [md.ABANDONED, md.ABANDONED]


def test_a_version_1_store_gains_the_trial_column(tmp_path):
    """A store written before Alembic (PRAGMA user_version 1) is stamped and upgraded in place."""
    path = tmp_path / "metadata.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, started REAL NOT NULL, ended REAL, "
            "state TEXT NOT NULL, config TEXT NOT NULL, argv TEXT NOT NULL, options TEXT NOT NULL DEFAULT '{}', "
            "pid INTEGER, host TEXT, error TEXT);"
            "CREATE TABLE executions (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id INTEGER NOT NULL, "
            "stage TEXT NOT NULL, state TEXT NOT NULL, params TEXT NOT NULL, cache_key TEXT NOT NULL, "
            "code_version TEXT NOT NULL, inputs TEXT NOT NULL, external_fingerprint TEXT, "
            "reason TEXT NOT NULL DEFAULT '{}', reused_execution_id INTEGER, error TEXT, traceback TEXT, "
            "started REAL NOT NULL, ended REAL);"
            "CREATE TABLE artifacts (id INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL, uri TEXT NOT NULL, "
            "fingerprint TEXT NOT NULL, properties TEXT NOT NULL DEFAULT '{}', state TEXT NOT NULL, "
            "created REAL NOT NULL);"
            "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, execution_id INTEGER NOT NULL, "
            "artifact_id INTEGER NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL);")
        db.execute("INSERT INTO runs (started, state, config, argv) VALUES (0, 'COMPLETE', '{}', '[]')")
        db.execute("INSERT INTO executions (run_id, stage, state, params, cache_key, code_version, inputs, started) "
                   "VALUES (1, 'train', 'COMPLETE', '{}', 'k', 'c', '{}', 0)")
        db.execute("PRAGMA user_version=1")
    with MetadataStore(tmp_path) as store:
        assert store.execution(1).trial is None
        assert store.latest_execution("train", trial=None).id == 1
        assert [r.id for r in store.runs()] == [1]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchone()[0] == md.SCHEMA_VERSION