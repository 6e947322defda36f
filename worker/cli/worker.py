"""``hclal worker``: run a Celery worker for the localize and deliver queues."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from worker.cli.common import fail, settings_of

LOGGER = logging.getLogger(__name__)

QUEUES = ("localize", "deliver")


def worker_command(
    ctx: typer.Context,
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues to consume: localize (models), deliver (network).")
    ] = "localize,deliver",
    concurrency: Annotated[int, typer.Option(min=1, help="Worker processes or threads.")] = 1,
    pool: Annotated[
        str,
        typer.Option(
            help="Celery pool: solo, threads or prefork. Default: solo when consuming 'localize' "
            "(CUDA must not be initialised before a fork), else threads."
        ),
    ] = "",
    metrics_port: Annotated[
        int | None, typer.Option(help="Port of the Prometheus endpoint on 127.0.0.1; default HCLAL_METRICS_PORT.")
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Address of the Prometheus endpoint; 0.0.0.0 to let other hosts scrape it.")
    ] = "127.0.0.1",
    name: Annotated[str, typer.Option(help="Worker node name (Celery -n).")] = "hclal@%h",
) -> None:
    """Consume analysis and delivery tasks from the broker in HCLAL_BROKER_URL."""
    settings = settings_of(ctx)
    if not settings.broker_url:
        fail("HCLAL_BROKER_URL is not set; a Celery worker needs a broker such as redis://127.0.0.1:6379/0 "
             "(without one, 'hclal scp' runs analyses in-process)")
    selected = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(selected) - set(QUEUES))
    if unknown or not selected:
        fail(f"invalid --queues {queues!r}; choose from {', '.join(QUEUES)}")
    chosen_pool = pool or ("solo" if "localize" in selected else "threads")
    if chosen_pool not in ("solo", "threads", "prefork"):
        fail(f"invalid --pool {pool!r}; choose solo, threads or prefork")

    from worker.celery_app import get_celery_app
    from worker.db.session import get_engine
    from worker.db.session import SchemaError
    from worker.localizer_cache import check_model_files
    from worker.metrics import serve_metrics

    try:
        get_engine(settings.effective_database_url)
    except SchemaError as exc:
        fail(str(exc))
    if "localize" in selected:
        try:
            check_model_files(settings)
        except FileNotFoundError as exc:
            fail(str(exc))
    serve_metrics(metrics_port or settings.metrics_port, metrics_host)
    app = get_celery_app(settings)
    LOGGER.info("worker %s starting on queues %s with pool %s x%d", name, ",".join(selected), chosen_pool, concurrency)
    app.worker_main(
        [
            "worker",
            f"--queues={','.join(selected)}",
            f"--concurrency={concurrency}",
            f"--pool={chosen_pool}",
            f"--hostname={name}",
            f"--loglevel={settings.log_level}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


def register(app: typer.Typer) -> None:
    """Add ``hclal worker`` to ``app``."""
    app.command("worker")(worker_command)
