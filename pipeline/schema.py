"""The metadata store's tables as SQLAlchemy Core objects: the shape at the newest migration.

One definition serves SQLite and Postgres. Ids are never reused (SQLite AUTOINCREMENT, Postgres
sequences): execution directories are named by execution id, so a reused id could point an old
row at a new directory. JSON columns are TEXT holding canonical JSON, as they always were, so a
store copied between engines reads the same.

This module describes the current tables for queries; how a store gets there is
pipeline/migrations/ (each revision frozen as written, never importing this module).
"""
from __future__ import annotations

from sqlalchemy import CheckConstraint, Column, Float, ForeignKey, Index, Integer, MetaData, Table, Text

METADATA = MetaData()

runs = Table(
    "runs", METADATA,
    Column("id", Integer, primary_key=True),
    Column("started", Float, nullable=False),
    Column("ended", Float),
    Column("state", Text, nullable=False),
    Column("config", Text, nullable=False),
    Column("argv", Text, nullable=False),
    Column("options", Text, nullable=False, server_default="{}"),
    Column("pid", Integer),
    Column("host", Text),
    Column("error", Text),
    Column("root", Text),
    sqlite_autoincrement=True,
)
Index("runs_by_root", runs.c.root)

executions = Table(
    "executions", METADATA,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("stage", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("params", Text, nullable=False),
    Column("cache_key", Text, nullable=False),
    Column("code_version", Text, nullable=False),
    Column("inputs", Text, nullable=False),
    Column("external_fingerprint", Text),
    Column("reason", Text, nullable=False, server_default="{}"),
    Column("reused_execution_id", Integer, ForeignKey("executions.id")),
    Column("error", Text),
    Column("traceback", Text),
    Column("started", Float, nullable=False),
    Column("ended", Float),
    Column("trial", Text),
    sqlite_autoincrement=True,
)
Index("executions_by_key", executions.c.cache_key, executions.c.state)
Index("executions_by_stage", executions.c.stage, executions.c.state)
Index("executions_by_run", executions.c.run_id)

artifacts = Table(
    "artifacts", METADATA,
    Column("id", Integer, primary_key=True),
    Column("type", Text, nullable=False),
    Column("uri", Text, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("properties", Text, nullable=False, server_default="{}"),
    Column("state", Text, nullable=False),
    Column("created", Float, nullable=False),
    sqlite_autoincrement=True,
)

events = Table(
    "events", METADATA,
    Column("id", Integer, primary_key=True),
    Column("execution_id", Integer, ForeignKey("executions.id"), nullable=False),
    Column("artifact_id", Integer, ForeignKey("artifacts.id"), nullable=False),
    Column("kind", Text, CheckConstraint("kind IN ('INPUT', 'OUTPUT')"), nullable=False),
    Column("name", Text, nullable=False),
    sqlite_autoincrement=True,
)
Index("events_by_execution", events.c.execution_id, events.c.kind)
Index("events_by_artifact", events.c.artifact_id, events.c.kind)
