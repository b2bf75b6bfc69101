"""Which database holds the metadata store, how to connect to it, and how its schema is brought up to date.

`sqlite:///<root>/metadata.sqlite` is the default (the file lives in a local root, as it always
has); `postgresql+psycopg://user:pass@host:port/db` (CLI `--metadata`, config `pipeline.metadata`)
puts the lineage in a server that several machines share.

SQLite keeps its old discipline: WAL journal (readers never block a run), `synchronous=FULL`,
foreign keys on, a busy timeout, and `BEGIN IMMEDIATE` for every write transaction so two writers
serialise instead of failing on upgrade. Reads begin deferred.

Schema versions are Alembic revisions (pipeline/migrations/versions/). A SQLite store written
before Alembic (it has `PRAGMA user_version` 1 or 2 and no `alembic_version` table) is stamped at
the matching revision and upgraded; a store whose revision this convpipe does not know was made by
a newer one and is refused with a message that says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

BUSY_TIMEOUT_MS = 60_000
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK = 0x636F6E76  # "conv": the advisory lock migrations take on Postgres
HEAD_REVISION = "0003"
"""The newest revision in pipeline/migrations/versions/ (a test checks it against Alembic's own
head). A store already at it is opened without importing Alembic, a third of a cached rerun's
start-up otherwise."""
_LEGACY_REVISIONS = {1: "0001", 2: "0002"}
"""SQLite `PRAGMA user_version` of stores from before Alembic -> the revision they match."""


class DatabaseError(RuntimeError):
    """The metadata database cannot be used; one line that names its URL (password hidden)."""


def default_url(root: Path | str) -> str:
    from pipeline.artifacts import metadata_path
    return f"sqlite:///{metadata_path(Path(root).resolve())}"


def shown(url: str) -> str:
    """The URL as it may be printed or recorded: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def is_postgres(url: Optional[str]) -> bool:
    return bool(url) and make_url(url).get_backend_name() == "postgresql"


def check_url(url: str) -> None:
    """A URL this store can use: sqlite or postgresql (with a driver SQLAlchemy knows)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"--metadata {url!r}: expected a database URL such as sqlite:///path/metadata.sqlite "
                            f"or postgresql+psycopg://user:password@host:5432/convpipe") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise DatabaseError(f"--metadata {shown(url)}: expected a sqlite:// or postgresql+psycopg:// URL, "
                            f"got the {parsed.get_backend_name()!r} backend")


def connect(url: str) -> Engine:
    """An engine for `url`, with SQLite's pragmas and write transactions set up."""
    check_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (below)
            for pragma in (f"busy_timeout={BUSY_TIMEOUT_MS}", "journal_mode=WAL", "synchronous=FULL",
                           "foreign_keys=ON"):
                dbapi_connection.execute(f"PRAGMA {pragma}")

        @event.listens_for(engine, "begin")
        def _begin(connection):
            connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.info.get("write") else "BEGIN")
        return engine
    try:
        return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    except ImportError as exc:
        raise DatabaseError(f"--metadata {shown(url)}: the database driver is not installed ({exc}); "
                            f"pip install 'psycopg[binary]'") from None


def reach(engine: Engine) -> None:
    """Open one connection now, so an unreachable server fails before any work, naming the URL."""
    try:
        with engine.connect():
            pass
    except (OperationalError, DBAPIError) as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise DatabaseError(f"metadata store {shown(engine.url.render_as_string(hide_password=False))}: "
                            f"cannot connect: {reason}") from None


def _alembic_config(connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(connection) -> Optional[str]:
    from alembic.runtime.migration import MigrationContext
    return MigrationContext.configure(connection).get_current_revision()


def is_at_head(connection) -> bool:
    """Whether the store's one `alembic_version` row is HEAD_REVISION, read without Alembic."""
    if not inspect(connection).has_table("alembic_version"):
        return False
    versions = [row[0] for row in connection.exec_driver_sql("SELECT version_num FROM alembic_version")]
    return versions == [HEAD_REVISION]


def migrate(engine: Engine) -> None:
    """Bring the store to the newest revision (creating it when empty); refuse one from a newer convpipe."""
    name = shown(engine.url.render_as_string(hide_password=False))
    with engine.connect() as connection:
        connection.info["write"] = True
        if engine.dialect.name == "postgresql":  # two machines creating one store: one at a time
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        if is_at_head(connection):
            connection.commit()
            return
        from alembic import command  # only when the store needs creating or upgrading (HEAD_REVISION)
        from alembic.script import ScriptDirectory

        revision = current_revision(connection)
        head = head_revision()
        if revision == head:
            connection.commit()
            return
        scripts = ScriptDirectory.from_config(_alembic_config(connection))
        if revision is not None and revision not in {s.revision for s in scripts.walk_revisions()}:
            raise DatabaseError(f"metadata store {name}: schema revision {revision} was written by a newer "
                                f"convpipe (this one knows revisions up to {head}); upgrade convpipe to open it")
        config = _alembic_config(connection)
        if revision is None and inspect(connection).has_table("runs"):
            if engine.dialect.name != "sqlite":
                raise DatabaseError(f"metadata store {name}: it has a `runs` table but no alembic_version; "
                                    f"expected a store made by convpipe")
            legacy = connection.exec_driver_sql("PRAGMA user_version").scalar()
            if legacy not in _LEGACY_REVISIONS:
                raise DatabaseError(f"metadata store {name}: schema version {legacy} is not one this convpipe "
                                    f"understands (expected one of {sorted(_LEGACY_REVISIONS)}, or a newer "
                                    f"convpipe made it)")
            command.stamp(config, _LEGACY_REVISIONS[legacy])
            connection.commit()
        command.upgrade(config, "head")
        connection.commit()
