"""Alembic revisions of the metadata store; applied by pipeline.migrate, never by hand."""
