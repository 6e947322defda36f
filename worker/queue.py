"""The task interface: queue an analysis on Celery, or run it in-process without a broker."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from worker.config import Settings

LOGGER = logging.getLogger(__name__)

_EXECUTORS: dict[str, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def _executor(settings: Settings) -> ThreadPoolExecutor:
    # One worker thread per database: analyses run one after another, as on a solo Celery worker.
    key = settings.effective_database_url
    with _LOCK:
        if key not in _EXECUTORS:
            _EXECUTORS[key] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hclal-analysis")
        return _EXECUTORS[key]


def _run_in_process(settings: Settings, analysis_id: int) -> None:
    from worker.tasks import analyse_and_deliver

    try:
        analyse_and_deliver(settings, analysis_id)
    except Exception:
        LOGGER.exception("in-process analysis %d failed", analysis_id)
        raise


def enqueue_analysis(settings: Settings, analysis_id: int) -> Future | None:
    """Queue analysis ``analysis_id``.

    With ``broker_url`` set the Celery task ``hclal.localize`` is sent to the
    ``localize`` queue and None is returned; otherwise the analysis runs on a
    background thread of this process and its future is returned.
    """
    if settings.broker_url:
        from worker.celery_app import get_celery_app

        get_celery_app(settings).send_task("hclal.localize", args=[analysis_id], queue="localize")
        LOGGER.info("analysis %d sent to the localize queue", analysis_id)
        return None
    LOGGER.info("analysis %d queued in-process", analysis_id)
    return _executor(settings).submit(_run_in_process, settings, analysis_id)


def enqueue_delivery(settings: Settings, report_id: int) -> None:
    """Queue the sending of report ``report_id`` (Celery ``deliver`` queue, or run it now)."""
    if settings.broker_url:
        from worker.celery_app import get_celery_app

        get_celery_app(settings).send_task("hclal.deliver", args=[report_id], queue="deliver")
        return
    from worker.delivery import deliver_report

    deliver_report(settings, report_id, force=False)


def wait_for_in_process_tasks(settings: Settings) -> None:
    """Block until every in-process analysis queued so far has finished."""
    executor = _EXECUTORS.get(settings.effective_database_url)
    if executor is not None:
        executor.submit(lambda: None).result()


def requeue_unfinished(settings: Settings) -> list[int]:
    """Queue again the analyses that a stopped process left unfinished; return their ids.

    Without a broker the queue lives in memory, so analyses that were queued,
    started or localised when the process stopped are queued again at start.
    With a broker, Celery redelivers the tasks of a worker that died, and only
    analyses whose task never reached the broker (an ``enqueue_failed`` event)
    are sent again.
    """
    from sqlalchemy import select

    from worker.db.models import Analysis, AnalysisState, Event
    from worker.db.session import get_engine, session_scope

    unfinished = (AnalysisState.QUEUED, AnalysisState.STARTED, AnalysisState.LOCALISED)
    with session_scope(get_engine(settings.effective_database_url)) as session:
        query = select(Analysis.id).where(Analysis.state.in_(unfinished)).order_by(Analysis.id)
        if settings.broker_url:
            failed_sends = select(Event.analysis_id).where(Event.kind == "enqueue_failed")
            query = query.where(Analysis.id.in_(failed_sends))
        analysis_ids = list(session.scalars(query))
    for analysis_id in analysis_ids:
        enqueue_analysis(settings, analysis_id)
    if analysis_ids:
        LOGGER.info("queued %d unfinished analyses again: %s", len(analysis_ids), analysis_ids)
    return analysis_ids
