"""Two exporters against one s3:// serving root get two different versions, both whole (moto's server).

The claim is one conditional put (`If-None-Match: *`) of `<model>/.claims/<n>`; readers still
count only versions that hold saved_model.pb.
"""
import subprocess
import textwrap
import threading
import time

import pytest

from pipeline import filesystem, version_claims
from pipeline.filesystem import RootError, push_version, remote_versions
from tests.pipeline.conftest import PYTHON

MODEL = "s3://serving/team/convpipe"


def fake_saved_model(folder, tag: str):
    """A version directory as the export stage leaves it: variables first, saved_model.pb beside them."""
    (folder / "variables").mkdir(parents=True)
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(tag.encode() * 1000)
    (folder / "variables" / "variables.index").write_bytes(f"index {tag}".encode())
    (folder / "assets.extra").mkdir()
    (folder / "assets.extra" / "convpipe.json").write_text(f'{{"exporter": "{tag}"}}')
    (folder / "saved_model.pb").write_bytes(f"graph {tag}".encode())
    return folder


def files_of(version: int) -> dict:
    fs, path = filesystem._fs(MODEL)
    prefix = f"{path}/{version}/"
    return {name[len(prefix):]: fs.cat_file(name) for name in fs.find(prefix)}


def expected(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


PUSH = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pipeline.filesystem import push_version, _fs
    _fs(sys.argv[2])  # connect before the start line, so both processes race on the claim alone
    go = Path(sys.argv[3])
    while not go.exists():
        time.sleep(0.001)
    print(push_version(Path(sys.argv[1]), sys.argv[2])[0])
""")


def test_two_exporters_at_once_get_two_versions_both_whole(s3_server, tmp_path, subprocess_env):
    s3_server.make_bucket("serving")
    env = {**subprocess_env, **s3_server.env()}
    go = tmp_path / "go"
    folders = [fake_saved_model(tmp_path / name, name) for name in ("first", "second")]
    children = [subprocess.Popen([PYTHON, "-c", PUSH, str(folder), MODEL, str(go)], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for folder in folders]
    time.sleep(3)  # both are connected and polling for the start line
    go.touch()
    results = [child.communicate(timeout=120) for child in children]
    assert all(child.returncode == 0 for child in children), results
    versions = [int(out.strip()) for out, _ in results]
    assert sorted(versions) == [1, 2]
    assert remote_versions(MODEL) == [1, 2]
    for folder, version in zip(folders, versions):
        assert files_of(version) == expected(folder)  # whole, and nobody else's files


def test_a_lost_claim_takes_the_next_number(s3_server, tmp_path, monkeypatch):
    """Both exporters list the same state before either claims (forced with a barrier): one gets 1, one 2."""
    s3_server.make_bucket("serving")
    barrier = threading.Barrier(2, timeout=30)
    listed = version_claims.taken_numbers

    def list_then_wait(fs, path):
        numbers = listed(fs, path)
        barrier.wait()
        return numbers

    monkeypatch.setattr(version_claims, "taken_numbers", list_then_wait)
    folders = [fake_saved_model(tmp_path / name, name) for name in ("a", "b")]
    results, errors = {}, []

    def push(folder):
        try:
            results[folder.name] = push_version(folder, MODEL)[0]
        except Exception as exc:  # pragma: no cover - shown by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(folder,)) for folder in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sorted(results.values()) == [1, 2]
    for folder in folders:
        assert files_of(results[folder.name]) == expected(folder)


def test_a_dead_claim_and_a_partial_version_are_skipped_and_never_counted(s3_server, tmp_path):
    s3_server.make_bucket("serving")
    fs, path = filesystem._fs(MODEL)
    fs.pipe_file(f"{path}/.claims/1", b"{}")                     # an exporter that died after claiming 1
    fs.pipe_file(f"{path}/2/variables/variables.index", b"half")  # an older exporter's unfinished upload
    assert remote_versions(MODEL) == []
    version, url = push_version(fake_saved_model(tmp_path / "v", "v"), MODEL)
    assert (version, url) == (3, f"{MODEL}/3")
    assert remote_versions(MODEL) == [3]
    assert sorted(fs.ls(f"{path}/.claims", detail=False)) == [f"{path}/.claims/1", f"{path}/.claims/3"]


class _IgnoresConditions:
    """An object store that accepts `If-None-Match: *` and writes anyway (what the claim must detect)."""

    def __init__(self, fs):
        self.fs = fs

    def ls(self, *args, **kwargs):
        return self.fs.ls(*args, **kwargs)

    def pipe_file(self, path, data, mode="overwrite"):
        return self.fs.pipe_file(path, data)


def test_a_store_that_ignores_the_condition_is_refused(s3_server):
    s3_server.make_bucket("serving")
    fs, path = filesystem._fs(MODEL)
    with pytest.raises(version_claims.ClaimError, match="If-None-Match"):
        version_claims.claim_next_version(_IgnoresConditions(fs), path)


def test_an_unreachable_serving_root_is_one_line_naming_it(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{s3_server.port}")
    s3_server.kill()
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(RootError) as caught:
        push_version(fake_saved_model(tmp_path / "v", "v"), MODEL)
    assert str(caught.value).startswith(f"serving root {MODEL}: ") and "\n" not in str(caught.value)
