"""One analysis of a study: load inputs, localise lesions, store findings, write the report.

Every stage is timestamped in the ``analysis`` row. The lesions, findings, report
row and the state change to ``reported`` are written in one transaction that
locks the analysis row, so a task run twice (redelivery after a killed worker)
stores exactly one set of results. A failure stores the error and leaves the
received instances untouched.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker import metrics
from worker.config import Settings
from worker.db.models import (
    Analysis,
    AnalysisState,
    Finding,
    Instance,
    Lesion,
    Report,
    Series,
    StudyState,
    utcnow,
)
from worker.db.session import get_engine, session_scope
from worker.localizer_cache import model_name

LOGGER = logging.getLogger(__name__)

FINAL_STATES = {AnalysisState.REPORTED, AnalysisState.DELIVERED, AnalysisState.DELIVERY_FAILED}


class AnalysisError(RuntimeError):
    """The study cannot be analysed; the message gives the reason and is stored in ``analysis.error``."""


@dataclass(frozen=True)
class AnalysisContext:
    """Database facts the pipeline reads before it starts the heavy work."""

    analysis_id: int
    study_instance_uid: str
    file_paths: list[Path]
    predecessor: Report | None
    # The SEG whose references completed the study (or the newest one at the quiet period).
    seg_series_uid: str | None = None


def run_analysis(settings: Settings, analysis_id: int) -> int | None:
    """Run analysis ``analysis_id`` to a written report and return the report's id.

    Returns the existing report's id when the analysis was already reported, and
    None when it failed (the error is stored in the row).
    """
    engine = get_engine(settings.effective_database_url)

    context = _start(engine, analysis_id)
    if isinstance(context, int):
        return context
    try:
        return _analyse(settings, engine, context)
    except Exception as exc:  # noqa: BLE001 - every failure is stored, then re-raised for Celery
        _record_failure(engine, analysis_id, exc)
        # Invalid inputs (no SEG, unusable series, SEG on another frame of reference) are
        # final: they raise ValueError subclasses, and running again would fail the same way.
        if isinstance(exc, AnalysisError | ValueError):
            return None
        raise


def _start(engine, analysis_id: int) -> AnalysisContext | int:  # noqa: ANN001
    """Mark the analysis started; return the existing report id if it was already done."""
    with session_scope(engine) as session:
        analysis = session.get(Analysis, analysis_id)
        if analysis is None:
            raise AnalysisError(f"analysis {analysis_id} not found")
        if analysis.state in FINAL_STATES:
            report = _latest_report(session, analysis_id)
            if report is not None:
                LOGGER.info("analysis %d already %s; nothing to do", analysis_id, analysis.state.value)
                return report.id
        if analysis.started_at is not None:
            LOGGER.warning("analysis %d restarted (an earlier run did not finish)", analysis_id)
        analysis.state = AnalysisState.STARTED
        analysis.started_at = utcnow()
        analysis.worker_name = socket.gethostname()
        analysis.error = None
        metrics.observe_stage("complete_to_start", metrics.seconds_between(analysis.complete_at, analysis.started_at))
        study = analysis.study
        paths = session.scalars(
            select(Instance.file_path).join(Series).where(Series.study_id == study.id)
        ).all()
        predecessor = _previous_report(session, study.id, analysis_id)
        return AnalysisContext(
            analysis_id,
            study.study_instance_uid,
            [Path(p) for p in paths],
            predecessor,
            analysis.seg_series_uid,
        )


def _analyse(settings: Settings, engine, context: AnalysisContext) -> int | None:  # noqa: ANN001
    from dicom.study import load_study
    from worker.localizer_cache import get_localizer
    from worker.reporting import write_report

    LOGGER.info(
        "analysis %d: loading study %s from %d files",
        context.analysis_id, context.study_instance_uid, len(context.file_paths),
    )
    inputs = load_study(context.file_paths, seg_series_uid=context.seg_series_uid)
    _stamp(engine, context.analysis_id, "lesions_extracted_at", inputs=inputs)

    localizer = get_localizer(settings)
    predictions = localizer.localize(inputs.ct, inputs.pet, inputs.lesions)
    _stamp(engine, context.analysis_id, "localised_at")
    LOGGER.info("analysis %d: %d lesions localised", context.analysis_id, len(predictions))

    report_file = write_report(settings, context, inputs, predictions, localizer)
    return _store_results(engine, context, inputs, predictions, report_file, localizer)


def _stamp(engine, analysis_id: int, column: str, inputs=None) -> None:  # noqa: ANN001
    with session_scope(engine) as session:
        analysis = session.get(Analysis, analysis_id)
        setattr(analysis, column, utcnow())
        if inputs is not None:
            analysis.ct_series_uid = inputs.ct_series_uid
            analysis.pet_series_uid = inputs.pet_series_uid
            analysis.seg_series_uid = inputs.seg.SeriesInstanceUID if inputs.seg is not None else None
            analysis.suv_factor = inputs.suv.factor
            analysis.suv_reason = inputs.suv.reason
        if column == "localised_at":
            analysis.state = AnalysisState.LOCALISED


def _store_results(engine, context, inputs, predictions, report_file, localizer) -> int | None:  # noqa: ANN001
    with session_scope(engine) as session:
        analysis = session.scalars(
            select(Analysis).where(Analysis.id == context.analysis_id).with_for_update()
        ).one()
        if analysis.state in FINAL_STATES:
            LOGGER.info("analysis %d was reported by another worker; discarding this run", analysis.id)
            existing = _latest_report(session, analysis.id)
            return existing.id if existing else None

        session.query(Lesion).filter(Lesion.analysis_id == analysis.id).delete()
        for lesion, prediction in zip(inputs.lesions, predictions, strict=True):
            session.add(_lesion_row(analysis.id, context.study_instance_uid, inputs, lesion, prediction))

        report = Report(
            analysis_id=analysis.id,
            sop_instance_uid=report_file.sop_instance_uid,
            series_instance_uid=report_file.series_instance_uid,
            sop_class_uid=report_file.sop_class_uid,
            predecessor_sop_instance_uid=(
                context.predecessor.sop_instance_uid if context.predecessor else None
            ),
            file_path=str(report_file.path),
            fallback_sop_instance_uid=report_file.fallback_sop_instance_uid,
            fallback_file_path=str(report_file.fallback_path),
            outline_sop_instance_uid=report_file.outline_sop_instance_uid,
            outline_file_path=str(report_file.outline_path),
        )
        session.add(report)
        analysis.coarse_model = model_name(localizer, "coarse")
        analysis.fine_model = model_name(localizer, "fine")
        analysis.report_written_at = utcnow()
        analysis.state = AnalysisState.REPORTED
        analysis.study.state = StudyState.ANALYSED
        session.flush()
        metrics.observe_stage("start_to_report", metrics.seconds_between(analysis.started_at, analysis.report_written_at))
        metrics.ANALYSES.labels(state=AnalysisState.REPORTED.value).inc()
        LOGGER.info("analysis %d reported as SR %s", analysis.id, report.sop_instance_uid)
        return report.id


def _lesion_row(analysis_id, study_uid, inputs, lesion, prediction) -> Lesion:  # noqa: ANN001
    from worker.reporting import tracking_uid

    row = Lesion(
        analysis_id=analysis_id,
        segment_number=lesion.segment_number,
        segment_label=lesion.segment_label,
        component=lesion.component,
        tracking_uid=tracking_uid(study_uid, inputs, lesion),
        centroid_x_mm=float(lesion.centroid_mm[0]),
        centroid_y_mm=float(lesion.centroid_mm[1]),
        centroid_z_mm=float(lesion.centroid_mm[2]),
        bbox_mm=[float(v) for v in lesion.bbox_mm],
        volume_ml=float(lesion.volume_ml),
        voxels=int(lesion.voxels),
        suv_max=_optional_float(lesion.suv_max),
        suv_mean=_optional_float(lesion.suv_mean),
        suv_peak=_optional_float(lesion.suv_peak),
        hu_mean=_optional_float(lesion.hu_mean),
    )
    site = prediction.site
    row.finding = Finding(
        site_id=site.id,
        site_name=site.name,
        laterality=site.laterality,
        code_value=site.code.value,
        code_scheme=site.code.scheme,
        code_meaning=site.code.meaning,
        probability=float(prediction.probability),
        uncertain=bool(prediction.uncertain),
        coarse_topk=[[s, float(p)] for s, p in prediction.coarse_topk],
        fine_topk=[[s, float(p)] for s, p in prediction.fine_topk],
    )
    return row


def _record_failure(engine, analysis_id: int, exc: Exception) -> None:  # noqa: ANN001
    LOGGER.error("analysis %d failed: %s", analysis_id, exc)
    with session_scope(engine) as session:
        analysis = session.get(Analysis, analysis_id)
        if analysis is None:
            return
        analysis.state = AnalysisState.FAILED
        analysis.error = f"{type(exc).__name__}: {exc}"
    metrics.ANALYSES.labels(state=AnalysisState.FAILED.value).inc()


def _latest_report(session: Session, analysis_id: int) -> Report | None:
    return session.scalars(
        select(Report).where(Report.analysis_id == analysis_id).order_by(Report.id.desc())
    ).first()


def _previous_report(session: Session, study_id: int, analysis_id: int) -> Report | None:
    """Return the newest report of an earlier analysis of the study (the SR's predecessor)."""
    return session.scalars(
        select(Report)
        .join(Analysis)
        .where(Analysis.study_id == study_id, Analysis.id != analysis_id)
        .order_by(Report.id.desc())
    ).first()


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


__all__ = ["AnalysisError", "run_analysis"]
