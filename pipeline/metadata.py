"""The metadata store: who produced which artifact, from which inputs, with which parameters.

Modelled on ML Metadata, in one SQLite file at `<root>/metadata.sqlite`:

    runs        one `convpipe run` invocation: config, argv, state
    executions  one stage in one run: params, cache key, code version, input fingerprints, state,
                error, and why it ran or was reused
    artifacts   a published directory: type, uri (relative to the root), fingerprint, properties
    events      INPUT/OUTPUT edges between executions and artifacts, by input/output name

A stage that runs once per trial (pipeline/sweep.py) records one execution per trial, each with
its trial name in `executions.trial` (NULL for an ordinary execution).

Execution states: RUNNING, COMPLETE (ran and published its outputs), CACHED (reused a COMPLETE
execution's outputs), SKIPPED (stage disabled: its input passed through), FAILED, ABANDONED (the
process died while it was RUNNING). Only COMPLETE executions are ever reused.

Every write is one transaction (`BEGIN IMMEDIATE`), the journal is WAL so readers (`convpipe runs`)
never block a run, and a busy timeout lets two processes share the file.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from pipeline.artifacts import metadata_path
from pipeline.stage import Artifact

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 60_000

RUNNING, COMPLETE, CACHED, SKIPPED, FAILED, ABANDONED = (
    "RUNNING", "COMPLETE", "CACHED", "SKIPPED", "FAILED", "ABANDONED")
INPUT, OUTPUT = "INPUT", "OUTPUT"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL,
    ended REAL,
    state TEXT NOT NULL,
    config TEXT NOT NULL,
    argv TEXT NOT NULL,
    options TEXT NOT NULL DEFAULT '{}',
    pid INTEGER,
    host TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS executions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    stage TEXT NOT NULL,
    state TEXT NOT NULL,
    params TEXT NOT NULL,
    cache_key TEXT NOT NULL,
    code_version TEXT NOT NULL,
    inputs TEXT NOT NULL,
    external_fingerprint TEXT,
    reason TEXT NOT NULL DEFAULT '{}',
    reused_execution_id INTEGER REFERENCES executions(id),
    error TEXT,
    traceback TEXT,
    started REAL NOT NULL,
    ended REAL,
    trial TEXT
);
CREATE INDEX IF NOT EXISTS executions_by_key ON executions(cache_key, state);
CREATE INDEX IF NOT EXISTS executions_by_stage ON executions(stage, state);
CREATE INDEX IF NOT EXISTS executions_by_run ON executions(run_id);
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    uri TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    properties TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id INTEGER NOT NULL REFERENCES executions(id),
    artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
    kind TEXT NOT NULL CHECK (kind IN ('INPUT', 'OUTPUT')),
    name TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_execution ON events(execution_id, kind);
CREATE INDEX IF NOT EXISTS events_by_artifact ON events(artifact_id, kind);
"""


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
    """One connection to `<root>/metadata.sqlite`; create one per process (connections are not shared)."""

    def __init__(self, root: Path | str, create: bool = True):
        self.root = Path(root).resolve()
        self.path = metadata_path(self.root)
        if not create and not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no metadata store (has anything run under this root?)")
        self.root.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        if not create and self._conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            # The file exists but its creator has not committed the schema yet (another process
            # opening the store at that moment): to a reader, there is no store yet.
            self._conn.close()
            raise FileNotFoundError(f"{self.path}: the metadata store is being created; no run recorded yet")
        if create:
            with self.transaction() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise RuntimeError(f"{self.path}: schema version {version} is newer than this "
                                       f"convpipe understands ({SCHEMA_VERSION})")
                if version == 1:  # before trials: one column more
                    db.execute("ALTER TABLE executions ADD COLUMN trial TEXT")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "MetadataStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All writes inside commit together or not at all; `BEGIN IMMEDIATE` serialises writers."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")

    # ---------------------------------------------------------------------------------- runs
    def start_run(self, config: dict, argv: list, options: dict | None = None) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (started, state, config, argv, options, pid, host) VALUES (?,?,?,?,?,?,?)",
                (time.time(), RUNNING, _dumps(config), _dumps(list(argv)), _dumps(options or {}),
                 os.getpid(), socket.gethostname()))
            return cur.lastrowid

    def end_run(self, run_id: int, state: str, error: str | None = None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET state=?, ended=?, error=? WHERE id=?", (state, time.time(), error, run_id))

    def abandon_unfinished(self) -> list[ExecutionRecord]:
        """Mark RUNNING runs and executions ABANDONED; call only while holding the root lock.

        Whoever holds the lock is the only live writer, so anything still RUNNING belongs to a
        process that died (SIGKILL, power loss). Returns the abandoned executions.
        """
        with self.transaction() as db:
            rows = db.execute("SELECT * FROM executions WHERE state=?", (RUNNING,)).fetchall()
            now = time.time()
            db.execute("UPDATE executions SET state=?, ended=?, error=? WHERE state=?",
                       (ABANDONED, now, "the process running it died", RUNNING))
            db.execute("UPDATE runs SET state=?, ended=?, error=? WHERE state=?",
                       (ABANDONED, now, "the process running it died", RUNNING))
        return [self._execution(row) for row in rows]

    def run(self, run_id: int) -> RunRecord:
        row = self._conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run {run_id} in {self.path}")
        return self._run(row)

    def latest_run_id(self) -> Optional[int]:
        row = self._conn.execute("SELECT MAX(id) FROM runs").fetchone()
        return row[0]

    def runs(self) -> list[RunRecord]:
        return [self._run(r) for r in self._conn.execute("SELECT * FROM runs ORDER BY id")]

    # ---------------------------------------------------------------------------- executions
    def start_execution(self, run_id: int, stage: str, *, params: dict, cache_key: str, code_version: str,
                        inputs: dict[str, Artifact], external_fingerprint: str | None, reason: dict,
                        state: str = RUNNING, reused_execution_id: int | None = None,
                        outputs: dict[str, Artifact] | None = None, trial: str | None = None) -> int:
        """Record an execution with its INPUT events (and OUTPUT events when it reuses artifacts)."""
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO executions (run_id, stage, state, params, cache_key, code_version, inputs, "
                "external_fingerprint, reason, reused_execution_id, started, ended, trial) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, stage, state, _dumps(params), cache_key, code_version,
                 _dumps({name: a.fingerprint for name, a in inputs.items()}), external_fingerprint,
                 _dumps(reason), reused_execution_id, now, None if state == RUNNING else now, trial))
            execution_id = cur.lastrowid
            for name, artifact in inputs.items():
                db.execute("INSERT INTO events (execution_id, artifact_id, kind, name) VALUES (?,?,?,?)",
                           (execution_id, artifact.id, INPUT, name))
            for name, artifact in (outputs or {}).items():
                db.execute("INSERT INTO events (execution_id, artifact_id, kind, name) VALUES (?,?,?,?)",
                           (execution_id, artifact.id, OUTPUT, name))
        return execution_id

    def complete_execution(self, execution_id: int, outputs: dict[str, NewArtifact]) -> dict[str, Artifact]:
        """Record the published outputs and mark the execution COMPLETE, in one transaction."""
        now = time.time()
        published = {}
        with self.transaction() as db:
            for name, new in outputs.items():
                uri = self._relative(new.uri)
                cur = db.execute(
                    "INSERT INTO artifacts (type, uri, fingerprint, properties, state, created) VALUES (?,?,?,?,?,?)",
                    (new.type, uri, new.fingerprint, _dumps(new.properties), "LIVE", now))
                db.execute("INSERT INTO events (execution_id, artifact_id, kind, name) VALUES (?,?,?,?)",
                           (execution_id, cur.lastrowid, OUTPUT, name))
                published[name] = Artifact(cur.lastrowid, new.type, self.root / uri, new.fingerprint,
                                           dict(new.properties))
            updated = db.execute("UPDATE executions SET state=?, ended=? WHERE id=? AND state=?",
                                 (COMPLETE, now, execution_id, RUNNING)).rowcount
            if updated != 1:
                raise RuntimeError(f"execution {execution_id} is no longer RUNNING; its outputs were not recorded")
        return published

    def fail_execution(self, execution_id: int, error: str, traceback: str | None = None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE executions SET state=?, ended=?, error=?, traceback=? WHERE id=?",
                       (FAILED, time.time(), error, traceback, execution_id))

    def execution(self, execution_id: int) -> ExecutionRecord:
        row = self._conn.execute("SELECT * FROM executions WHERE id=?", (execution_id,)).fetchone()
        if row is None:
            raise KeyError(f"no execution {execution_id} in {self.path}")
        return self._execution(row)

    def executions(self, run_id: int) -> list[ExecutionRecord]:
        rows = self._conn.execute("SELECT * FROM executions WHERE run_id=? ORDER BY id", (run_id,))
        return [self._execution(r) for r in rows]

    def find_complete(self, stage: str, cache_key: str) -> Optional[ExecutionRecord]:
        """The most recent COMPLETE execution with this key whose outputs are all still on disk."""
        rows = self._conn.execute(
            "SELECT * FROM executions WHERE stage=? AND cache_key=? AND state=? ORDER BY id DESC",
            (stage, cache_key, COMPLETE))
        for row in rows:
            if all(a.uri.is_dir() for a in self.outputs(row["id"]).values()):
                return self._execution(row)
        return None

    def latest_execution(self, stage: str, states: tuple[str, ...] = (COMPLETE,),
                         cache_key: str | None = None, trial: str | None = None) -> Optional[ExecutionRecord]:
        """The newest execution of `stage` in one of `states`; of that `trial` when one is named."""
        marks = ",".join("?" * len(states))
        sql = f"SELECT * FROM executions WHERE stage=? AND state IN ({marks})"
        args: list = [stage, *states]
        if cache_key is not None:
            sql += " AND cache_key=?"
            args.append(cache_key)
        if trial is not None:
            sql += " AND trial=?"
            args.append(trial)
        row = self._conn.execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return self._execution(row) if row else None

    # ----------------------------------------------------------------------------- artifacts
    def outputs(self, execution_id: int) -> dict[str, Artifact]:
        return self._artifacts(execution_id, OUTPUT)

    def inputs(self, execution_id: int) -> dict[str, Artifact]:
        return self._artifacts(execution_id, INPUT)

    def producer(self, artifact_id: int) -> Optional[ExecutionRecord]:
        """The execution that wrote this artifact (not those that reused or passed it through)."""
        row = self._conn.execute(
            "SELECT e.* FROM executions e JOIN events v ON v.execution_id = e.id "
            "WHERE v.artifact_id=? AND v.kind=? AND e.state=? ORDER BY e.id LIMIT 1",
            (artifact_id, OUTPUT, COMPLETE)).fetchone()
        return self._execution(row) if row else None

    def _artifacts(self, execution_id: int, kind: str) -> dict[str, Artifact]:
        rows = self._conn.execute(
            "SELECT v.name, a.* FROM events v JOIN artifacts a ON a.id = v.artifact_id "
            "WHERE v.execution_id=? AND v.kind=? ORDER BY v.id", (execution_id, kind))
        return {r["name"]: Artifact(r["id"], r["type"], self.root / r["uri"], r["fingerprint"],
                                    json.loads(r["properties"])) for r in rows}

    def _relative(self, uri: Path) -> str:
        uri = Path(uri)
        if uri.is_absolute():
            uri = uri.resolve().relative_to(self.root)
        return uri.as_posix()

    @staticmethod
    def _run(row: sqlite3.Row) -> RunRecord:
        return RunRecord(row["id"], row["started"], row["ended"], row["state"], json.loads(row["config"]),
                         json.loads(row["argv"]), json.loads(row["options"]), row["pid"], row["host"], row["error"])

    @staticmethod
    def _execution(row: sqlite3.Row) -> ExecutionRecord:
        return ExecutionRecord(
            row["id"], row["run_id"], row["stage"], row["state"], json.loads(row["params"]), row["cache_key"],
            row["code_version"], json.loads(row["inputs"]), row["external_fingerprint"],
            json.loads(row["reason"]), row["reused_execution_id"], row["error"], row["traceback"],
            row["started"], row["ended"], row["trial"])
