"""Study completeness: SEG references in any arrival order, quiet period, late instances."""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, SegmentationStorage
from sqlalchemy import select, update

from dicom.network.spool import Spool
from tests.support.dicom_factory import ct_series, encoded, segmentation
from tests.support.receiver import identity_of, receiver_settings, running_receiver
from worker.completeness import CompletenessTracker, QuietPeriodMonitor, referenced_instances
from worker.config import load_settings
from worker.db.models import Analysis, AnalysisState, Event, Study, StudyState, utcnow
from worker.db.session import get_engine
from worker.ingest import InstanceStore


class Harness:
    """An instance store and a tracker on one database, collecting queued ids in ``queued``."""

    def __init__(self, tmp_path: Path, database_url: str, quiet_period: float = 30.0) -> None:
        self.settings = load_settings(
            data_dir=tmp_path / "data", database_url=database_url, quiet_period=quiet_period
        )
        self.engine = get_engine(database_url, auto_migrate=True)
        self.store = InstanceStore(self.engine, Spool(self.settings.spool_dir))
        self.queued: list[int] = []
        self.tracker = CompletenessTracker(self.engine, self.settings, self.queued.append)

    def receive(self, ds: Dataset) -> int | None:
        result = self.store.store(encoded(ds), identity_of(ds), "PACS")
        return self.tracker.instance_stored(result, ds)

    def analyses(self) -> list:
        with self.engine.connect() as connection:
            return connection.execute(select(Analysis).order_by(Analysis.id)).all()

    def study(self, study_uid: str):  # noqa: ANN201
        with self.engine.connect() as connection:
            return connection.execute(
                select(Study).where(Study.study_instance_uid == study_uid)
            ).one()


@pytest.fixture
def harness(tmp_path: Path, database_url: str) -> Harness:
    return Harness(tmp_path, database_url)


def test_references_from_both_modules() -> None:
    ct = ct_series(3)
    seg = segmentation(ct)
    expected = {ds.SOPInstanceUID for ds in ct}

    assert referenced_instances(seg) == expected
    del seg.ReferencedSeriesSequence
    assert referenced_instances(seg) == expected
    del seg.PerFrameFunctionalGroupsSequence
    assert referenced_instances(seg) == set()


@pytest.mark.parametrize("seg_position", [0, 2, 4], ids=["seg-first", "seg-middle", "seg-last"])
def test_queues_once_when_last_reference_arrives(harness: Harness, seg_position: int) -> None:
    ct = ct_series(4)
    seg = segmentation(ct)
    arrivals = list(ct)
    arrivals.insert(seg_position, seg)

    results = [harness.receive(ds) for ds in arrivals]

    assert results[:-1] == [None] * 4
    assert results[-1] is not None
    assert harness.queued == [results[-1]]
    (analysis,) = harness.analyses()
    assert analysis.id == results[-1]
    assert analysis.state == AnalysisState.QUEUED
    assert analysis.trigger == "complete"
    assert analysis.seg_series_uid == seg.SeriesInstanceUID
    assert analysis.received_at is not None
    assert analysis.complete_at >= analysis.received_at
    study = harness.study(seg.StudyInstanceUID)
    assert study.state == StudyState.COMPLETE
    assert study.completion_reason == "seg_references_stored"


def test_unreferenced_instance_does_not_complete(harness: Harness) -> None:
    ct = ct_series(3)
    seg = segmentation(ct[:2])
    pet_like = ct_series(1, study_uid=ct[0].StudyInstanceUID)[0]

    assert harness.receive(seg) is None
    assert harness.receive(pet_like) is None
    assert harness.receive(ct[2]) is None
    assert harness.receive(ct[0]) is None
    assert harness.queued == []
    assert harness.receive(ct[1]) is not None


def test_parallel_arrivals_queue_exactly_once(harness: Harness) -> None:
    ct = ct_series(40, size=8)
    seg = segmentation(ct)
    arrivals = ct + [seg]
    random.Random(3).shuffle(arrivals)
    chunks = [arrivals[i::4] for i in range(4)]

    threads = [
        threading.Thread(target=lambda part=part: [harness.receive(ds) for ds in part])
        for part in chunks
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(harness.queued) == 1
    assert len(harness.analyses()) == 1


def test_quiet_period_analyses_unresolved_seg(harness: Harness) -> None:
    ct = ct_series(2)
    seg = segmentation(ct)
    del seg.ReferencedSeriesSequence
    del seg.PerFrameFunctionalGroupsSequence
    for ds in [*ct, seg]:
        harness.receive(ds)
    study_uid = seg.StudyInstanceUID

    assert harness.tracker.check_quiet_studies(utcnow() + timedelta(seconds=29)) == []
    queued = harness.tracker.check_quiet_studies(utcnow() + timedelta(seconds=31))

    assert queued == harness.queued
    assert len(queued) == 1
    (analysis,) = harness.analyses()
    assert analysis.trigger == "quiet_period"
    assert analysis.seg_series_uid == seg.SeriesInstanceUID
    assert harness.study(study_uid).completion_reason == "quiet_period"
    assert harness.tracker.check_quiet_studies(utcnow() + timedelta(seconds=60)) == []


def test_quiet_period_records_study_without_seg(harness: Harness) -> None:
    ct = ct_series(2)
    for ds in ct:
        harness.receive(ds)

    queued = harness.tracker.check_quiet_studies(utcnow() + timedelta(seconds=31))

    assert queued == []
    assert harness.analyses() == []
    study = harness.study(ct[0].StudyInstanceUID)
    assert study.state == StudyState.COMPLETE
    assert study.completion_reason == "no_segmentation"
    with harness.engine.connect() as connection:
        assert connection.scalars(select(Event.kind)).all() == ["analysis_skipped"]


def test_quiet_period_monitor_thread(tmp_path: Path, sqlite_url: str) -> None:
    harness = Harness(tmp_path, sqlite_url, quiet_period=0.3)
    ct = ct_series(1)
    seg = segmentation(ct)
    seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[
        0
    ].ReferencedSOPInstanceUID = dicom_uid.generate_uid()
    del seg.PerFrameFunctionalGroupsSequence
    harness.receive(ct[0])
    harness.receive(seg)
    monitor = QuietPeriodMonitor(harness.tracker, interval=0.05)

    monitor.start()
    deadline = time.monotonic() + 10
    while not harness.queued and time.monotonic() < deadline:
        time.sleep(0.05)
    monitor.stop()

    assert len(harness.queued) == 1
    assert harness.analyses()[0].trigger == "quiet_period"


def test_late_instance_queues_reanalysis(harness: Harness) -> None:
    ct = ct_series(2)
    seg = segmentation(ct)
    first = [harness.receive(ds) for ds in [*ct, seg]][-1]
    late = ct_series(2, study_uid=ct[0].StudyInstanceUID)

    while_queued = harness.receive(late[0])
    with harness.engine.begin() as connection:
        connection.execute(update(Analysis).values(state=AnalysisState.STARTED))
    after_start = harness.receive(late[1])

    assert while_queued is None
    assert after_start is not None
    assert harness.queued == [first, after_start]
    assert [a.trigger for a in harness.analyses()] == ["complete", "late_instance"]


def test_resume_rebuilds_references(tmp_path: Path, database_url: str) -> None:
    before = Harness(tmp_path, database_url)
    ct = ct_series(3)
    seg = segmentation(ct)
    before.receive(ct[0])
    before.receive(seg)

    after = Harness(tmp_path, database_url)
    assert after.tracker.resume() == 1
    assert after.receive(ct[1]) is None
    assert after.receive(ct[2]) is not None
    assert len(after.queued) == 1
    assert before.queued == []


def test_enqueue_failure_recorded(tmp_path: Path, sqlite_url: str) -> None:
    harness = Harness(tmp_path, sqlite_url)

    def broken_queue(analysis_id: int) -> None:
        raise ConnectionError("broker unreachable")

    harness.tracker = CompletenessTracker(harness.engine, harness.settings, broken_queue)
    ct = ct_series(1)
    harness.receive(ct[0])
    analysis_id = harness.receive(segmentation(ct))

    assert analysis_id is not None
    assert harness.analyses()[0].state == AnalysisState.QUEUED
    with harness.engine.connect() as connection:
        event = connection.execute(select(Event).where(Event.kind == "enqueue_failed")).one()
    assert event.analysis_id == analysis_id
    assert "broker unreachable" in event.message


def test_scp_queues_when_seg_arrives_last(tmp_path: Path, sqlite_url: str) -> None:
    ct = ct_series(3)
    seg = segmentation(ct)
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage, dicom_uid.ExplicitVRLittleEndian)
    ae.add_requested_context(SegmentationStorage, dicom_uid.ExplicitVRLittleEndian)

    with running_receiver(receiver_settings(tmp_path / "data", sqlite_url)) as receiver:
        assoc = ae.associate("127.0.0.1", receiver.port, ae_title="HCLAL")
        queued_before_seg = []
        for ds in ct:
            assoc.send_c_store(ds)
            queued_before_seg.append(list(receiver.queued))
        status = assoc.send_c_store(seg)
        queued_after_seg = list(receiver.queued)
        assoc.release()

    assert queued_before_seg == [[], [], []]
    assert status.Status == 0x0000
    assert len(queued_after_seg) == 1
