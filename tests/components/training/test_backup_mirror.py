"""Backups mirrored to a remote root (moto's server): uploaded index last, two generations kept there
too, restored on another machine from the bucket alone, and never from a generation the bucket lacks."""
import logging

import pytest

from components.training.backup_mirror import BackupMirror
from components.training.backups import Backups

URL = "s3://convpipe/team/train/.work/0123456789abcdef/backups"
log = logging.getLogger("test.backup_mirror")


@pytest.fixture
def value():
    import tensorflow as tf
    return tf.Variable(0.0)


def backups(directory, value, mirror, is_chief=True):
    import tensorflow as tf
    return Backups(directory, tf.train.Checkpoint(value=value), keep=2, is_chief=is_chief, mirror=mirror)


def test_another_machine_resumes_from_the_uploaded_backups(s3_server, tmp_path, value):
    s3_server.make_bucket("convpipe")
    mirror = BackupMirror(URL)
    chief = backups(tmp_path / "chief", value, mirror)
    for step in (1.0, 2.0, 3.0):
        value.assign(step)
        chief.save()
    assert mirror.whole() == [2, 3] and chief.numbers() == [2, 3]
    # an upload cut short: generation 4's data is there, its index never came
    data = next((tmp_path / "chief").glob("ckpt-3.data-*")).read_bytes()
    mirror.fs.pipe_file(f"{mirror.path}/ckpt-4.data-00000-of-00001", data)
    assert mirror.whole() == [2, 3]

    value.assign(0.0)
    elsewhere = backups(tmp_path / "worker", value, BackupMirror(URL), is_chief=False)
    assert elsewhere.restore(log) == 3 and float(value.numpy()) == 3.0
    assert sorted(p.name for p in (tmp_path / "worker").iterdir() if p.name.endswith(".index")) == \
        ["ckpt-2.index", "ckpt-3.index"]


def test_a_local_backup_the_bucket_lacks_is_not_resumed_from(s3_server, tmp_path, value):
    s3_server.make_bucket("convpipe")
    mirror = BackupMirror(URL)
    chief = backups(tmp_path / "chief", value, mirror)
    value.assign(1.0)
    chief.save()
    value.assign(2.0)
    backups(tmp_path / "chief", value, None).save()  # written here, never uploaded (the chief died)
    assert chief.numbers() == [1, 2] and mirror.whole() == [1]
    value.assign(0.0)
    assert chief.restore(log) == 1 and float(value.numpy()) == 1.0  # what every worker can read
    assert chief.numbers() == [1]
    mirror.remove_all()
    assert mirror.whole() == []
