"""The store as convpipe first wrote it (SQLite `PRAGMA user_version` 1): runs, executions, artifacts, events."""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("ended", sa.Float),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("argv", sa.Text, nullable=False),
        sa.Column("options", sa.Text, nullable=False, server_default="{}"),
        sa.Column("pid", sa.Integer),
        sa.Column("host", sa.Text),
        sa.Column("error", sa.Text),
        sqlite_autoincrement=True)
    op.create_table(
        "executions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("stage", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("cache_key", sa.Text, nullable=False),
        sa.Column("code_version", sa.Text, nullable=False),
        sa.Column("inputs", sa.Text, nullable=False),
        sa.Column("external_fingerprint", sa.Text),
        sa.Column("reason", sa.Text, nullable=False, server_default="{}"),
        sa.Column("reused_execution_id", sa.Integer, sa.ForeignKey("executions.id")),
        sa.Column("error", sa.Text),
        sa.Column("traceback", sa.Text),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("ended", sa.Float),
        sqlite_autoincrement=True)
    op.create_index("executions_by_key", "executions", ["cache_key", "state"])
    op.create_index("executions_by_stage", "executions", ["stage", "state"])
    op.create_index("executions_by_run", "executions", ["run_id"])
    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("properties", sa.Text, nullable=False, server_default="{}"),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sqlite_autoincrement=True)
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("execution_id", sa.Integer, sa.ForeignKey("executions.id"), nullable=False),
        sa.Column("artifact_id", sa.Integer, sa.ForeignKey("artifacts.id"), nullable=False),
        sa.Column("kind", sa.Text, sa.CheckConstraint("kind IN ('INPUT', 'OUTPUT')"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sqlite_autoincrement=True)
    op.create_index("events_by_execution", "events", ["execution_id", "kind"])
    op.create_index("events_by_artifact", "events", ["artifact_id", "kind"])
