"""Artifact fingerprints and the root layout; progress as log lines off a terminal."""
import hashlib
import logging

from pipeline import artifacts
from pipeline.config import load_config
from pipeline.progress import Progress, progress, track


def test_fingerprint_covers_paths_and_bytes_not_location(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "x.txt").write_bytes(b"abc")
    assert artifacts.fingerprint_dir(one) == artifacts.fingerprint_dir(two)
    expected = hashlib.sha256(b"sub/x.txt\x003\x00abc\x00").hexdigest()
    assert artifacts.fingerprint_dir(one) == expected
    (two / "sub" / "x.txt").write_bytes(b"abd")
    assert artifacts.fingerprint_dir(two) != expected
    (two / "sub" / "x.txt").write_bytes(b"abc")
    (two / "sub" / "x.txt").rename(two / "sub" / "y.txt")
    assert artifacts.fingerprint_dir(two) != expected


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    for path in ("ingest/.tmp-7/examples", "ingest/7/examples", "ingest/.work/abc", "logs", "train/.tmp-x"):
        (tmp_path / path).mkdir(parents=True)
    removed = artifacts.remove_stale_temporaries(tmp_path)
    assert removed == [tmp_path / "ingest" / ".tmp-7"]
    assert (tmp_path / "ingest/7/examples").is_dir() and (tmp_path / "ingest/.work/abc").is_dir()
    assert (tmp_path / "train/.tmp-x").is_dir()


def test_tensorboard_dir_defaults_under_the_root():
    assert str(artifacts.tensorboard_dir(load_config(None, ["pipeline.root=/r"]))) == "/r/tensorboard"
    config = load_config(None, ["pipeline.tensorboard_root=/tb"])
    assert str(artifacts.tensorboard_dir(config)) == "/tb"


def test_plain_progress_logs_counts_and_rates(caplog):
    log = logging.getLogger("convpipe.test")
    with caplog.at_level(logging.INFO, logger="convpipe.test"):
        with Progress(log, total=4, desc="records", unit="records", interval=0.0, live=False) as bar:
            bar.advance(2)
            bar.advance(2)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "records: started (4 records)"
    assert lines[1].startswith("records: 2/4 records (50%) in ")
    assert lines[-1].startswith("records: done, 4/4 records (100%) in ")


def test_track_counts_items_through_a_context(caplog, monkeypatch):
    monkeypatch.setenv("CONVPIPE_PROGRESS", "plain")

    class Ctx:
        log = logging.getLogger("convpipe.ctx")

    with caplog.at_level(logging.INFO, logger="convpipe.ctx"):
        assert list(track(range(3), Ctx(), desc="shards")) == [0, 1, 2]
    assert caplog.records[-1].getMessage().startswith("shards: done, 3/3 (100%)")


def test_live_progress_runs_on_rich(monkeypatch, caplog):
    monkeypatch.setenv("CONVPIPE_PROGRESS", "rich")
    log = logging.getLogger("convpipe.live")
    with caplog.at_level(logging.INFO, logger="convpipe.live"):
        with progress(log, total=2, desc="steps") as bar:
            assert bar.live
            bar.advance()
            bar.advance()
    assert bar.completed == 2
    assert caplog.records[-1].getMessage().startswith("steps: done, 2/2 (100%)")
