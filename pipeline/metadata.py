"""The metadata store: who produced which artifact, from which inputs, with which parameters.

Modelled on ML Metadata, behind SQLAlchemy 2 (pipeline/database.py): by default one SQLite file at
`<root>/metadata.sqlite`; with `--metadata postgresql+psycopg://...` (or `pipeline.metadata`) a
Postgres database that several machines and roots share. The tables (pipeline/schema.py):

    runs        one `convpipe run` invocation: config, argv, state, and the root it wrote to
    executions  one stage in one run: params, cache key, code version, input fingerprints, state,
                error, and why it ran or was reused
    artifacts   a published directory: type, uri (relative to the root), fingerprint, properties
    events      INPUT/OUTPUT edges between executions and artifacts, by input/output name

A stage that runs once per trial (pipeline/sweep.py) records one execution per trial, each with
its trial name in `executions.trial` (NULL for an ordinary execution).

Execution states: RUNNING, COMPLETE (ran and published its outputs), CACHED (reused a COMPLETE
execution's outputs), SKIPPED (stage disabled: its input passed through), FAILED, ABANDONED (the
process died while it was RUNNING). Only COMPLETE executions are ever reused.

Every write is one transaction. A store outside the root (a server) holds many roots: the cache,
the history and recovery then see only the runs of this store's root (`runs.root`); the SQLite
file inside a root belongs to that root alone, so it is never filtered and a moved root still
finds its cache.
"""
from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from pipeline import database
from pipeline import schema as t
from pipeline.stage import Artifact

SCHEMA_VERSION = "0003"
"""The Alembic revision this convpipe writes (pipeline/migrations/versions/)."""

RUNNING, COMPLETE, CACHED, SKIPPED, FAILED, ABANDONED = (
    "RUNNING", "COMPLETE", "CACHED", "SKIPPED", "FAILED", "ABANDONED")
INPUT, OUTPUT = "INPUT", "OUTPUT"


@dataclass(frozen=True)
class RunRecord:
    id: int
    started: float
    ended: Optional[float]
    state: str
    config: dict
    argv: list
    options: dict
    pid: Optional[int]
    host: Optional[str]
    error: Optional[str]


@dataclass(frozen=True)
class ExecutionRecord:
    id: int
    run_id: int
    stage: str
    state: str
    params: dict
    cache_key: str
    code_version: str
    inputs: dict
    """Input name -> fingerprint of the input artifact."""
    external_fingerprint: Optional[str]
    reason: dict
    reused_execution_id: Optional[int]
    error: Optional[str]
    traceback: Optional[str]
    started: float
    ended: Optional[float]
    trial: Optional[str] = None
    """The trial this execution ran (a stage that runs once per trial), else None."""


@dataclass(frozen=True)
class NewArtifact:
    """An output about to be recorded: its directory (absolute or relative to the root) and fingerprint."""
    type: str
    uri: Path
    fingerprint: str
    properties: dict = field(default_factory=dict)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


class MetadataStore:
    """One engine on the store; create one per process (connections are not shared across fork).

    `url`: the database (default `sqlite:///<root>/metadata.sqlite`). `root_label`: how runs of
    this root are named in a shared store (the root's path or URL; default the resolved root).
    `exists(artifact)`: whether an artifact's files are still there (the cache reuses only those);
    default: its directory exists.
    """

    def __init__(self, root: Path | str, create: bool = True, url: Optional[str] = None,
                 root_label: Optional[str] = None, exists: Optional[Callable[[Artifact], bool]] = None):
        self.root = Path(root).resolve()
        self.url = url or database.default_url(self.root)
        self.path = database.shown(self.url)
        """The store as it may be printed (the password hidden)."""
        inside_root = url is None or url == database.default_url(self.root)
        self.root_label = root_label or str(self.root)
        self._scope = None if inside_root else self.root_label
        self._exists = exists or (lambda artifact: Path(artifact.uri).is_dir())
        if inside_root:
            file = Path(self.url.removeprefix("sqlite:///"))
            if not create and not file.exists():
                raise FileNotFoundError(f"{file}: no metadata store (has anything run under this root?)")
            self.root.mkdir(parents=True, exist_ok=True)
        self._engine = database.connect(self.url)
        database.reach(self._engine)
        database.migrate(self._engine)  # additive revisions: readers upgrade an older store too

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> "MetadataStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """All writes inside commit together or not at all (SQLite: `BEGIN IMMEDIATE` serialises writers)."""
        with self._engine.connect() as connection:
            connection.info["write"] = True
            with connection.begin():
                yield connection

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as connection:
            connection.info["write"] = False
            yield connection

    def _rows(self, statement) -> list:
        with self._read() as db:
            return list(db.execute(statement).mappings())

    def _one(self, statement):
        rows = self._rows(statement)
        return rows[0] if rows else None

    def _executions_of_root(self):
        """SELECT executions, limited to this root's runs in a shared store."""
        query = select(t.executions)
        if self._scope is not None:
            query = query.join(t.runs, t.runs.c.id == t.executions.c.run_id).where(t.runs.c.root == self._scope)
        return query

    def _runs_of_root(self):
        query = select(t.runs)
        return query if self._scope is None else query.where(t.runs.c.root == self._scope)

    # ---------------------------------------------------------------------------------- runs
    def start_run(self, config: dict, argv: list, options: dict | None = None) -> int:
        with self.transaction() as db:
            return db.execute(insert(t.runs).values(
                started=time.time(), state=RUNNING, config=_dumps(config), argv=_dumps(list(argv)),
                options=_dumps(options or {}), pid=os.getpid(), host=socket.gethostname(),
                root=self.root_label).returning(t.runs.c.id)).scalar_one()

    def end_run(self, run_id: int, state: str, error: str | None = None) -> None:
        with self.transaction() as db:
            db.execute(update(t.runs).where(t.runs.c.id == run_id).values(state=state, ended=time.time(), error=error))

    def abandon_unfinished(self) -> list[ExecutionRecord]:
        """Mark this root's RUNNING runs and executions ABANDONED; call only while holding the root's lock.

        Whoever holds the lock is the only live writer of this root, so anything still RUNNING
        belongs to a process that died (SIGKILL, power loss). Returns the abandoned executions.
        """
        runs = select(t.runs.c.id)
        if self._scope is not None:
            runs = runs.where(t.runs.c.root == self._scope)
        with self.transaction() as db:
            rows = list(db.execute(select(t.executions).where(
                t.executions.c.state == RUNNING, t.executions.c.run_id.in_(runs))).mappings())
            now = time.time()
            died = "the process running it died"
            db.execute(update(t.executions).where(t.executions.c.state == RUNNING, t.executions.c.run_id.in_(runs))
                       .values(state=ABANDONED, ended=now, error=died))
            db.execute(update(t.runs).where(t.runs.c.state == RUNNING, t.runs.c.id.in_(runs))
                       .values(state=ABANDONED, ended=now, error=died))
        return [self._execution(row) for row in rows]

    def run(self, run_id: int) -> RunRecord:
        row = self._one(select(t.runs).where(t.runs.c.id == run_id))
        if row is None:
            raise KeyError(f"no run {run_id} in {self.path}")
        return self._run(row)

    def latest_run_id(self) -> Optional[int]:
        query = select(func.max(t.runs.c.id))
        if self._scope is not None:
            query = query.where(t.runs.c.root == self._scope)
        with self._read() as db:
            return db.execute(query).scalar()

    def runs(self) -> list[RunRecord]:
        return [self._run(r) for r in self._rows(self._runs_of_root().order_by(t.runs.c.id))]

    # ---------------------------------------------------------------------------- executions
    def start_execution(self, run_id: int, stage: str, *, params: dict, cache_key: str, code_version: str,
                        inputs: dict[str, Artifact], external_fingerprint: str | None, reason: dict,
                        state: str = RUNNING, reused_execution_id: int | None = None,
                        outputs: dict[str, Artifact] | None = None, trial: str | None = None) -> int:
        """Record an execution with its INPUT events (and OUTPUT events when it reuses artifacts)."""
        now = time.time()
        with self.transaction() as db:
            execution_id = db.execute(insert(t.executions).values(
                run_id=run_id, stage=stage, state=state, params=_dumps(params), cache_key=cache_key,
                code_version=code_version, inputs=_dumps({name: a.fingerprint for name, a in inputs.items()}),
                external_fingerprint=external_fingerprint, reason=_dumps(reason),
                reused_execution_id=reused_execution_id, started=now, ended=None if state == RUNNING else now,
                trial=trial).returning(t.executions.c.id)).scalar_one()
            events = [{"execution_id": execution_id, "artifact_id": a.id, "kind": INPUT, "name": name}
                      for name, a in inputs.items()]
            events += [{"execution_id": execution_id, "artifact_id": a.id, "kind": OUTPUT, "name": name}
                       for name, a in (outputs or {}).items()]
            for event in events:  # one by one: the order of the ids is the order of the names
                db.execute(insert(t.events).values(**event))
        return execution_id

    def complete_execution(self, execution_id: int, outputs: dict[str, NewArtifact]) -> dict[str, Artifact]:
        """Record the published outputs and mark the execution COMPLETE, in one transaction."""
        now = time.time()
        published = {}
        with self.transaction() as db:
            for name, new in outputs.items():
                uri = self._relative(new.uri)
                artifact_id = db.execute(insert(t.artifacts).values(
                    type=new.type, uri=uri, fingerprint=new.fingerprint, properties=_dumps(new.properties),
                    state="LIVE", created=now).returning(t.artifacts.c.id)).scalar_one()
                db.execute(insert(t.events).values(execution_id=execution_id, artifact_id=artifact_id,
                                                   kind=OUTPUT, name=name))
                published[name] = Artifact(artifact_id, new.type, self.root / uri, new.fingerprint,
                                           dict(new.properties))
            updated = db.execute(update(t.executions).where(
                t.executions.c.id == execution_id, t.executions.c.state == RUNNING).values(
                state=COMPLETE, ended=now)).rowcount
            if updated != 1:
                raise RuntimeError(f"execution {execution_id} is no longer RUNNING; its outputs were not recorded")
        return published

    def fail_execution(self, execution_id: int, error: str, traceback: str | None = None) -> None:
        with self.transaction() as db:
            db.execute(update(t.executions).where(t.executions.c.id == execution_id).values(
                state=FAILED, ended=time.time(), error=error, traceback=traceback))

    def execution(self, execution_id: int) -> ExecutionRecord:
        row = self._one(select(t.executions).where(t.executions.c.id == execution_id))
        if row is None:
            raise KeyError(f"no execution {execution_id} in {self.path}")
        return self._execution(row)

    def executions(self, run_id: int) -> list[ExecutionRecord]:
        rows = self._rows(select(t.executions).where(t.executions.c.run_id == run_id).order_by(t.executions.c.id))
        return [self._execution(r) for r in rows]

    def find_complete(self, stage: str, cache_key: str) -> Optional[ExecutionRecord]:
        """The most recent COMPLETE execution with this key whose outputs all still exist."""
        e = t.executions.c
        rows = self._rows(self._executions_of_root().where(
            e.stage == stage, e.cache_key == cache_key, e.state == COMPLETE).order_by(e.id.desc()))
        for row in rows:
            if all(self._exists(a) for a in self.outputs(row["id"]).values()):
                return self._execution(row)
        return None

    def latest_execution(self, stage: str, states: tuple[str, ...] = (COMPLETE,),
                         cache_key: str | None = None, trial: str | None = None) -> Optional[ExecutionRecord]:
        """The newest execution of `stage` in one of `states`; of that `trial` when one is named."""
        e = t.executions.c
        query = self._executions_of_root().where(e.stage == stage, e.state.in_(states))
        if cache_key is not None:
            query = query.where(e.cache_key == cache_key)
        if trial is not None:
            query = query.where(e.trial == trial)
        row = self._one(query.order_by(e.id.desc()).limit(1))
        return self._execution(row) if row else None

    # ----------------------------------------------------------------------------- artifacts
    def outputs(self, execution_id: int) -> dict[str, Artifact]:
        return self._artifacts(execution_id, OUTPUT)

    def inputs(self, execution_id: int) -> dict[str, Artifact]:
        return self._artifacts(execution_id, INPUT)

    def producer(self, artifact_id: int) -> Optional[ExecutionRecord]:
        """The execution that wrote this artifact (not those that reused or passed it through)."""
        v = t.events.c
        row = self._one(select(t.executions).join(t.events, v.execution_id == t.executions.c.id).where(
            v.artifact_id == artifact_id, v.kind == OUTPUT, t.executions.c.state == COMPLETE)
            .order_by(t.executions.c.id).limit(1))
        return self._execution(row) if row else None

    def _artifacts(self, execution_id: int, kind: str) -> dict[str, Artifact]:
        v = t.events.c
        rows = self._rows(select(v.name, t.artifacts).join(t.artifacts, t.artifacts.c.id == v.artifact_id)
                          .where(v.execution_id == execution_id, v.kind == kind).order_by(v.id))
        return {r["name"]: Artifact(r["id"], r["type"], self.root / r["uri"], r["fingerprint"],
                                    json.loads(r["properties"])) for r in rows}

    def _relative(self, uri: Path) -> str:
        uri = Path(uri)
        if uri.is_absolute():
            uri = uri.resolve().relative_to(self.root)
        return uri.as_posix()

    @staticmethod
    def _run(row) -> RunRecord:
        return RunRecord(row["id"], row["started"], row["ended"], row["state"], json.loads(row["config"]),
                         json.loads(row["argv"]), json.loads(row["options"]), row["pid"], row["host"], row["error"])

    @staticmethod
    def _execution(row) -> ExecutionRecord:
        return ExecutionRecord(
            row["id"], row["run_id"], row["stage"], row["state"], json.loads(row["params"]), row["cache_key"],
            row["code_version"], json.loads(row["inputs"]), row["external_fingerprint"],
            json.loads(row["reason"]), row["reused_execution_id"], row["error"], row["traceback"],
            row["started"], row["ended"], row["trial"])


def store_for(root: str | Path, url: Optional[str] = None, create: bool = True) -> MetadataStore:
    """The store of a root named as the user names it (a path or a URL), for readers such as `convpipe runs`."""
    from pipeline.filesystem import RemoteRoot, is_url, root_label

    local = RemoteRoot(str(root)).local if is_url(root) else Path(root)
    return MetadataStore(local, create=create, url=url, root_label=root_label(root))
