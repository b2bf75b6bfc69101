"""The layout of a pipeline root on disk, and the fingerprint of an artifact directory.

    <root>/metadata.sqlite                     runs, executions, artifacts, events
    <root>/logs/run-<run_id>.log               one log file per run
    <root>/<stage>/<execution_id>/<output>/    published outputs (renamed into place on success)
    <root>/<stage>/.tmp-<execution_id>/        outputs being written; never read by anyone else
    <root>/<stage>/.work/<cache_key[:16]>/     backups that survive a failed attempt with the same key
    <root>/tensorboard/                        TensorBoard logs (unless pipeline.tensorboard_root)

Only `<root>/<stage>/<execution_id>/` directories whose execution is COMPLETE in the metadata store
count as artifacts: a directory left by a killed run is never taken for a finished one.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

METADATA_FILE = "metadata.sqlite"
LOGS_DIR = "logs"
TMP_PREFIX = ".tmp-"
WORK_DIR = ".work"
_TMP_NAME = re.compile(r"^\.tmp-\d+$")
_CHUNK = 1 << 20


def metadata_path(root: Path) -> Path:
    return Path(root) / METADATA_FILE


def log_path(root: Path, run_id: int) -> Path:
    return Path(root) / LOGS_DIR / f"run-{run_id}.log"


def execution_dir(root: Path, stage: str, execution_id: int) -> Path:
    return Path(root) / stage / str(execution_id)


def temporary_dir(root: Path, stage: str, execution_id: int) -> Path:
    return Path(root) / stage / f"{TMP_PREFIX}{execution_id}"


def work_dir(root: Path, stage: str, cache_key: str) -> Path:
    return Path(root) / stage / WORK_DIR / cache_key[:16]


def tensorboard_dir(config) -> Path:
    """Where every run's TensorBoard logs land: `pipeline.tensorboard_root`, else `<root>/tensorboard`."""
    if config.pipeline.tensorboard_root:
        return Path(config.pipeline.tensorboard_root)
    from pipeline.filesystem import RemoteRoot, is_url

    if is_url(config.pipeline.root):  # every run's logs, copied from the bucket into the local working copy
        return RemoteRoot(config.pipeline.root).get_tree("tensorboard")
    return Path(config.pipeline.root) / "tensorboard"


def fingerprint_dir(path: Path) -> str:
    """sha256 over every file's relative path and content, in sorted order.

    Two directories with the same files (names and bytes) have the same fingerprint wherever they
    live, so a re-run that writes identical outputs leaves downstream cache keys unchanged.
    """
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(b"\0")
        digest.update(str(file.stat().st_size).encode())
        digest.update(b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Remove `<root>/<stage>/.tmp-<id>/` left by killed runs; call only while holding the root lock."""
    removed = []
    root = Path(root)
    if not root.is_dir():
        return removed
    for stage_dir in root.iterdir():
        if not stage_dir.is_dir() or stage_dir.name.startswith("."):
            continue
        for child in stage_dir.iterdir():
            if child.is_dir() and _TMP_NAME.match(child.name):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    return removed


def publish(tmp: Path, final: Path) -> None:
    """Move a finished temporary directory into place with one rename (atomic on one filesystem)."""
    if final.exists():
        # Left by an execution with this id that was killed after its rename and before its commit.
        shutil.rmtree(final)
    os.rename(tmp, final)
