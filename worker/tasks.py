"""Celery tasks and their in-process equivalent.

``hclal.localize`` runs one analysis and queues the delivery of its report;
``hclal.deliver`` sends a report to every destination. Both take database ids,
never datasets, so a redelivered message repeats work without writing twice.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.utils.log import get_task_logger
from sqlalchemy.exc import OperationalError

from worker.config import Settings

LOGGER = logging.getLogger(__name__)
TASK_LOGGER = get_task_logger(__name__)

# A database connection that is refused or dropped (a restart or failover) is retried.
# The pipeline stores any other error in the analysis row, and the task ends.
TRANSIENT_ERRORS = (OperationalError,)
MAX_RETRIES = 8
MAX_RETRY_DELAY = 60


def analyse_and_deliver(settings: Settings, analysis_id: int) -> int | None:
    """Run analysis ``analysis_id`` and queue its report for delivery; return the report id."""
    from worker.pipeline import run_analysis
    from worker.queue import enqueue_delivery

    report_id = run_analysis(settings, analysis_id)
    if report_id is not None:
        enqueue_delivery(settings, report_id)
    return report_id


def retry_options(settings: Settings) -> dict[str, Any]:
    """Return the Celery options that retry a task after a transient fault, 1, 2, 4 ... s later.

    A retry waits in the worker as an unacknowledged message. Redis gives such a
    message to another worker once it is older than the visibility timeout, so the
    delay stays below half of that timeout (and below 60 s).
    """
    max_delay = int(min(MAX_RETRY_DELAY, settings.broker_visibility_timeout / 2))
    return {
        "autoretry_for": TRANSIENT_ERRORS,
        "retry_backoff": True,
        "retry_backoff_max": max(max_delay, 1),
        "retry_jitter": False,
        "max_retries": MAX_RETRIES,
    }


def register_tasks(app: Celery, settings: Settings) -> None:
    """Register ``hclal.localize`` and ``hclal.deliver`` on ``app``, bound to ``settings``."""
    retries = retry_options(settings)

    @app.task(name="hclal.localize", acks_late=True, reject_on_worker_lost=True, **retries)
    def localize(analysis_id: int) -> int | None:
        TASK_LOGGER.info("analysis %d started", analysis_id)
        return analyse_and_deliver(settings, analysis_id)

    @app.task(name="hclal.deliver", acks_late=True, reject_on_worker_lost=True, **retries)
    def deliver(report_id: int) -> str:
        from worker.delivery import deliver_report

        TASK_LOGGER.info("delivery of report %d started", report_id)
        # A message redelivered after its worker died does not send a delivered report again.
        return deliver_report(settings, report_id, force=False).value
