"""`convpipe cache prune` on a real S3 (moto's server) and Postgres (pgserver), over the fake stages.

Pruning deletes from the local working copy only what the bucket also holds (or nobody reads),
keeps what the newest runs use, never touches the bucket, and waits for (or names) a run holding
the root; a pruned copy still runs, its inputs streaming back from the bucket.
"""
import pytest

from convpipe import cli
from pipeline import metadata as md
from pipeline.cache_prune import parse_bytes, prune, tree_size
from pipeline.config import ConfigError
from pipeline.filesystem import RemoteRoot
from pipeline.lock import LockHeld, run_lock
from pipeline.runner import Runner
from tests.pipeline import fake_stages as fake

ROOT = "s3://convpipe/team"


def run(make_config, url, *overrides):
    result = Runner(make_config(f"pipeline.metadata={url}", *overrides), fake.STAGES, ROOT).run()
    assert result.ok, result.error
    return result


def bucket(server):
    import boto3
    client = boto3.client("s3", endpoint_url=server.endpoint)
    return {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket="convpipe").get("Contents", [])}


def local_listing(local):
    return sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())


@pytest.fixture
def two_runs(s3_server, postgres_url, remote_cache, make_config):
    """Run 1 (a, b, c), then run 2 with c changed (a and b reused): c/3 is used by run 1 only."""
    s3_server.make_bucket("convpipe")
    run(make_config, postgres_url)
    run(make_config, postgres_url, "evaluate.metric=loss")
    local = RemoteRoot(ROOT).local
    assert {"a/1", "b/2", "c/3", "c/6"} <= {p.parent.relative_to(local).as_posix() for p in local.glob("*/*/_COMPLETE.json")}
    return local


def test_keep_runs_deletes_what_only_older_runs_used_and_never_the_bucket(two_runs, s3_server, postgres_url,
                                                                         make_config):
    local = two_runs
    (local / "a" / ".tmp-99").mkdir()                       # a killed run's temporary
    (local / "a" / ".tmp-99" / "half").write_text("x")
    (local / "b" / "77").mkdir()                           # on no bucket, in no store: kept, and named
    (local / "b" / "77" / "only-here.txt").write_text("keep me")
    with md.MetadataStore(local, create=False, url=postgres_url, root_label=ROOT) as store:
        key_of_b = store.execution(2).cache_key[:16]
    (local / "b" / ".work" / key_of_b).mkdir(parents=True)     # backups of a key that has since completed
    (local / "b" / ".work" / key_of_b / "ckpt-1.index").write_text("old")
    (local / "b" / ".work" / "0123456789abcdef").mkdir()       # a failed attempt's backups: a rerun resumes
    (local / "b" / ".work" / "0123456789abcdef" / "ckpt-1.index").write_text("resume")
    before = bucket(s3_server)

    dry = prune(ROOT, postgres_url, keep_runs=1, dry_run=True)
    assert local_listing(local) and (local / "c" / "3").is_dir()  # a dry run deletes nothing
    plan = prune(ROOT, postgres_url, keep_runs=1)
    assert [i.rel for i in plan.delete] == [i.rel for i in dry.delete]

    deleted = {i.rel for i in plan.delete}
    assert deleted == {"a/.tmp-99", f"b/.work/{key_of_b}", "c/3", "logs/run-1.log"}
    assert not (local / "c" / "3").exists() and not (local / "logs" / "run-1.log").exists()
    for kept in ("a/1", "b/2", "c/6", "logs/run-2.log", "b/77/only-here.txt", "b/.work/0123456789abcdef"):
        assert (local / kept).exists(), kept
    # The newest run's log is whole on the bucket (uploaded after its last line), so it is removable;
    # --keep-runs 1 keeps it as the newest run's.
    assert {i.rel for i in plan.items if not i.removable} == {"b/77", "b/.work/0123456789abcdef"}
    assert plan.freed == sum(i.size for i in plan.delete) > 0
    assert bucket(s3_server) == before                      # the remote root is never touched


def test_max_bytes_empties_the_copy_and_the_next_run_streams_inputs_back(two_runs, s3_server, postgres_url,
                                                                        make_config):
    local = two_runs
    before = bucket(s3_server)
    plan = prune(ROOT, postgres_url, max_bytes=0)
    assert local_listing(local) == []  # every file is also on the bucket, the newest run's log included
    assert plan.total - plan.freed == tree_size(local)
    assert bucket(s3_server) == before

    fake.CALLS.clear()  # all cached from an empty copy; then a change to c fetches b's result from the bucket
    again = Runner(make_config(f"pipeline.metadata={postgres_url}", "evaluate.metric=loss"), fake.STAGES, ROOT).run()
    assert [o.state for o in again.outcomes] == [md.CACHED] * 3
    changed = run(make_config, postgres_url, "evaluate.metric=mean")
    assert [o.state for o in changed.outcomes] == [md.CACHED, md.CACHED, md.COMPLETE]
    assert fake.CALLS == ["c"] and (local / "b" / "2" / "result" / "sum.txt").is_file()


def test_max_bytes_goes_oldest_run_first_and_keep_runs_still_protects(two_runs, postgres_url):
    local = two_runs
    size_c3, total = tree_size(local / "c" / "3"), tree_size(local)
    plan = prune(ROOT, postgres_url, max_bytes=total - 1, dry_run=True)
    assert plan.delete[0].rel in ("c/3", "logs/run-1.log")  # only run 1 used them
    assert {i.rel for i in prune(ROOT, postgres_url, max_bytes=total - size_c3, dry_run=True).delete} <= \
        {"c/3", "logs/run-1.log"}
    protected = prune(ROOT, postgres_url, keep_runs=2, max_bytes=0)
    assert protected.delete == [] and (local / "c" / "3").is_dir()


def test_a_run_holding_the_root_blocks_pruning(two_runs, postgres_url):
    with run_lock(two_runs, postgres_url, ROOT):
        with pytest.raises(LockHeld, match="another convpipe run holds the lock"):
            prune(ROOT, postgres_url, keep_runs=0)
    assert (two_runs / "c" / "3").is_dir()


def test_the_command_line(two_runs, postgres_url, capsys, tmp_path):
    assert cli.main(["cache", "prune", "--root", ROOT, "--metadata", postgres_url, "--keep-runs", "1",
                     "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would delete c/3 (" in out and "working copy of s3://convpipe/team" in out
    assert cli.main(["cache", "prune", "--root", str(tmp_path), "--keep-runs", "1"]) == 2
    assert "is a local directory" in capsys.readouterr().err
    assert cli.main(["cache", "prune", "--root", ROOT, "--metadata", postgres_url]) == 2
    assert "--keep-runs N and/or --max-bytes B" in capsys.readouterr().err


def test_parse_bytes():
    assert [parse_bytes(t) for t in ("123", "1K", "2M", "1.5G", "2GiB", "1t")] == \
        [123, 1024, 2 * 1024 ** 2, int(1.5 * 1024 ** 3), 2 * 1024 ** 3, 1024 ** 4]
    with pytest.raises(ConfigError, match="--max-bytes ten"):
        parse_bytes("ten")


def test_an_unreachable_bucket_is_one_line_and_nothing_is_pruned(two_runs, s3_server, postgres_url):
    from pipeline.filesystem import RootError
    import s3fs

    s3_server.kill()
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(RootError) as caught:
        prune(ROOT, postgres_url, keep_runs=0)
    assert str(caught.value).startswith(f"artifact root {ROOT}: cannot list it") and "\n" not in str(caught.value)
    assert (two_runs / "c" / "3").is_dir() and (two_runs / "a" / "1").is_dir()
