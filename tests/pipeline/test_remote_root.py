"""A root on S3 (moto's server) with lineage in Postgres (pgserver), on the runner's fake stages.

What a team set-up needs from the runner: outputs visible on the bucket only when whole (one
marker object written last), a rerun from a fresh machine (an empty local copy) fully cached,
inputs streamed into the local copy when a stage needs them, failed uploads leaving nothing a
reader takes, and problems with the bucket or the database told in one line before any work.
"""
import shutil

import pytest

from pipeline import metadata as md
from pipeline.filesystem import MARKER, RemoteRoot, RootError
from pipeline.runner import Runner
from tests.pipeline import fake_stages as fake

ROOT = "s3://convpipe/team"


def runner(make_config, url, *overrides, root=ROOT):
    return Runner(make_config(f"pipeline.metadata={url}", *overrides), fake.STAGES, root)


def listing(server, prefix=""):
    import boto3
    client = boto3.client("s3", endpoint_url=server.endpoint)
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket="convpipe", Prefix=prefix).get("Contents", []))


def test_run_publishes_to_s3_and_a_fresh_machine_reruns_cached(s3_server, postgres_url, remote_cache, make_config):
    s3_server.make_bucket("convpipe")
    first = runner(make_config, postgres_url).run()
    assert first.ok, first.error
    keys = listing(s3_server, "team/")
    for stage, execution in (("a", 1), ("b", 2), ("c", 3)):
        assert f"team/{stage}/{execution}/{MARKER}" in keys
    assert "team/a/1/data/numbers.txt" in keys and "team/logs/run-1.log" in keys
    assert fake.CALLS == ["a", "b", "c"]
    import boto3
    log = boto3.client("s3", endpoint_url=s3_server.endpoint).get_object(Bucket="convpipe", Key="team/logs/run-1.log")
    assert log["Body"].read().decode().rstrip().endswith("run 1 COMPLETE")  # the bucket's log is whole

    shutil.rmtree(remote_cache)  # another machine: nothing local, the same bucket and database
    fake.CALLS.clear()
    again = runner(make_config, postgres_url).run()
    assert again.ok and [o.state for o in again.outcomes] == [md.CACHED] * 3
    assert fake.CALLS == []

    fake.CALLS.clear()  # a change to c only: its input (b's result) streams in from the bucket
    changed = runner(make_config, postgres_url, "evaluate.metric=loss").run()
    assert [o.state for o in changed.outcomes] == [md.CACHED, md.CACHED, md.COMPLETE]
    assert fake.CALLS == ["c"]


def test_an_output_without_its_marker_is_not_an_artifact(s3_server, postgres_url, remote_cache, make_config):
    s3_server.make_bucket("convpipe")
    assert runner(make_config, postgres_url).run().ok
    remote = RemoteRoot(ROOT)
    remote.fs.rm_file(f"convpipe/team/b/2/{MARKER}")  # as if the upload had stopped before its last object
    fake.CALLS.clear()
    result = runner(make_config, postgres_url).run()
    assert [o.state for o in result.outcomes] == [md.CACHED, md.COMPLETE, md.CACHED]
    assert fake.CALLS == ["b"]


def test_a_failed_stage_leaves_nothing_on_the_bucket(s3_server, postgres_url, remote_cache, make_config):
    s3_server.make_bucket("convpipe")
    fake.FAIL.add("b")
    result = runner(make_config, postgres_url).run()
    assert not result.ok
    assert not [k for k in listing(s3_server, "team/b/")]


@pytest.mark.parametrize("problem", ["bucket", "endpoint", "credentials"])
def test_root_problems_are_one_line_naming_the_url_before_any_work(problem, s3_server, postgres_url, remote_cache,
                                                                   make_config, monkeypatch):
    s3_server.make_bucket("convpipe")
    root = ROOT
    if problem == "bucket":
        root = "s3://no-such-bucket/team"
    elif problem == "endpoint":
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    else:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(key)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(RootError) as raised:
        runner(make_config, postgres_url, root=root).run()
    message = str(raised.value)
    assert "\n" not in message and root in message
    expected = {"bucket": "does not exist", "endpoint": "127.0.0.1:9", "credentials": "credentials"}[problem]
    assert expected in message
    assert fake.CALLS == []


def test_a_remote_root_needs_a_store_outside_it(s3_server, remote_cache, make_config):
    from pipeline.config import ConfigError
    with pytest.raises(ConfigError, match="s3://convpipe/team: a remote root needs a metadata store"):
        Runner(make_config(), fake.STAGES, ROOT).run()


def test_tensorboard_logs_reach_the_bucket_and_come_back_on_another_machine(s3_server, postgres_url, remote_cache,
                                                                            make_config, tmp_path, monkeypatch):
    from pipeline.artifacts import tensorboard_dir

    s3_server.make_bucket("convpipe")
    config = make_config(f"pipeline.metadata={postgres_url}")
    first = Runner(config, fake.STAGES, ROOT)
    (first.root / "tensorboard" / "run-1").mkdir(parents=True)
    (first.root / "tensorboard" / "run-1" / "events.out").write_bytes(b"scalars")  # as the train stage writes
    assert first.run().ok
    monkeypatch.setenv("CONVPIPE_CACHE", str(tmp_path / "other-machine"))
    config.pipeline.root = ROOT
    logs = tensorboard_dir(config)
    assert (logs / "run-1" / "events.out").read_bytes() == b"scalars" and str(tmp_path / "other-machine") in str(logs)


def test_s3_settings_for_beam_in_the_config_are_refused_before_any_work(make_config, remote_cache, tmp_path):
    """Beam's S3 filesystem takes its endpoint and keys from the AWS environment, as s3fs does; a
    `--s3_*` flag in beam.args would put them in pipeline_config.json and in the recorded run."""
    from pipeline.config import ConfigError
    config = make_config(f"pipeline.metadata=sqlite:///{tmp_path / 'lineage.sqlite'}",
                         'beam.args=["--s3_endpoint_url=http://10.0.0.1:9000", "--s3_secret_access_key=hunter2"]')
    with pytest.raises(ConfigError) as raised:
        Runner(config, fake.STAGES, ROOT).run()
    message = str(raised.value)
    assert message.startswith("beam.args: --s3_endpoint_url, --s3_secret_access_key: ") and "AWS_ENDPOINT_URL" in message
    assert "hunter2" not in message and "10.0.0.1" not in message
    assert fake.CALLS == []
