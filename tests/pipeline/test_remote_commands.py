"""The commands that take a root, on `--root s3://...` + `--metadata postgresql+psycopg://...` (moto's
server and pgserver): runs, show, schedule, and config keys that cannot be URLs."""
import json

from convpipe import cli
from tests.pipeline import fake_stages as fake

ROOT = "s3://convpipe/team"


def test_runs_and_show_read_a_remote_roots_store_and_name_artifacts_by_url(s3_server, postgres_url, remote_cache,
                                                                           capsys):
    s3_server.make_bucket("convpipe")
    small = ["--set", "ingest.source.num_examples=5"]
    assert cli.main(["run", "--root", ROOT, "--metadata", postgres_url, *small], stages=fake.STAGES) == 0
    capsys.readouterr()

    assert cli.main(["runs", "--root", ROOT, "--metadata", postgres_url]) == 0
    assert "a=ran b=ran c=ran" in capsys.readouterr().out
    assert cli.main(["show", "--root", ROOT, "--metadata", postgres_url, "--json"]) == 0
    details = json.loads(capsys.readouterr().out)
    outputs = [o["uri"] for e in details["executions"] for o in e["outputs"]]
    assert outputs == [f"{ROOT}/a/1/data", f"{ROOT}/b/2/result", f"{ROOT}/c/3/report"]

    for command in ("runs", "show"):
        assert cli.main([command, "--root", ROOT]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"--root {ROOT}: a remote root's runs are in the metadata store named by --metadata")
        assert len(err.splitlines()) == 1


def test_schedule_keeps_the_url_and_the_store(capsys, remote_cache):
    url = "postgresql+psycopg://team@db:5432/convpipe"
    assert cli.main(["schedule", "--cron", "0 3 * * *", "--print", "crontab", "--root", ROOT, "--metadata", url]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert f"--root {ROOT} --metadata {url}" in line.replace("'", "")
    assert f"{remote_cache}/" in line and "/logs/cron.log" in line  # the working copy's logs, not ./s3:


def test_a_url_tensorboard_root_is_refused_in_one_line(capsys, tmp_path):
    (tmp_path / "c.json").write_text("{}")
    assert cli.main(["config", "check", "--no-stage-checks", str(tmp_path / "c.json"), "--set",
                     "pipeline.tensorboard_root=s3://convpipe/tb"]) == 2
    err = capsys.readouterr().err
    assert "pipeline.tensorboard_root: expected a local directory, not a URL" in err and "s3://convpipe/tb" in err


def test_compare_finds_a_trials_tensorboard_run_on_the_bucket_when_train_ran_elsewhere(s3_server, remote_cache,
                                                                                     make_config):
    from components.compare.stage import local_logdir
    from pipeline.filesystem import RemoteRoot

    s3_server.make_bucket("convpipe")
    remote = RemoteRoot(ROOT)
    remote.fs.pipe_file(f"{remote.path}/tensorboard/run-1-train-2/train/events.out.tfevents.1", b"scalars")
    config = make_config(f"pipeline.root={ROOT}")
    recorded = "/home/chief/.cache/convpipe/0123456789abcdef/tensorboard/run-1-train-2"  # the chief's own copy
    logdir = local_logdir(config, recorded)
    assert logdir == remote.local / "tensorboard" / "run-1-train-2"
    assert (logdir / "train" / "events.out.tfevents.1").read_bytes() == b"scalars"
    assert local_logdir(config, "/elsewhere/tensorboard/run-9-train-9") is None  # on no bucket either
    assert not (remote.local / "tensorboard" / "run-9-train-9").exists()
    assert local_logdir(make_config(), recorded) is None  # a local root: only the recorded directory counts
