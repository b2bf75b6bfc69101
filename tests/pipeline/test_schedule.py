"""`convpipe schedule`: the printed crontab line and systemd units, one firing, and the service's stop."""
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from convpipe import cli
from pipeline import schedule
from pipeline.cron import CronExpression
from pipeline.lock import RootLock
from pipeline.metadata import MetadataStore
from tests.pipeline.conftest import PYTHON
from tests.pipeline.test_lock_and_kill import CHILD

CONVPIPE = Path(sys.executable).parent / "convpipe"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory with its own pipeline_config.json (root: ./runs), as the cwd."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipeline_config.json").write_text('{"pipeline": {"root": "runs"}}')
    return tmp_path


def printed(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def fake_run_command(root: Path, *extra: str) -> list[str]:
    """`convpipe run` on the fake stages (tests/pipeline/fake_stages.py) in a child process."""
    return [PYTHON, "-c", CHILD, "run", "--root", str(root), "--set", "ingest.source.num_examples=4", *extra]


# ------------------------------------------------------------------------------ printing
@pytest.mark.skipif(not CONVPIPE.is_file(), reason="no convpipe script beside this Python")
def test_crontab_line(capsys, project):
    out = printed(capsys, "schedule", "--cron", "0  3 * * *", "--print", "crontab")
    comment, line = out.splitlines()
    assert comment.startswith("#") and "exit 75" in comment
    config, root = project / "pipeline_config.json", project / "runs"
    assert line == (f"0 3 * * * cd {project} && mkdir -p {root}/logs && {CONVPIPE} run --config {config} "
                    f"--root {root} >> {root}/logs/cron.log 2>&1")


@pytest.mark.skipif(not CONVPIPE.is_file(), reason="no convpipe script beside this Python")
def test_crontab_line_quotes_and_escapes_percent(capsys, project):
    out = printed(capsys, "schedule", "--cron", "@daily", "--print", "crontab", "--root", "my runs",
                  "--set", "pipeline.name=nightly 50%", "--to", "validate")
    line = out.splitlines()[1]
    assert line.startswith("@daily cd ")
    command = line[len("@daily "):].replace("\\%", "%")          # what cron hands to sh
    segments = [shlex.split(part) for part in command.split(" && ")]
    assert segments[0] == ["cd", str(project)]
    assert segments[1] == ["mkdir", "-p", str(project / "my runs" / "logs")]
    assert segments[2] == [str(CONVPIPE), "run", "--config", str(project / "pipeline_config.json"),
                           "--set", "pipeline.name=nightly 50%", "--root", str(project / "my runs"),
                           "--to", "validate", ">>", str(project / "my runs" / "logs" / "cron.log"), "2>&1"]
    assert "%" not in line.replace("\\%", "")                   # every % escaped


def _unit(text: str, kind: str) -> dict[str, list[str]]:
    """Key -> values of one unit (service or timer) from the printed pair, comments dropped."""
    start = text.index(f"convpipe.{kind}")
    body = text[start:].split("# ---- ", 1)[0]
    values: dict[str, list[str]] = {}
    for line in body.splitlines()[1:]:
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.skipif(not CONVPIPE.is_file(), reason="no convpipe script beside this Python")
def test_systemd_service_and_timer(capsys, project):
    text = printed(capsys, "schedule", "--cron", "*/15 9-17 * * 1-5", "--print", "systemd")
    service, timer = _unit(text, "service"), _unit(text, "timer")
    root = project / "runs"
    assert service["Type"] == ["oneshot"]
    assert service["WorkingDirectory"] == [str(project)]
    assert service["ExecStart"] == [f"{CONVPIPE} run --config {project / 'pipeline_config.json'} --root {root}"]
    assert service["SuccessExitStatus"] == ["75"]
    assert timer["OnCalendar"] == ["Mon..Fri *-*-* 09..17:00/15:00"]
    assert timer["Persistent"] == ["true"] and timer["WantedBy"] == ["timers.target"]

    text = printed(capsys, "schedule", "--cron", "0 3 1 * mon", "--print", "systemd", "--set", "pipeline.name=a%b")
    assert _unit(text, "timer")["OnCalendar"] == ["*-*-01 03:00:00", "Mon *-*-* 03:00:00"]
    assert "--set pipeline.name=a%%b" in _unit(text, "service")["ExecStart"][0]     # %% is a literal % to systemd


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_units_pass_systemd_analyze_verify(capsys, project):
    text = printed(capsys, "schedule", "--cron", "0 3 1 * mon", "--print", "systemd")
    service_text, timer_text = text.split("# ---- ")[1:]
    (project / "convpipe.service").write_text(service_text.split("\n", 1)[1])
    (project / "convpipe.timer").write_text(timer_text.split("\n", 1)[1])
    result = subprocess.run(["systemd-analyze", "verify", "./convpipe.service", "./convpipe.timer"],
                            capture_output=True, text=True, cwd=project)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_bad_cron_or_missing_cron_exits_2(capsys, project):
    assert cli.main(["schedule", "--cron", "0 3 * * 8", "--print", "systemd"]) == 2
    assert 'day-of-week field "8"' in capsys.readouterr().err
    assert cli.main(["schedule", "--print", "crontab"]) == 2
    assert "--cron is required" in capsys.readouterr().err
    assert cli.main(["schedule", "--cron", "@daily", "--grace", "-5"]) == 2
    assert "--grace: expected a number of seconds >= 1, got -5" in capsys.readouterr().err


# ------------------------------------------------------------------------------- firings
def test_fire_runs_the_pipeline_and_a_held_lock_is_a_skip(tmp_path, subprocess_env, monkeypatch, caplog):
    for key, value in subprocess_env.items():
        monkeypatch.setenv(key, value)
    root = tmp_path / "root"
    service = schedule.ScheduledRuns(fake_run_command(root), logs=root / "logs")
    with caplog.at_level(logging.INFO, logger="convpipe.schedule"):
        assert service.fire() == 0
        with RootLock(root):                  # another run holds the root
            assert service.fire() == 75
        monkeypatch.setenv("FAKE_FAIL", "c")
        assert service.fire() == 0            # unchanged: everything cached, c never runs
        service.command += ["--set", "train.epochs=3"]
        assert service.fire() == 1            # b and c rerun; c fails
    assert service.firings == [0, 75, 0, 1]
    messages = [(r.levelname, r.getMessage().split(" after ")[0]) for r in caplog.records if not
                r.getMessage().startswith("firing")]
    assert messages == [("INFO", "run finished (exit 0)"),
                        ("INFO", "run skipped: another run holds the root's lock (exit 75)"),
                        ("INFO", "run finished (exit 0)"),
                        ("ERROR", "run failed (exit 1)")]
    assert caplog.records[-1].getMessage().endswith(f"see {root / 'logs'}")
    with MetadataStore(root) as store:
        runs = store.runs()
        assert [r.state for r in runs] == ["COMPLETE", "COMPLETE", "FAILED"]    # the skipped firing left no run
        assert [e.state for e in store.executions(runs[1].id)] == ["CACHED"] * 3


@pytest.mark.slow
def test_once_runs_convpipe_run_on_a_tiny_real_config(tmp_path, subprocess_env, monkeypatch, capsys):
    """`convpipe schedule --once` through `python -m convpipe.cli run`: synthetic data, ingest and validate."""
    for key, value in subprocess_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["schedule", "--once", "--root", "root", "--set", "ingest.source.num_examples=24",
                     "--to", "validate"])
    assert code == 0, capsys.readouterr().err
    with MetadataStore(tmp_path / "root") as store:
        [run] = store.runs()
        assert run.state == "COMPLETE"
        assert [(e.stage, e.state) for e in store.executions(run.id)] == [("ingest", "COMPLETE"), ("validate", "COMPLETE")]
        assert run.argv[:2] == ["convpipe", "run"] and "--to" in run.argv
    log = (tmp_path / "root" / "logs" / "schedule.log").read_text()
    assert "convpipe.cli run --set ingest.source.num_examples=24" in log and "run finished (exit 0)" in log


# --------------------------------------------------------------------------------- service
def _signal_when(condition, signum, timeout=60.0):
    """From a helper thread: once condition() holds, send signum to this process (the service)."""
    def wait_and_signal():
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signum)
    thread = threading.Thread(target=wait_and_signal, daemon=True)
    thread.start()
    return thread


def test_service_configures_one_instance_coalesced_with_grace_and_stops_on_sigint(tmp_path):
    trigger = CronExpression.parse("0 0 1 1 *").trigger()
    service = schedule.ScheduledRuns([PYTHON, "-c", "pass"], trigger, grace=90)
    seen = {}

    def job_configured():
        scheduler = service._scheduler
        job = scheduler.get_job(schedule.JOB_ID) if scheduler is not None and scheduler.running else None
        if job is not None:
            seen.update(max_instances=job.max_instances, coalesce=job.coalesce, grace=job.misfire_grace_time,
                        next=job.next_run_time.strftime("%m-%d %H:%M"))
        return job is not None

    before = signal.getsignal(signal.SIGINT)
    thread = _signal_when(job_configured, signal.SIGINT)
    assert service.serve() == 0
    thread.join()
    assert seen == {"max_instances": 1, "coalesce": True, "grace": 90, "next": "01-01 00:00"}
    assert service.firings == []
    assert signal.getsignal(signal.SIGINT) is before        # handlers restored


def test_sigterm_stops_the_service_and_the_running_firing_records_failed(tmp_path, subprocess_env, monkeypatch):
    block = tmp_path / "block"
    block.mkdir()
    for key, value in dict(subprocess_env, FAKE_BLOCK=str(block)).items():
        monkeypatch.setenv(key, value)
    root = tmp_path / "root"
    trigger = CronExpression.parse("0 0 1 1 *").trigger()
    service = schedule.ScheduledRuns(fake_run_command(root), trigger, logs=root / "logs")

    thread = _signal_when((block / "started").exists, signal.SIGTERM)
    assert service.serve(run_now=True) == 0                 # a clean stop
    thread.join()
    assert service.firings == [143]                         # the child was interrupted by SIGTERM
    assert not (block / "release").exists()
    with MetadataStore(root) as store:
        [run] = store.runs()
        assert run.state == "FAILED"
        b = store.executions(run.id)[1]
        assert (b.stage, b.state, b.error) == ("b", "FAILED", "interrupted (Interrupted: signal SIGTERM)")
    assert not list(root.glob("*/.tmp-*"))


def test_convpipe_schedule_process_stops_cleanly_on_sigterm(tmp_path, subprocess_env):
    """The command as a service would run it: idle until its next firing, then SIGTERM."""
    root = tmp_path / "root"
    service = subprocess.Popen([PYTHON, "-m", "convpipe.cli", "schedule", "--cron", "0 0 1 1 *", "--root", str(root)],
                               env=subprocess_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = root / "logs" / "schedule.log"
    deadline = time.monotonic() + 60
    while not (log.exists() and "next run at" in log.read_text()):
        assert service.poll() is None and time.monotonic() < deadline, service.communicate()
        time.sleep(0.05)
    service.send_signal(signal.SIGTERM)
    out, err = service.communicate(timeout=60)
    assert service.returncode == 0, err
    lines = [line.split(": ", 1)[1] for line in log.read_text().splitlines()]
    assert lines[0].startswith(f"scheduled: {PYTHON} -m convpipe.cli run --root {root}; next run at ")
    assert "-01-01 00:00:00" in lines[0].split("next run at ")[1]
    assert lines[1:] == ["SIGTERM: stopping", "stopped"]


# ---------------------------------------------------------------------- the README agrees
def _readme_blocks(kind: str) -> list[str]:
    """The fenced blocks of the README's "Scheduled runs" whose fence names `kind` ("" for none)."""
    from tests.pipeline.test_beam_at_scale import readme_section

    blocks, current, language = [], None, ""
    for line in readme_section("Scheduled runs").splitlines(keepends=True):
        if line.startswith("```") and current is None:
            current, language = [], line[3:].strip()
        elif line.startswith("```"):
            if language == kind:
                blocks.append("".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


@pytest.mark.skipif(not CONVPIPE.is_file(), reason="no convpipe script beside this Python")
def test_readme_shows_what_print_prints(capsys, tmp_path, monkeypatch):
    project = tmp_path / "convpipe"
    project.mkdir()
    monkeypatch.chdir(project)
    (project / "pipeline_config.json").write_text("{}")          # root: the default, ./artifacts

    def as_in_readme(text):
        return text.replace(str(CONVPIPE), "/srv/convpipe/.venv/bin/convpipe").replace(str(project), "/srv/convpipe")

    crontab = as_in_readme(printed(capsys, "schedule", "--cron", "0 3 * * *", "--print", "crontab"))
    systemd = as_in_readme(printed(capsys, "schedule", "--cron", "0 3 * * *", "--print", "systemd"))
    assert crontab in _readme_blocks("")
    assert systemd == _readme_blocks("ini")[0]


def test_readme_airflow_dag_runs_one_stage_per_task():
    from convpipe.stages import STAGE_ORDER

    [dag] = [block for block in _readme_blocks("python") if "BashOperator" in block]
    source = dag.split("\nwith DAG")[0].replace("from airflow", "# from airflow")   # Airflow is not installed here
    namespace: dict = {}
    exec(compile(source, "README.md", "exec"), namespace)
    assert namespace["STAGES"] == list(STAGE_ORDER)
    for stage in STAGE_ORDER:
        command = shlex.split(namespace["RUN"].format(stage=stage).split(" && ", 1)[1])
        assert command[0] == ".venv/bin/convpipe"
        args = cli.build_parser().parse_args(command[1:])
        assert (args.command, args.from_stage, args.to_stage, args.root) == ("run", stage, stage, "/srv/convpipe/artifacts")


def test_readme_exit_codes_are_the_clis():
    from tests.pipeline.test_beam_at_scale import readme_section

    table = re.findall(r"^\| (\d+) \|", readme_section("Scheduled runs"), re.M)
    assert [int(code) for code in table] == [cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_LOCKED,
                                             cli.EXIT_SIGINT, cli.EXIT_SIGTERM]
