"""Every SQL query in docs/admin-queries.md runs on PostgreSQL and returns the expected rows."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from worker.db import session as db_session
from worker.db.models import (
    Analysis,
    AnalysisState,
    Delivery,
    DeliveryStatus,
    Event,
    Finding,
    Instance,
    Lesion,
    Report,
    Series,
    Study,
    StudyState,
    utcnow,
)

QUERIES_DOC = Path(__file__).resolve().parents[1] / "docs" / "admin-queries.md"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


def load_queries() -> dict[str, str]:
    """Return the SQL blocks of the admin guide keyed by their ``-- name:`` line."""
    blocks = re.findall(r"```sql\n(.*?)```", QUERIES_DOC.read_text(), flags=re.S)
    queries = {}
    for block in blocks:
        name = re.search(r"-- name: (\w+)", block).group(1)
        queries[name] = block
    return queries


def _finding(lesion: Lesion, site_id: str, probability: float, uncertain: bool) -> Finding:
    return Finding(
        lesion=lesion,
        site_id=site_id,
        site_name=site_id.replace("_", " "),
        laterality="none",
        code_value="10200004",
        code_scheme="SCT",
        code_meaning="Liver",
        probability=probability,
        uncertain=uncertain,
        coarse_topk=[[site_id, probability]],
        fine_topk=[[site_id, probability]],
    )


def fill_database(session: Session) -> None:
    """Write two studies: one delivered with two findings, one whose delivery failed."""
    now = utcnow()
    done = Study(study_instance_uid=STUDY_UID, state=StudyState.ANALYSED, patient_name="Doe^Jane")
    waiting = Study(study_instance_uid=STUDY_UID + ".2", state=StudyState.RECEIVING)
    for study, number in ((done, 1), (waiting, 2)):
        series = Series(study=study, series_instance_uid=f"{study.study_instance_uid}.{number}", modality="CT")
        for index in range(3):
            session.add(
                Instance(
                    series=series,
                    sop_instance_uid=f"{series.series_instance_uid}.{index}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    file_path=f"/spool/{index}.dcm",
                    size_bytes=1000,
                    sha256="0" * 64,
                    calling_ae_title="ORTHANC",
                )
            )
    delivered = Analysis(
        study=done,
        state=AnalysisState.DELIVERED,
        received_at=now - timedelta(seconds=10),
        complete_at=now - timedelta(seconds=8),
        started_at=now - timedelta(seconds=7),
        report_written_at=now - timedelta(seconds=3),
        delivered_at=now - timedelta(seconds=1),
    )
    failed = Analysis(study=done, state=AnalysisState.DELIVERY_FAILED, trigger="late_instance", error="peer refused")
    for number, (site, probability, uncertain) in enumerate(
        [("liver_segment_7", 0.91, False), ("lung_right_lower_lobe", 0.31, True)], start=1
    ):
        lesion = Lesion(
            analysis=delivered, segment_number=number, component=1, tracking_uid=f"2.25.{number}",
            centroid_x_mm=1.0, centroid_y_mm=2.0, centroid_z_mm=3.0, bbox_mm=[0, 0, 0, 1, 1, 1],
            volume_ml=2.5, voxels=100, suv_max=8.0, suv_mean=4.0, suv_peak=6.0, hu_mean=40.0,
        )
        session.add(_finding(lesion, site, probability, uncertain))
    first = Report(analysis=delivered, sop_instance_uid="2.25.100", series_instance_uid="2.25.101",
                   sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34", file_path="/reports/a.dcm")
    second = Report(analysis=failed, sop_instance_uid="2.25.200", series_instance_uid="2.25.101",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34", file_path="/reports/b.dcm",
                    predecessor_sop_instance_uid="2.25.100")
    session.add(Delivery(report=first, destination_ae_title="PACS", destination_host="127.0.0.1",
                         destination_port=4242, attempt=1, status=DeliveryStatus.SUCCESS, dicom_status=0))
    for attempt in (1, 2):
        session.add(Delivery(report=second, destination_ae_title="PACS", destination_host="127.0.0.1",
                             destination_port=4242, attempt=attempt, status=DeliveryStatus.TRANSIENT_FAILURE,
                             error="association rejected"))
    session.add(Event(kind="instance_conflict", study_instance_uid=STUDY_UID, sop_instance_uid="1.2.3",
                      message="same SOP Instance UID received with different bytes"))


@pytest.fixture(scope="module")
def queries() -> dict[str, str]:
    return load_queries()


def test_guide_has_ten_queries(queries: dict[str, str]) -> None:
    assert len(queries) >= 10


EXPECTED_ROWS = {
    "findings_per_study": 2,
    "studies_waiting": 1,
    "failed_analyses": 1,
    "send_failures_24h": 2,
    "latency_per_stage": 4,
    "counts_per_site": 2,
    "uncertain_findings": 1,
    "analyses_per_day": 2,
    "instances_per_calling_ae": 1,
    "report_chain": 2,
    "instance_conflicts": 1,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_admin_query_on_postgres(name: str, queries: dict[str, str], postgres_url: str) -> None:
    db_session.upgrade(postgres_url)
    engine = db_session.create_db_engine(postgres_url)
    with db_session.session_scope(engine) as session:
        fill_database(session)
    with engine.connect() as connection:
        rows = connection.execute(text(queries[name]), {"study_uid": STUDY_UID}).all()
    engine.dispose()
    assert len(rows) == EXPECTED_ROWS[name]


def test_latency_median_matches_timestamps(queries: dict[str, str], postgres_url: str) -> None:
    db_session.upgrade(postgres_url)
    engine = db_session.create_db_engine(postgres_url)
    with db_session.session_scope(engine) as session:
        fill_database(session)
    with engine.connect() as connection:
        rows = {row.stage: row.median_s for row in connection.execute(text(queries["latency_per_stage"]))}
    engine.dispose()
    assert rows["receive_to_complete"] == pytest.approx(2.0)
    assert rows["start_to_report"] == pytest.approx(4.0)
