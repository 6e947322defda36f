"""Database engines, sessions and the schema check every process runs at start."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

LOGGER = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


class SchemaError(RuntimeError):
    """The database schema is not at the migration head."""


def _enable_sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001
    cursor = dbapi_connection.cursor()
    # Foreign keys are off by default in SQLite; WAL lets the SCP and readers work at once.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    # Every commit reaches the disk, except the SCP's instance rows (see worker.ingest).
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def create_db_engine(url: str) -> Engine:
    """Create an engine for ``url``; SQLite files get their parent folder, WAL and foreign keys."""
    if url.startswith("sqlite"):
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _enable_sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def alembic_config(url: str) -> AlembicConfig:
    """Return an Alembic configuration for ``url`` that uses the packaged migrations."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision(url: str) -> str | None:
    """Return the newest migration revision id."""
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """Return the revision the database is at, or None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision``."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision`` ("base" empties it)."""
    command.downgrade(alembic_config(url), revision)


def ensure_schema(engine: Engine, *, auto_migrate: bool) -> None:
    """Check that the schema is at head, migrating first when ``auto_migrate`` is set.

    Raises
    ------
    SchemaError
        If the schema is behind and ``auto_migrate`` is false (production
        PostgreSQL: an administrator migrates with ``hclal db upgrade``).
    """
    url = engine.url.render_as_string(hide_password=False)
    head = head_revision(url)
    current = current_revision(engine)
    if current == head:
        return
    if auto_migrate:
        LOGGER.info("migrating database from %s to %s", current or "empty", head)
        upgrade(url)
        return
    raise SchemaError(
        f"database schema is at revision {current or 'none (empty database)'} but this version "
        f"needs {head}; run 'hclal db upgrade' against {engine.url.render_as_string(hide_password=True)}"
    )


_ENGINES: dict[str, Engine] = {}
_CHECKED: set[str] = set()


def _engine_for(url: str) -> Engine:
    if url not in _ENGINES:
        _ENGINES[url] = create_db_engine(url)
    return _ENGINES[url]


def get_engine(url: str, *, auto_migrate: bool | None = None) -> Engine:
    """Return the process-wide engine for ``url`` with its schema checked once.

    SQLite databases are migrated automatically unless ``auto_migrate`` is False.
    """
    engine = _engine_for(url)
    if url not in _CHECKED:
        migrate = url.startswith("sqlite") if auto_migrate is None else auto_migrate
        ensure_schema(engine, auto_migrate=migrate)
        _CHECKED.add(url)
    return engine


def dispose_engines() -> None:
    """Close and forget every cached engine (after a fork, or at the end of tests)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()
    _CHECKED.clear()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """Yield a session that commits on success and rolls back on error."""
    factory = sessionmaker(engine, expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
