"""``hclal admin``: inspect studies and analyses, resend reports, requeue analyses."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from worker.cli.common import fail, settings_of

admin_app = typer.Typer(help="Inspect and repair the worker's studies and analyses.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _engine(ctx: typer.Context):  # noqa: ANN202
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    from worker.db.session import SchemaError, get_engine

    settings = settings_of(ctx)
    try:
        return settings, get_engine(settings.effective_database_url)
    except SchemaError as exc:
        fail(str(exc))
    except (ArgumentError, NoSuchModuleError) as exc:
        fail(f"invalid HCLAL_DATABASE_URL: {exc}; use postgresql+psycopg://USER@HOST/DB or sqlite:///PATH")
    except OperationalError as exc:
        fail(f"cannot reach the database: {str(exc.orig).splitlines()[0]}; check HCLAL_DATABASE_URL")


def _print_rows(rows: list[dict[str, Any]], as_json: bool, title: str) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        typer.echo(f"no {title}")
        return
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    Console().print(table)


@admin_app.command("studies")
def studies_command(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="Only studies in this state: receiving, complete, analysed.")] = None,
    since: Annotated[
        datetime | None, typer.Option(help="Only studies that received an instance at or after this UTC time.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List studies, newest first, with their latest analysis."""
    from worker.admin import AdminError, list_studies
    from worker.db.session import session_scope

    _, engine = _engine(ctx)
    try:
        with session_scope(engine) as session:
            rows = list_studies(session, state=state, since=since)
    except AdminError as exc:
        fail(str(exc))
    _print_rows(rows, as_json, "studies")


@admin_app.command("study")
def study_command(
    ctx: typer.Context,
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID.")],
    as_json: JsonOption = False,
) -> None:
    """Show one study: series, analyses, findings, reports and deliveries."""
    from worker.admin import AdminError, describe_study
    from worker.db.session import session_scope

    _, engine = _engine(ctx)
    try:
        with session_scope(engine) as session:
            details = describe_study(session, study_uid)
    except AdminError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(details, indent=2, default=str))
        return
    typer.echo(f"study {details['study_instance_uid']} ({details['state']})")
    _print_rows(details["series"], False, "series")
    for analysis in details["analyses"]:
        summary = {k: v for k, v in analysis.items() if k not in ("findings", "reports")}
        _print_rows([summary], False, f"analysis {analysis['analysis_id']}")
        _print_rows(analysis["findings"], False, "findings")


@admin_app.command("failed")
def failed_command(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List analyses that failed or whose report could not be delivered."""
    from worker.admin import list_failed
    from worker.db.session import session_scope

    _, engine = _engine(ctx)
    with session_scope(engine) as session:
        rows = list_failed(session)
    _print_rows(rows, as_json, "failed analyses")


@admin_app.command("resend")
def resend_command(
    ctx: typer.Context,
    analysis_id: Annotated[int, typer.Argument(help="Analysis id (see 'hclal admin failed').")],
    as_json: JsonOption = False,
) -> None:
    """Send the newest report of ANALYSIS_ID to every destination again."""
    from worker.admin import AdminError, latest_report_of
    from worker.db.session import session_scope
    from worker.delivery import deliver_report

    settings, engine = _engine(ctx)
    try:
        with session_scope(engine) as session:
            report_id = latest_report_of(session, analysis_id).id
    except AdminError as exc:
        fail(str(exc))
    outcome = deliver_report(settings, report_id, force=True)
    _print_rows([{"analysis_id": analysis_id, "report_id": report_id, "state": outcome.value}], as_json, "resend")
    if outcome.value != "delivered":
        raise typer.Exit(1)


@admin_app.command("requeue")
def requeue_command(
    ctx: typer.Context,
    analysis_id: Annotated[int, typer.Argument(help="Analysis id whose study is analysed again.")],
    as_json: JsonOption = False,
) -> None:
    """Analyse the study of ANALYSIS_ID again; the new report supersedes the old one."""
    from worker.admin import AdminError, create_requeued_analysis
    from worker.db.models import Analysis, AnalysisState
    from worker.db.session import session_scope
    from worker.queue import enqueue_analysis, wait_for_in_process_tasks

    settings, engine = _engine(ctx)
    try:
        with session_scope(engine) as session:
            new_id = create_requeued_analysis(session, analysis_id).id
    except AdminError as exc:
        fail(str(exc))
    enqueue_analysis(settings, new_id)
    state = "queued"
    if not settings.broker_url:
        # Without a broker the analysis ran in this process; report how it ended.
        wait_for_in_process_tasks(settings)
        with session_scope(engine) as session:
            analysis = session.get(Analysis, new_id)
            state, error = analysis.state.value, analysis.error
        if state == AnalysisState.FAILED.value:
            fail(f"analysis {new_id} (a new run of analysis {analysis_id}) failed: {error}")
    _print_rows([{"previous_analysis_id": analysis_id, "analysis_id": new_id, "state": state}], as_json, "requeue")


def register(app: typer.Typer) -> None:
    """Add ``hclal admin`` to ``app``."""
    app.add_typer(admin_app, name="admin")
