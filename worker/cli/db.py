"""``hclal db``: wrap Alembic migrations of the configured database."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy.exc import OperationalError

from worker.cli.common import fail, settings_of
from worker.db import session as db_session

db_app = typer.Typer(help="Migrate the worker's database (Alembic).", no_args_is_help=True)


@db_app.command("upgrade")
def upgrade_command(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision id.")] = "head",
) -> None:
    """Migrate the database up to REVISION (default: the newest)."""
    url = settings_of(ctx).effective_database_url
    try:
        db_session.upgrade(url, revision)
    except OperationalError as exc:
        fail(f"cannot reach the database: {exc.orig}; check HCLAL_DATABASE_URL")
    typer.echo(f"database at {db_session.current_revision(db_session.create_db_engine(url))}")


@db_app.command("downgrade")
def downgrade_command(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision id, or 'base' to drop every table.")],
) -> None:
    """Migrate the database down to REVISION."""
    url = settings_of(ctx).effective_database_url
    try:
        db_session.downgrade(url, revision)
    except OperationalError as exc:
        fail(f"cannot reach the database: {exc.orig}; check HCLAL_DATABASE_URL")
    typer.echo(f"database at {db_session.current_revision(db_session.create_db_engine(url)) or 'base'}")


@db_app.command("current")
def current_command(ctx: typer.Context) -> None:
    """Print the database's revision and the newest one this version knows."""
    url = settings_of(ctx).effective_database_url
    try:
        current = db_session.current_revision(db_session.create_db_engine(url))
    except OperationalError as exc:
        fail(f"cannot reach the database: {exc.orig}; check HCLAL_DATABASE_URL")
    head = db_session.head_revision(url)
    state = "at head" if current == head else "behind head: run 'hclal db upgrade'"
    typer.echo(f"current: {current or 'base'}\nhead:    {head}\n{state}")


def register(app: typer.Typer) -> None:
    """Add ``hclal db`` to ``app``."""
    app.add_typer(db_app, name="db")
