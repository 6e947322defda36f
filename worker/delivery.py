"""Send a written report to every configured destination and record each attempt.

Transient failures are retried with exponential backoff by
:func:`dicom.network.scu.deliver_with_retries`; each attempt becomes a ``delivery``
row. A destination that does not accept Comprehensive 3D SR gets the fallback
variant written beside the report; every destination then gets the outline
document (planar groups only) that web viewers label with the finding site. When every destination stored the report the
analysis is ``delivered``, otherwise ``delivery_failed`` (``hclal admin resend``
tries again).
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import func, select

from worker import metrics
from worker.config import Destination, Settings
from worker.db.models import Analysis, AnalysisState, Delivery, Event, Report, utcnow
from worker.db.session import get_engine, session_scope

LOGGER = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """The report to send does not exist or its file is missing."""


def deliver_report(settings: Settings, report_id: int, *, force: bool = True) -> AnalysisState:
    """Send report ``report_id`` to every destination; return the analysis's new state.

    With ``force`` False a report whose analysis is already delivered is not sent
    again (a redelivered Celery task); ``hclal admin resend`` passes True.
    """
    engine = get_engine(settings.effective_database_url)
    with session_scope(engine) as session:
        report = session.get(Report, report_id)
        if report is None:
            raise DeliveryError(f"report {report_id} not found")
        analysis_id = report.analysis_id
        state = report.analysis.state
        path = Path(report.file_path)
        fallback = Path(report.fallback_file_path) if report.fallback_file_path else None
        outline = Path(report.outline_file_path) if report.outline_file_path else None
        sop_instance_uid = report.sop_instance_uid
    if state == AnalysisState.DELIVERED and not force:
        LOGGER.info("report %d (SR %s) already delivered; not sending again", report_id, sop_instance_uid)
        return state
    if not path.is_file():
        raise DeliveryError(f"report file {path} of SR {sop_instance_uid} is missing; requeue the analysis")
    if not settings.destinations:
        LOGGER.warning("no destinations configured (HCLAL_DESTINATIONS); SR %s stays local", sop_instance_uid)
        return state

    failures = []
    for destination in settings.destinations:
        result = _send(engine, settings, report_id, path, destination)
        if result.sop_class_rejected:
            LOGGER.warning(
                "%s does not accept SOP class %s; sending %s instead", destination.ae_title,
                result.sop_class_uid, settings.sr_fallback_sop_class,
            )
            result = _send(engine, settings, report_id, _existing(fallback, sop_instance_uid), destination)
        if result.delivered and outline is not None:
            result = _send(engine, settings, report_id, _existing(outline, sop_instance_uid), destination)
        if not result.delivered:
            failures.append(f"{destination.ae_title}@{destination.host}:{destination.port}: {result.error}")

    return _finish(engine, analysis_id, sop_instance_uid, failures)


def _send(engine, settings: Settings, report_id: int, path: Path, destination: Destination):  # noqa: ANN001, ANN202
    """Send one document with retries, numbering its attempts after the earlier ones."""
    import pydicom

    from dicom.network.scu import DeliveryAttempt, deliver_with_retries, record_delivery

    dataset = pydicom.dcmread(path)
    sop_instance_uid = str(dataset.SOPInstanceUID)
    offset = _attempts_so_far(engine, report_id, destination, sop_instance_uid)

    def record(attempt: DeliveryAttempt) -> None:
        from dataclasses import replace

        with session_scope(engine) as session:
            record_delivery(session, report_id, replace(attempt, attempt=offset + attempt.attempt))
        metrics.DELIVERIES.labels(status=attempt.result.status.value).inc()

    return deliver_with_retries(dataset, destination, settings, record_attempt=record)


def _attempts_so_far(engine, report_id: int, destination: Destination, sop_instance_uid: str) -> int:  # noqa: ANN001
    with session_scope(engine) as session:
        count = session.scalar(
            select(func.max(Delivery.attempt)).where(
                Delivery.report_id == report_id,
                Delivery.sop_instance_uid == sop_instance_uid,
                Delivery.destination_ae_title == destination.ae_title,
                Delivery.destination_host == destination.host,
                Delivery.destination_port == destination.port,
            )
        )
    return int(count or 0)


def _existing(path: Path | None, sop_instance_uid: str) -> Path:
    if path is None or not path.is_file():
        raise DeliveryError(
            f"companion document {path} of SR {sop_instance_uid} is missing; requeue the analysis"
        )
    return path


def _finish(engine, analysis_id: int, sop_instance_uid: str, failures: list[str]) -> AnalysisState:  # noqa: ANN001
    with session_scope(engine) as session:
        analysis = session.get(Analysis, analysis_id)
        if failures:
            analysis.state = AnalysisState.DELIVERY_FAILED
            analysis.error = "delivery failed: " + "; ".join(failures)
            session.add(Event(kind="delivery_failed", analysis_id=analysis_id,
                              study_instance_uid=analysis.study.study_instance_uid,
                              sop_instance_uid=sop_instance_uid, message=analysis.error))
            LOGGER.error("analysis %d: SR %s not delivered: %s", analysis_id, sop_instance_uid, analysis.error)
        else:
            analysis.state = AnalysisState.DELIVERED
            analysis.error = None
            analysis.delivered_at = utcnow()
            metrics.observe_stage(
                "report_to_delivered", metrics.seconds_between(analysis.report_written_at, analysis.delivered_at)
            )
            LOGGER.info("analysis %d: SR %s delivered", analysis_id, sop_instance_uid)
        metrics.ANALYSES.labels(state=analysis.state.value).inc()
        return analysis.state
