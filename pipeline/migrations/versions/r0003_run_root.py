"""One store, many roots: the artifact root each run wrote to (a path or a URL).

A Postgres store is shared by machines and pipelines; recovery (ABANDONED) and the cache look only
at runs of their own root. Rows from before this revision keep NULL and belong to whatever root
holds the SQLite file they live in.
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column("runs", sa.Column("root", sa.Text))
    op.create_index("runs_by_root", "runs", ["root"])
