"""Migrations on real PostgreSQL and SQLite: up, down, and no drift from the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from worker.db import session as db_session
from worker.db.models import Base

TABLES = {"study", "series", "instance", "analysis", "lesion", "finding", "report", "delivery", "event"}


def test_upgrade_creates_every_table(database_url: str) -> None:
    db_session.upgrade(database_url)
    engine = db_session.create_db_engine(database_url)
    assert TABLES <= set(inspect(engine).get_table_names())
    assert db_session.current_revision(engine) == db_session.head_revision(database_url)
    engine.dispose()


def test_downgrade_to_base_drops_tables(database_url: str) -> None:
    db_session.upgrade(database_url)
    db_session.downgrade(database_url, "base")
    engine = db_session.create_db_engine(database_url)
    remaining = set(inspect(engine).get_table_names()) - {"alembic_version"}
    assert remaining == set()
    assert db_session.current_revision(engine) is None
    engine.dispose()


def test_migrations_match_models(database_url: str) -> None:
    db_session.upgrade(database_url)
    engine = db_session.create_db_engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == []


def test_sqlite_migrated_automatically(sqlite_url: str) -> None:
    engine = db_session.get_engine(sqlite_url)
    assert db_session.current_revision(engine) == db_session.head_revision(sqlite_url)


def test_postgres_behind_head_refused(postgres_url: str) -> None:
    with pytest.raises(db_session.SchemaError, match="hclal db upgrade"):
        db_session.get_engine(postgres_url)
