"""Administrator queries and actions behind ``hclal admin``: the same tables as the SQL guide."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.db.models import (
    Analysis,
    AnalysisState,
    Delivery,
    Finding,
    Instance,
    Lesion,
    Report,
    Series,
    Study,
    StudyState,
)


class AdminError(ValueError):
    """An admin request names something that does not exist or cannot be done."""


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def list_studies(session: Session, state: str | None = None, since: datetime | None = None) -> list[dict[str, Any]]:
    """Return one row per study, newest first, with its instance count and latest analysis."""
    instances = (
        select(Series.study_id, func.count(Instance.id).label("instances"))
        .join(Instance, Instance.series_id == Series.id)
        .group_by(Series.study_id)
        .subquery()
    )
    query = select(Study, instances.c.instances).outerjoin(instances, instances.c.study_id == Study.id)
    if state:
        valid = {s.value for s in StudyState}
        if state not in valid:
            raise AdminError(f"invalid study state {state!r}; choose from {', '.join(sorted(valid))}")
        query = query.where(Study.state == StudyState(state))
    if since:
        query = query.where(Study.last_received_at >= since)
    rows = []
    for study, count in session.execute(query.order_by(Study.last_received_at.desc())).all():
        latest = session.scalars(
            select(Analysis).where(Analysis.study_id == study.id).order_by(Analysis.id.desc())
        ).first()
        rows.append(
            {
                "study_instance_uid": study.study_instance_uid,
                "state": study.state.value,
                "instances": count or 0,
                "last_received_at": _iso(study.last_received_at),
                "analysis_id": latest.id if latest else None,
                "analysis_state": latest.state.value if latest else None,
            }
        )
    return rows


def describe_study(session: Session, study_uid: str) -> dict[str, Any]:
    """Return a study's series, analyses, findings, reports and deliveries (no patient data)."""
    study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
    if study is None:
        raise AdminError(f"study {study_uid} not found; list studies with 'hclal admin studies'")
    series = [
        {
            "series_instance_uid": s.series_instance_uid,
            "modality": s.modality,
            "instances": session.scalar(select(func.count(Instance.id)).where(Instance.series_id == s.id)),
        }
        for s in study.series
    ]
    analyses = []
    for analysis in sorted(study.analyses, key=lambda a: a.id):
        findings = session.execute(
            select(Lesion, Finding).join(Finding).where(Lesion.analysis_id == analysis.id)
            .order_by(Lesion.segment_number, Lesion.component)
        ).all()
        reports = [
            {
                "report_id": r.id,
                "sop_instance_uid": r.sop_instance_uid,
                "predecessor": r.predecessor_sop_instance_uid,
                "deliveries": [
                    {"destination": d.destination_ae_title, "attempt": d.attempt, "status": d.status.value,
                     "dicom_status": d.dicom_status, "error": d.error}
                    for d in sorted(r.deliveries, key=lambda d: d.id)
                ],
            }
            for r in analysis.reports
        ]
        analyses.append(
            {
                "analysis_id": analysis.id,
                "state": analysis.state.value,
                "trigger": analysis.trigger,
                "error": analysis.error,
                "queued_at": _iso(analysis.queued_at),
                "report_written_at": _iso(analysis.report_written_at),
                "delivered_at": _iso(analysis.delivered_at),
                "findings": [
                    {"segment_number": lesion.segment_number, "component": lesion.component,
                     "site_id": finding.site_id, "site_name": finding.site_name,
                     "code_value": finding.code_value, "probability": round(finding.probability, 4),
                     "uncertain": finding.uncertain, "volume_ml": round(lesion.volume_ml, 3),
                     "suv_max": lesion.suv_max}
                    for lesion, finding in findings
                ],
                "reports": reports,
            }
        )
    return {"study_instance_uid": study.study_instance_uid, "state": study.state.value,
            "series": series, "analyses": analyses}


def list_failed(session: Session) -> list[dict[str, Any]]:
    """Return analyses that failed or whose report could not be delivered."""
    rows = session.execute(
        select(Analysis, Study.study_instance_uid)
        .join(Study)
        .where(Analysis.state.in_([AnalysisState.FAILED, AnalysisState.DELIVERY_FAILED]))
        .order_by(Analysis.id.desc())
    ).all()
    return [
        {"analysis_id": a.id, "study_instance_uid": uid, "state": a.state.value,
         "queued_at": _iso(a.queued_at), "error": a.error}
        for a, uid in rows
    ]


def latest_report_of(session: Session, analysis_id: int) -> Report:
    """Return the newest report of an analysis, or raise AdminError."""
    analysis = session.get(Analysis, analysis_id)
    if analysis is None:
        raise AdminError(f"analysis {analysis_id} not found; see 'hclal admin failed'")
    report = session.scalars(
        select(Report).where(Report.analysis_id == analysis_id).order_by(Report.id.desc())
    ).first()
    if report is None:
        raise AdminError(
            f"analysis {analysis_id} has no report (state {analysis.state.value}); "
            f"run it again with 'hclal admin requeue {analysis_id}'"
        )
    return report


def create_requeued_analysis(session: Session, analysis_id: int) -> Analysis:
    """Add a new queued analysis of the same study as ``analysis_id`` and return it.

    The earlier analysis and its report stay as they are, so the new report names
    the old one as its predecessor.
    """
    analysis = session.get(Analysis, analysis_id)
    if analysis is None:
        raise AdminError(f"analysis {analysis_id} not found; see 'hclal admin studies'")
    if analysis.state in (AnalysisState.QUEUED, AnalysisState.STARTED):
        raise AdminError(
            f"analysis {analysis_id} is {analysis.state.value}; wait for it to finish before requeueing"
        )
    again = Analysis(
        study_id=analysis.study_id,
        trigger=f"requeue:{analysis_id}",
        seg_series_uid=analysis.seg_series_uid,
        received_at=analysis.received_at,
        complete_at=analysis.complete_at,
    )
    session.add(again)
    session.flush()
    return again


__all__ = [
    "AdminError", "Delivery", "describe_study", "latest_report_of", "list_failed", "list_studies",
    "create_requeued_analysis",
]
