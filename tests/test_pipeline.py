"""The analysis pipeline in-process: received study -> findings, SR, delivery rows.

The study arrives through the real SCP; reports go to a real storage SCP (a
pynetdicom AE in the test, answering the status the test chooses).
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from sqlalchemy import func, select

from dicom.network.sender import dicom_files, send_files
from dicom.sr import SrSopClass
from tests.support.receiver import free_port, receiver_settings, running_receiver
from tests.support.validate_dicom import validate
from worker.config import Destination
from worker.db.models import Analysis, AnalysisState, Delivery, DeliveryStatus, Finding, Lesion, Report
from worker.db.session import session_scope
from worker.pipeline import run_analysis
from worker.delivery import deliver_report

SUCCESS = 0x0000
PROCESSING_FAILURE = 0xC000


class StatusPacs:
    """A storage SCP on 127.0.0.1 that answers each C-STORE with the next status of a list."""

    def __init__(self, statuses: list[int], sop_classes: tuple[str, ...] | None = None) -> None:
        self.statuses = list(statuses)
        self.received: list[pydicom.Dataset] = []
        self.port = free_port()
        ae = AE(ae_title="TESTPACS")
        ae.add_supported_context(Verification)
        for sop_class in sop_classes or tuple(s.uid for s in SrSopClass):
            ae.add_supported_context(sop_class)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event: evt.Event) -> int:
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if status == SUCCESS:
            self.received.append(event.dataset)
        return status

    @property
    def destination(self) -> Destination:
        return Destination(ae_title="TESTPACS", host="127.0.0.1", port=self.port)

    def stop(self) -> None:
        self.server.shutdown()


def receive_study(settings, study: Path) -> list[int]:
    """Send the study to a real SCP and return the analysis ids it queued."""
    with running_receiver(settings) as receiver:
        send_files(dicom_files(study), "127.0.0.1", receiver.port, settings.ae_title)
        return list(receiver.queued)


@pytest.fixture
def pacs():
    server = StatusPacs([SUCCESS])
    yield server
    server.stop()


def make_settings(tmp_path: Path, database_url: str, tiny_models, destinations) -> object:
    coarse, fine = tiny_models
    return receiver_settings(
        tmp_path / "data", database_url, coarse_model=coarse, fine_model=fine,
        destinations=destinations, delivery_backoff=0.05, delivery_max_attempts=3,
    )


def count(engine, model) -> int:
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(model))


def test_study_reported_and_delivered(tmp_path, database_url, phantom_study, tiny_models, pacs):
    from worker.db.session import get_engine

    settings = make_settings(tmp_path, database_url, tiny_models, [pacs.destination])
    queued = receive_study(settings, phantom_study)
    assert len(queued) == 1

    report_id = run_analysis(settings, queued[0])
    assert deliver_report(settings, report_id) == AnalysisState.DELIVERED

    engine = get_engine(settings.effective_database_url)
    truth = json.loads((phantom_study / "truth.json").read_text())
    assert count(engine, Lesion) == len(truth["lesions"])
    assert count(engine, Finding) == len(truth["lesions"])
    with session_scope(engine) as session:
        analysis = session.get(Analysis, queued[0])
        assert analysis.state == AnalysisState.DELIVERED
        for stage in ("started_at", "lesions_extracted_at", "localised_at", "report_written_at", "delivered_at"):
            assert getattr(analysis, stage) is not None, stage
        assert analysis.suv_factor is not None
        report = session.get(Report, report_id)
        sr_path = Path(report.file_path)
        rows = session.scalars(select(Delivery)).all()
        documents = [report.sop_instance_uid, report.outline_sop_instance_uid]
        outline_path = Path(report.outline_file_path)
    assert [(row.sop_instance_uid, row.attempt, row.status) for row in rows] == [
        (uid, 1, DeliveryStatus.SUCCESS) for uid in documents
    ]
    assert [str(ds.SOPInstanceUID) for ds in pacs.received] == documents
    ok, output = validate([sr_path, outline_path])
    assert ok, output


def test_rerun_writes_no_second_report(tmp_path, sqlite_url, phantom_study, tiny_models, pacs):
    from worker.db.session import get_engine

    settings = make_settings(tmp_path, sqlite_url, tiny_models, [pacs.destination])
    analysis_id = receive_study(settings, phantom_study)[0]
    first = run_analysis(settings, analysis_id)
    second = run_analysis(settings, analysis_id)
    engine = get_engine(settings.effective_database_url)
    assert second == first
    assert count(engine, Report) == 1
    assert count(engine, Lesion) == 3


def test_reanalysis_references_predecessor(tmp_path, sqlite_url, phantom_study, tiny_models, pacs):
    from worker.admin import create_requeued_analysis
    from worker.db.session import get_engine

    settings = make_settings(tmp_path, sqlite_url, tiny_models, [pacs.destination])
    analysis_id = receive_study(settings, phantom_study)[0]
    first_report = run_analysis(settings, analysis_id)
    engine = get_engine(settings.effective_database_url)
    with session_scope(engine) as session:
        again = create_requeued_analysis(session, analysis_id).id
    second_report = run_analysis(settings, again)
    with session_scope(engine) as session:
        old = session.get(Report, first_report)
        new = session.get(Report, second_report)
        old_uid, new_path = old.sop_instance_uid, Path(new.file_path)
        assert new.predecessor_sop_instance_uid == old_uid
        old_tracking = sorted(session.scalars(select(Lesion.tracking_uid).where(Lesion.analysis_id == analysis_id)))
        new_tracking = sorted(session.scalars(select(Lesion.tracking_uid).where(Lesion.analysis_id == again)))
    sr = pydicom.dcmread(new_path)
    assert sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == old_uid
    assert old_tracking == new_tracking


def test_permanent_failure_not_retried(tmp_path, sqlite_url, phantom_study, tiny_models):
    from worker.db.session import get_engine

    refusing = StatusPacs([PROCESSING_FAILURE])
    try:
        settings = make_settings(tmp_path, sqlite_url, tiny_models, [refusing.destination])
        analysis_id = receive_study(settings, phantom_study)[0]
        report_id = run_analysis(settings, analysis_id)
        assert deliver_report(settings, report_id) == AnalysisState.DELIVERY_FAILED
    finally:
        refusing.stop()
    engine = get_engine(settings.effective_database_url)
    with session_scope(engine) as session:
        rows = session.scalars(select(Delivery)).all()
        assert [(r.attempt, r.status, r.dicom_status) for r in rows] == [
            (1, DeliveryStatus.PERMANENT_FAILURE, PROCESSING_FAILURE)
        ]
        analysis = session.get(Analysis, analysis_id)
        assert analysis.state == AnalysisState.DELIVERY_FAILED
        assert "TESTPACS" in analysis.error


def test_fallback_sop_class_sent(tmp_path, sqlite_url, phantom_study, tiny_models):
    enhanced_only = StatusPacs([SUCCESS], sop_classes=(SrSopClass.ENHANCED.uid,))
    try:
        settings = make_settings(tmp_path, sqlite_url, tiny_models, [enhanced_only.destination])
        analysis_id = receive_study(settings, phantom_study)[0]
        report_id = run_analysis(settings, analysis_id)
        assert deliver_report(settings, report_id) == AnalysisState.DELIVERED
    finally:
        enhanced_only.stop()
    assert [str(ds.SOPClassUID) for ds in enhanced_only.received] == [SrSopClass.ENHANCED.uid] * 2
    assert [ds.SeriesDescription for ds in enhanced_only.received] == ["HCL-AL lesion sites", "HCL-AL lesion outlines"]


def test_resend_continues_attempt_numbers(tmp_path, sqlite_url, phantom_study, tiny_models, pacs):
    from typer.testing import CliRunner

    from worker.cli import app
    from worker.db.session import get_engine

    settings = make_settings(tmp_path, sqlite_url, tiny_models, [pacs.destination])
    analysis_id = receive_study(settings, phantom_study)[0]
    report_id = run_analysis(settings, analysis_id)
    deliver_report(settings, report_id)
    env = {
        "HCLAL_DATA_DIR": str(settings.data_dir), "HCLAL_DATABASE_URL": sqlite_url,
        "HCLAL_DESTINATIONS": json.dumps([pacs.destination.model_dump()]),
    }
    result = CliRunner().invoke(app, ["admin", "resend", str(analysis_id), "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["state"] == "delivered"
    with session_scope(get_engine(sqlite_url)) as session:
        report = session.get(Report, report_id)
        attempts = session.execute(select(Delivery.sop_instance_uid, Delivery.attempt).order_by(Delivery.id)).all()
        assert attempts == [(report.sop_instance_uid, 1), (report.outline_sop_instance_uid, 1),
                            (report.sop_instance_uid, 2), (report.outline_sop_instance_uid, 2)]
    assert len(pacs.received) == 4
    assert pacs.received[0].SOPInstanceUID == pacs.received[2].SOPInstanceUID


def test_broken_study_fails_with_reason(tmp_path, sqlite_url, phantom_study, tiny_models, pacs):
    from worker.db.session import get_engine

    settings = make_settings(tmp_path, sqlite_url, tiny_models, [pacs.destination])
    analysis_id = receive_study(settings, phantom_study)[0]
    engine = get_engine(settings.effective_database_url)
    assert count(engine, Lesion) == 0
    seg_file = next(settings.spool_dir.rglob("*.dcm"))
    for path in settings.spool_dir.rglob("*.dcm"):
        if pydicom.dcmread(path, stop_before_pixels=True).Modality == "SEG":
            seg_file = path
    kept = seg_file.read_bytes()
    seg_file.write_bytes(b"not a DICOM file")
    assert run_analysis(settings, analysis_id) is None
    with session_scope(engine) as session:
        analysis = session.get(Analysis, analysis_id)
        assert analysis.state == AnalysisState.FAILED
        assert analysis.error
    assert count(engine, Report) == 0
    seg_file.write_bytes(kept)


def test_requeue_command_reports_new_run(tmp_path, sqlite_url, phantom_study, tiny_models, pacs):
    from typer.testing import CliRunner

    from worker.cli import app
    from worker.db.session import get_engine

    settings = make_settings(tmp_path, sqlite_url, tiny_models, [pacs.destination])
    analysis_id = receive_study(settings, phantom_study)[0]
    run_analysis(settings, analysis_id)
    coarse, fine = tiny_models
    env = {
        "HCLAL_DATA_DIR": str(settings.data_dir), "HCLAL_DATABASE_URL": sqlite_url,
        "HCLAL_COARSE_MODEL": str(coarse), "HCLAL_FINE_MODEL": str(fine),
        "HCLAL_DESTINATIONS": json.dumps([pacs.destination.model_dump()]),
    }
    result = CliRunner().invoke(app, ["admin", "requeue", str(analysis_id), "--json"], env=env)
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)[0]
    assert row["previous_analysis_id"] == analysis_id
    assert row["state"] == "delivered"
    with session_scope(get_engine(sqlite_url)) as session:
        assert session.get(Analysis, row["analysis_id"]).state == AnalysisState.DELIVERED


def newer_seg_folder(study: Path, folder: Path) -> tuple[str, str]:
    """Write a copy of the study's SEG as a new, newer series; return (old, new) series UIDs."""
    from pydicom.uid import generate_uid

    seg_file = next(
        path for path in dicom_files(study)
        if pydicom.dcmread(path, stop_before_pixels=True).Modality == "SEG"
    )
    seg = pydicom.dcmread(seg_file)
    old_uid = str(seg.SeriesInstanceUID)
    seg.SeriesInstanceUID = generate_uid()
    seg.SOPInstanceUID = seg.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    seg.ContentDate = str(int(seg.ContentDate) + 1)
    folder.mkdir()
    seg.save_as(folder / "seg.dcm")
    return old_uid, str(seg.SeriesInstanceUID)


def test_requeue_keeps_its_seg(tmp_path, sqlite_url, phantom_study, tiny_models, pacs):
    """A requeued analysis measures its own SEG even after a newer SEG arrived."""
    from worker.admin import create_requeued_analysis
    from worker.db.session import get_engine

    settings = make_settings(tmp_path, sqlite_url, tiny_models, [pacs.destination])
    first = receive_study(settings, phantom_study)[0]
    run_analysis(settings, first)
    first_seg, newer_seg = newer_seg_folder(phantom_study, tmp_path / "newer")
    late = receive_study(settings, tmp_path / "newer")
    engine = get_engine(settings.effective_database_url)
    with session_scope(engine) as session:
        again = create_requeued_analysis(session, first).id

    run_analysis(settings, again)
    run_analysis(settings, late[0])

    with session_scope(engine) as session:
        assert [session.get(Analysis, late[0]).seg_series_uid] == [newer_seg]
        assert session.get(Analysis, late[0]).state == AnalysisState.REPORTED
        assert session.get(Analysis, again).seg_series_uid == first_seg
        assert session.get(Analysis, again).state == AnalysisState.REPORTED


def test_queued_analysis_takes_late_seg(tmp_path, sqlite_url, phantom_study, tiny_models, pacs):
    """A SEG arriving while the study's analysis still waits becomes that analysis's SEG."""
    from worker.db.session import get_engine

    settings = make_settings(tmp_path, sqlite_url, tiny_models, [pacs.destination])
    first = receive_study(settings, phantom_study)[0]
    _, newer_seg = newer_seg_folder(phantom_study, tmp_path / "newer")
    late = receive_study(settings, tmp_path / "newer")

    run_analysis(settings, first)

    engine = get_engine(settings.effective_database_url)
    with session_scope(engine) as session:
        assert late == []
        assert count(engine, Analysis) == 1
        analysis = session.get(Analysis, first)
        assert analysis.seg_series_uid == newer_seg
        assert analysis.state == AnalysisState.REPORTED
