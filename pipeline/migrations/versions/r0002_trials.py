"""Sweeps (SQLite `PRAGMA user_version` 2): the trial an execution ran, NULL for an ordinary one."""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("executions", sa.Column("trial", sa.Text))
