"""``hclal scp``: run the DICOM storage SCP that receives studies from the PACS."""

from __future__ import annotations

import errno
import logging
import signal
import socket
import threading
from types import FrameType
from typing import Annotated, Optional

import typer
from sqlalchemy.exc import OperationalError

from worker.cli.common import fail, settings_of

LOGGER = logging.getLogger(__name__)


def scp_command(
    ctx: typer.Context,
    host: Annotated[
        Optional[str],
        typer.Option("--host", help="Address to listen on (overrides HCLAL_SCP_HOST)."),
    ] = None,
    port: Annotated[
        Optional[int],
        typer.Option("--port", help="TCP port to listen on (overrides HCLAL_SCP_PORT)."),
    ] = None,
    ae_title: Annotated[
        Optional[str],
        typer.Option("--ae-title", help="AE title of the SCP (overrides HCLAL_AE_TITLE)."),
    ] = None,
    metrics_port: Annotated[
        Optional[int],
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            help="TCP port of the Prometheus endpoint, on the same address as the SCP "
            "(overrides HCLAL_METRICS_PORT; unset serves no metrics).",
        ),
    ] = None,
) -> None:
    """Receive CT, PET and SEG instances by C-STORE and queue each complete study for analysis.

    Runs until SIGTERM or SIGINT, then finishes open associations and exits.
    The Prometheus endpoint listens on the SCP's address, so it stays on the
    loopback interface unless ``--host`` opens the SCP to the network.
    """
    from dicom.network.scp import create_scp  # noqa: PLC0415 - keeps 'hclal --help' fast
    from worker.completeness import QuietPeriodMonitor  # noqa: PLC0415
    from worker.db.session import SchemaError  # noqa: PLC0415
    from worker.metrics import serve_metrics  # noqa: PLC0415
    from worker.localizer_cache import check_model_files  # noqa: PLC0415
    from worker.queue import requeue_unfinished  # noqa: PLC0415

    settings = settings_of(ctx, scp_host=host, scp_port=port, ae_title=ae_title, metrics_port=metrics_port)
    logging.getLogger().setLevel(settings.log_level)
    if settings.log_level != "DEBUG":
        # pynetdicom logs several INFO lines per C-STORE; the SCP logs one per association.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)

    try:
        check_model_files(settings)
    except FileNotFoundError as exc:
        fail(str(exc))

    try:
        scp = create_scp(settings)
        scp.store.spool.remove_partial_files()
        recorded = scp.store.record_unrecorded_files()
        resumed = scp.tracker.resume()
    except SchemaError as exc:
        fail(str(exc))
    except OperationalError as exc:
        fail(f"cannot reach the database: {exc.orig}; check HCLAL_DATABASE_URL")
    LOGGER.info(
        "recorded %d unrecorded spool files; resumed %d SEG instances of studies still receiving",
        recorded,
        resumed,
    )
    requeue_unfinished(settings)

    try:
        serve_metrics(settings.metrics_port, settings.scp_host)
    except OSError as exc:
        fail(
            f"cannot serve metrics on {settings.scp_host}:{settings.metrics_port}: {exc.strerror}; "
            "choose another --metrics-port or stop the program that uses it"
        )

    try:
        scp.start()
    except ValueError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(
            f"cannot listen on {settings.scp_host}:{settings.scp_port}: {exc.strerror or exc}; "
            f"{_listen_hint(exc)}"
        )
    monitor = QuietPeriodMonitor(scp.tracker)
    monitor.start()

    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        LOGGER.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    stop.wait()

    scp.stop(grace_period=settings.network_timeout)
    monitor.stop()


def _listen_hint(error: OSError) -> str:
    """Return what to change when the server socket cannot be bound."""
    if isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
        return "set --host or HCLAL_SCP_HOST to an IP address or host name of this machine"
    if error.errno == errno.EADDRINUSE:
        return "choose another --port or stop the program that uses it"
    if error.errno == errno.EACCES:
        return "choose a --port of 1024 or above, or grant the process CAP_NET_BIND_SERVICE"
    return "check --host and --port (HCLAL_SCP_HOST and HCLAL_SCP_PORT)"


def register(app: typer.Typer) -> None:
    """Add ``hclal scp`` to ``app``."""
    app.command("scp")(scp_command)
