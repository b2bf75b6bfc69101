"""`convpipe cache prune`: bound the local working copy of a remote root ($CONVPIPE_CACHE).

A remote root's working copy (pipeline/filesystem.py) only grows: every execution a stage ran
or fetched stays there, with every run's log and TensorBoard logs. Almost all of it is also on the
bucket, so it can go, and comes back by itself (`RemoteRoot.fetch`) when a later stage needs it.
Pruning deletes local files only, never an object of the remote root, and only these:

    recoverable   `<stage>/<id>/` whose local _COMPLETE.json is the one on the bucket; a run log or a
                  TensorBoard run directory whose every file is on the bucket with the same size
    garbage       `<stage>/<id>/` of an execution the store records FAILED or ABANDONED (no reader
                  takes it); `.tmp-*` and `.fetch-*` left by killed processes; `<stage>/.work/<key>/`
                  (a failed attempt's backups) once an execution with that key is COMPLETE

Kept whatever the options: an execution directory the bucket does not have and the store does not
call failed (the report names it), and the backups a rerun would resume from.

Which of those go: `--keep-runs N` keeps everything the newest N runs of the root ran, reused or
read (their executions, the executions that produced their inputs, their logs); `--max-bytes B`
deletes, oldest run first, until the working copy holds at most B bytes. With both, the newest
N runs are kept even past B. Nothing a running stage uses is touched: pruning holds the root's
run lock (the one `convpipe run` takes), so it waits for a run with --wait, or says who holds it.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pipeline import artifacts as layout
from pipeline import metadata as md
from pipeline.config import ConfigError
from pipeline.filesystem import MARKER, RemoteRoot, RootError, is_url
from pipeline.lock import run_lock

_EXECUTION = re.compile(r"^\d+$")
_RUN_OF_LOG = re.compile(r"^run-(\d+)\.log$")
_RUN_OF_TENSORBOARD = re.compile(r"^run-(\d+)(?:-|$)")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """`500M`, `2GiB`, `10g`, `123456`: a size in bytes (K, M, G and T are powers of 1024)."""
    match = _SIZE.match(str(text))
    if not match:
        raise ConfigError(f"--max-bytes {text}: expected a size such as 500M, 2G or 123456 (bytes)")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** " kmgt".index(unit or " "))


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@dataclass
class Item:
    """One part of the working copy, and whether pruning may delete it."""
    rel: str
    kind: str           # "execution", "log", "tensorboard", "temporary", "backups"
    size: int
    last_run: int       # newest run that ran, reused or read it (0: none of this root's runs)
    removable: bool     # on the bucket, or garbage
    garbage: bool       # nobody ever reads it again: deleted whatever --keep-runs says
    why: str


@dataclass
class Plan:
    url: str
    local: Path
    total: int
    items: list[Item] = field(default_factory=list)
    delete: list[Item] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(i.size for i in self.delete)

    def to_dict(self) -> dict:
        return {"root": self.url, "local": str(self.local), "bytes_before": self.total,
                "bytes_freed": self.freed, "bytes_after": self.total - self.freed,
                "deleted": [{"path": i.rel, "bytes": i.size, "why": i.why} for i in self.delete],
                "kept_unrecoverable": [{"path": i.rel, "bytes": i.size, "why": i.why}
                                       for i in self.items if not i.removable]}


@dataclass
class _History:
    runs: list[int]                 # this root's run ids, oldest first
    last_run: dict[str, int]        # `<stage>/<id>` -> the newest run that ran, reused or read it
    states: dict[int, tuple]        # execution id -> (stage, state)
    complete_keys: set              # (stage, cache_key[:16]) of every COMPLETE execution


def _history(store: md.MetadataStore, remote: RemoteRoot) -> _History:
    history = _History([run.id for run in store.runs()], {}, {}, set())
    for run_id in history.runs:
        for execution in store.executions(run_id):
            history.states[execution.id] = (execution.stage, execution.state)
            history.last_run[f"{execution.stage}/{execution.id}"] = run_id
            if execution.state == md.COMPLETE:
                history.complete_keys.add((execution.stage, execution.cache_key[:16]))
            for artifact in [*store.inputs(execution.id).values(), *store.outputs(execution.id).values()]:
                try:
                    history.last_run[remote.execution_of(artifact)] = run_id
                except ValueError:  # an artifact outside the working copy (another root's layout)
                    continue
    return history


def _tree_on_bucket(remote: RemoteRoot, local_dir: Path, rel: str) -> bool:
    """Every file of a plain tree (TensorBoard logs) is on the bucket with the same size."""
    prefix = remote.remote(rel)
    try:
        listed = remote.fs.find(prefix, detail=True)
    except FileNotFoundError:
        return False
    sizes = {name[len(prefix) + 1:]: info.get("size") for name, info in listed.items()}
    return all(sizes.get(p.relative_to(local_dir).as_posix()) == p.stat().st_size
               for p in local_dir.rglob("*") if p.is_file())


def _file_on_bucket(remote: RemoteRoot, local_file: Path, rel: str) -> bool:
    try:
        return remote.fs.info(remote.remote(rel)).get("size") == local_file.stat().st_size
    except FileNotFoundError:
        return False


def _plain(kind: str, rel: str, path: Path, run: int, on_bucket: bool) -> Item:
    return Item(rel, kind, tree_size(path), run, on_bucket, False,
                "on the bucket" if on_bucket else "not (or not wholly) on the bucket")


def survey(remote: RemoteRoot, store: md.MetadataStore) -> tuple[list[int], list[Item]]:
    """Every part of the working copy pruning looks at, with what makes it removable (or not)."""
    history = _history(store, remote)
    items: list[Item] = []
    for stage_dir in sorted(p for p in remote.local.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if stage_dir.name == layout.LOGS_DIR:
            for log in sorted(p for p in stage_dir.iterdir() if p.is_file()):
                match, rel = _RUN_OF_LOG.match(log.name), f"{layout.LOGS_DIR}/{log.name}"
                items.append(_plain("log", rel, log, int(match.group(1)) if match else 0,
                                    _file_on_bucket(remote, log, rel)))
        elif stage_dir.name == "tensorboard":
            for run_dir in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
                match, rel = _RUN_OF_TENSORBOARD.match(run_dir.name), f"tensorboard/{run_dir.name}"
                items.append(_plain("tensorboard", rel, run_dir, int(match.group(1)) if match else 0,
                                    _tree_on_bucket(remote, run_dir, rel)))
        else:
            for child in sorted(stage_dir.iterdir()):
                items.extend(_stage_child(remote, history, stage_dir.name, child))
    return history.runs, items


def _stage_child(remote: RemoteRoot, history: _History, stage: str, child: Path) -> list[Item]:
    rel = f"{stage}/{child.name}"
    if child.name.startswith((layout.TMP_PREFIX, ".fetch-")):
        return [Item(rel, "temporary", tree_size(child), 0, True, True, "left by a killed process")]
    if child.name == layout.WORK_DIR:
        items = []
        for work in sorted(p for p in child.iterdir() if p.is_dir()):
            done = (stage, work.name) in history.complete_keys  # a rerun with this key is cached
            items.append(Item(f"{rel}/{work.name}", "backups", tree_size(work), 0, done, done,
                              "an execution with its cache key is COMPLETE" if done
                              else "backups a rerun of a failed execution resumes from"))
        return items
    if not (child.is_dir() and _EXECUTION.match(child.name)):
        return []
    size, last_run = tree_size(child), history.last_run.get(rel, 0)
    local_marker, remote_marker = child / MARKER, remote.marker(rel)
    if remote_marker is not None and local_marker.is_file() and local_marker.read_text() == remote_marker:
        return [Item(rel, "execution", size, last_run, True, False, "on the bucket")]
    recorded = history.states.get(int(child.name))
    if recorded is not None and recorded[0] == stage and recorded[1] in (md.FAILED, md.ABANDONED):
        return [Item(rel, "execution", size, last_run, True, True, f"its execution is {recorded[1]}")]
    why = "not on the bucket" if remote_marker is None else "differs from the bucket's copy"
    return [Item(rel, "execution", size, last_run, False, False,
                 f"{why}, and the store records it {recorded[1] if recorded else 'nowhere'}")]


def choose(runs: list[int], items: list[Item], total: int, keep_runs: Optional[int],
           max_bytes: Optional[int]) -> list[Item]:
    """What to delete: garbage, then removable items outside the newest `keep_runs` runs, oldest
    run first, until the working copy is at most `max_bytes` (all of them without it)."""
    cutoff = None
    if keep_runs:
        cutoff = runs[-keep_runs] if len(runs) >= keep_runs else (runs[0] if runs else None)
    candidates = [i for i in items if i.removable and (i.garbage or cutoff is None or i.last_run < cutoff)]
    candidates.sort(key=lambda i: (not i.garbage, i.last_run, -i.size))
    if max_bytes is None:
        return candidates
    chosen, remaining = [], total
    for item in candidates:
        if remaining <= max_bytes:
            break
        chosen.append(item)
        remaining -= item.size
    return chosen


def plan_prune(url: str, metadata: Optional[str], keep_runs: Optional[int], max_bytes: Optional[int]) -> Plan:
    """What pruning the working copy of `url` would delete (nothing is deleted); call under the run lock."""
    remote = RemoteRoot(url)
    plan = Plan(remote.url, remote.local, tree_size(remote.local) if remote.local.is_dir() else 0)
    if not remote.local.is_dir():
        return plan
    with md.MetadataStore(remote.local, create=False, url=metadata, root_label=remote.url) as store:
        runs, plan.items = survey(remote, store)
    plan.delete = choose(runs, plan.items, plan.total, keep_runs, max_bytes)
    return plan


def prune(url: str, metadata: Optional[str], keep_runs: Optional[int] = None, max_bytes: Optional[int] = None,
          dry_run: bool = False, wait: bool = False) -> Plan:
    """Plan and (unless dry_run) delete, holding the root's run lock so that no stage runs meanwhile."""
    if not is_url(url):
        raise ConfigError(f"convpipe cache prune: --root {url} is a local directory, which has no working copy; "
                          "cache prune bounds the local copy of a remote root (s3://bucket/prefix)")
    if keep_runs is None and max_bytes is None:
        raise ConfigError("convpipe cache prune: pass --keep-runs N and/or --max-bytes B")
    if keep_runs is not None and keep_runs < 0:
        raise ConfigError(f"--keep-runs {keep_runs}: expected 0 or more runs to keep")
    if not metadata:
        raise ConfigError(f"--root {url}: a remote root's store is outside it; pass --metadata "
                          "postgresql+psycopg://user:password@host:5432/db (or set pipeline.metadata)")
    remote = RemoteRoot(url)
    try:  # read-only (RemoteRoot.check writes a probe object): pruning never writes to the bucket
        remote.fs.ls(remote.path, detail=False, refresh=True)
    except FileNotFoundError:
        pass  # an empty prefix: then nothing local is on the bucket, and only garbage can go
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise RootError(f"artifact root {remote.url}: cannot list it ({type(exc).__name__}: {first}); "
                        "nothing was pruned") from None
    with run_lock(remote.local, metadata, remote.url, wait=wait):
        plan = plan_prune(url, metadata, keep_runs, max_bytes)
        if not dry_run:
            for item in plan.delete:
                target = (plan.local / item.rel).resolve()
                if plan.local.resolve() not in target.parents:
                    raise RuntimeError(f"refusing to delete {target}: outside the working copy {plan.local}")
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
    return plan
