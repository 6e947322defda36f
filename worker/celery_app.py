"""The Celery application: queues ``localize`` (GPU or CPU workers) and ``deliver`` (network).

Tasks are idempotent by analysis or report id, so they are acknowledged late and
given back to the broker when a worker dies mid-task.
"""

from __future__ import annotations

import logging

from celery import Celery

from worker.config import Settings

LOGGER = logging.getLogger(__name__)

_APPS: dict[str, Celery] = {}
_SETTINGS: dict[str, Settings] = {}


def create_celery_app(settings: Settings) -> Celery:
    """Create a Celery app for ``settings.broker_url`` with the worker's tasks registered."""
    if not settings.broker_url:
        raise ValueError("HCLAL_BROKER_URL is not set; Celery needs a broker (redis://host:6379/0)")
    if settings.broker_visibility_timeout <= settings.task_time_limit:
        # Redis gives an unacknowledged task to another worker after the visibility
        # timeout, so a slow analysis may then run twice at once (results are still
        # stored once, because the analysis row is locked).
        LOGGER.warning(
            "HCLAL_BROKER_VISIBILITY_TIMEOUT (%g s) is not above HCLAL_TASK_TIME_LIMIT (%g s)",
            settings.broker_visibility_timeout, settings.task_time_limit,
        )
    app = Celery("hclal", broker=settings.broker_url, backend=settings.result_backend)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # NOTE: Celery 5.7's solo and threads pools do not enforce time limits; only
        # prefork (--pool prefork) kills a task that runs past them.
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=settings.task_time_limit * 0.9,
        task_default_queue="localize",
        task_routes={"hclal.localize": {"queue": "localize"}, "hclal.deliver": {"queue": "deliver"}},
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_ignore_result=settings.result_backend is None,
        worker_hijack_root_logger=False,
        # Send each task to Redis when .send_task is called, not at commit of a transaction.
        task_always_eager=False,
    )
    from worker.tasks import register_tasks

    register_tasks(app, settings)
    return app


def broker_transport_options(settings: Settings) -> dict[str, float | int]:
    """Return the kombu Redis transport options that bound how late a lost task is redelivered.

    A task taken by a worker that died stays in Redis' ``unacked`` hash until a
    live worker's sweep finds it older than ``visibility_timeout``. By default kombu 5.7
    runs a sweep every ``unacked_restore_interval`` (10 s) and scans Redis only on every
    ``unacked_restore_throttle``-th (10th) sweep, so a lost task could wait 100 s beyond
    the timeout. Here every sweep scans, and sweeps run 1 to 10 s apart.
    """
    timeout = settings.broker_visibility_timeout
    return {
        "visibility_timeout": timeout,
        "unacked_restore_interval": min(max(timeout / 2, 1.0), 10.0),
        "unacked_restore_throttle": 1,
    }


def get_celery_app(settings: Settings) -> Celery:
    """Return the process-wide Celery app for ``settings.broker_url``."""
    key = settings.broker_url or ""
    if key not in _APPS:
        _APPS[key] = create_celery_app(settings)
        _SETTINGS[key] = settings
    return _APPS[key]
