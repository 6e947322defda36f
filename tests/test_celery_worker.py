"""Analyses run by real Celery worker processes on a Redis broker and PostgreSQL.

The study arrives through the real SCP, which sends ``hclal.localize`` to Redis.
``python -m worker worker`` processes run it and send the reports to a
real storage SCP: a pynetdicom AE in the test, or Orthanc.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, func, select

from dicom.network.scp import create_scp
from dicom.network.sender import dicom_files, send_files
from tests.support.celery_worker import (
    WorkerProcess,
    claimed_redis_database,
    start_celery_worker,
    wait_for_analysis_state,
)
from tests.support.orthanc import OrthancServer, start_orthanc
from tests.support.receiver import receiver_settings
from tests.test_pipeline import SUCCESS, StatusPacs
from worker.config import Destination, Settings
from worker.db.models import Analysis, AnalysisState, Delivery, DeliveryStatus, Finding, Lesion, Report
from worker.db.session import get_engine, session_scope

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

FINAL_STATES = {AnalysisState.DELIVERED, AnalysisState.DELIVERY_FAILED, AnalysisState.FAILED}
RUNNING_STATES = {AnalysisState.STARTED, AnalysisState.LOCALISED}
# Generous: two shared CPU cores may be busy with other work while a test runs.
ANALYSIS_TIMEOUT = 600.0
# Seconds before a task of a killed worker goes to another worker.
VISIBILITY_TIMEOUT = 5.0
ORTHANC_OUTAGE = 30.0


@pytest.fixture
def broker_url() -> Iterator[str]:
    with claimed_redis_database() as url:
        yield url


@pytest.fixture
def pacs() -> Iterator[StatusPacs]:
    server = StatusPacs([SUCCESS])
    yield server
    server.stop()


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """Worker processes the test starts; every one still running is stopped at teardown."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop(grace_period=5.0)


def worker_settings(
    tmp_path: Path, database_url: str, broker_url: str, tiny_models, destinations: list[Destination], **overrides
) -> Settings:  # noqa: ANN001
    """Settings shared by the SCP in the test process and the worker processes."""
    coarse, fine = tiny_models
    values = {
        "broker_url": broker_url,
        "coarse_model": coarse,
        "fine_model": fine,
        "destinations": destinations,
        "broker_visibility_timeout": VISIBILITY_TIMEOUT,
        "delivery_backoff": 0.05,
        "delivery_max_attempts": 3,
        "log_level": "INFO",
    }
    values.update(overrides)
    settings = receiver_settings(tmp_path / "data", database_url, **values)
    # The worker checks the schema at start; it does not migrate PostgreSQL itself.
    get_engine(settings.effective_database_url, auto_migrate=True)
    return settings


def receive_study(settings: Settings, study: Path) -> int:
    """Send the study to the real SCP, whose tracker queues it on Redis; return the analysis id."""
    scp = create_scp(settings)
    scp.start()
    try:
        send_files(dicom_files(study), "127.0.0.1", scp.port, settings.ae_title)
    finally:
        scp.stop()
    with scp.store.engine.connect() as connection:
        ids = connection.scalars(select(Analysis.id)).all()
    assert len(ids) == 1, f"expected one queued analysis, found {ids}"
    return ids[0]


def count(engine: Engine, model, *where) -> int:  # noqa: ANN001
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(model).where(*where))


def truth_lesion_count(study: Path) -> int:
    return len(json.loads((study / "truth.json").read_text())["lesions"])


def delivery_rows(engine: Engine) -> list[tuple[int, DeliveryStatus]]:
    with session_scope(engine) as session:
        rows = session.scalars(select(Delivery).order_by(Delivery.attempt)).all()
        return [(row.attempt, row.status) for row in rows]


def report_uid(engine: Engine) -> str:
    with engine.connect() as connection:
        return connection.scalar(select(Report.sop_instance_uid))


def wait_until_acknowledged(broker_url: str, timeout: float = 60.0) -> int:
    """Wait until Redis has no unacknowledged task message; return how many are left."""
    client = redis.Redis.from_url(broker_url)
    try:
        deadline = time.monotonic() + timeout
        while client.hlen("unacked") and time.monotonic() < deadline:
            time.sleep(0.2)
        return client.hlen("unacked")
    finally:
        client.close()


def test_worker_analyses_and_delivers(tmp_path, postgres_url, broker_url, phantom_study, tiny_models, pacs, workers):
    settings = worker_settings(tmp_path, postgres_url, broker_url, tiny_models, [pacs.destination])
    workers.append(start_celery_worker(settings, tmp_path / "worker.log"))

    analysis_id = receive_study(settings, phantom_study)
    state = wait_for_analysis_state(get_engine(postgres_url), analysis_id, FINAL_STATES, ANALYSIS_TIMEOUT, workers)

    engine = get_engine(postgres_url)
    assert state == AnalysisState.DELIVERED
    assert count(engine, Report) == 1
    assert count(engine, Lesion) == truth_lesion_count(phantom_study)
    assert count(engine, Finding) == truth_lesion_count(phantom_study)
    assert delivery_rows(engine) == [(1, DeliveryStatus.SUCCESS)]
    assert [str(ds.SOPInstanceUID) for ds in pacs.received] == [report_uid(engine)]
    assert wait_until_acknowledged(broker_url) == 0


def test_killed_worker_task_completed_once(
    tmp_path, postgres_url, broker_url, phantom_study, tiny_models, pacs, workers
):
    settings = worker_settings(tmp_path, postgres_url, broker_url, tiny_models, [pacs.destination])
    first = start_celery_worker(settings, tmp_path / "first-worker.log")
    workers.append(first)
    engine = get_engine(postgres_url)

    analysis_id = receive_study(settings, phantom_study)
    wait_for_analysis_state(engine, analysis_id, RUNNING_STATES, ANALYSIS_TIMEOUT, workers)
    first.kill()

    assert count(engine, Report) == 0, "the first worker finished before it was killed"
    second = start_celery_worker(settings, tmp_path / "second-worker.log")
    workers.append(second)
    state = wait_for_analysis_state(engine, analysis_id, FINAL_STATES, ANALYSIS_TIMEOUT, [second])

    assert state == AnalysisState.DELIVERED
    assert f"analysis {analysis_id} restarted" in second.log_text()
    assert count(engine, Report) == 1
    assert count(engine, Lesion, Lesion.analysis_id == analysis_id) == truth_lesion_count(phantom_study)
    assert count(engine, Lesion) == truth_lesion_count(phantom_study)
    assert count(engine, Finding) == truth_lesion_count(phantom_study)
    assert delivery_rows(engine) == [(1, DeliveryStatus.SUCCESS)]
    assert [str(ds.SOPInstanceUID) for ds in pacs.received] == [report_uid(engine)]
    assert wait_until_acknowledged(broker_url) == 0


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    server = start_orthanc(tmp_path / "pacs", {}, aet="ORTHANC")
    yield server
    server.stop()


def orthanc_holds(server: OrthancServer, sop_instance_uid: str) -> bool:
    found = server.request("POST", "/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}})
    return len(found) == 1


@pytest.mark.slow
@pytest.mark.orthanc
def test_delivery_survives_orthanc_outage(
    tmp_path, postgres_url, broker_url, phantom_study, tiny_models, orthanc, workers
):
    destination = Destination(ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port)
    # Retries 1, 2, 4, 8, 16 and 32 s apart: the last attempts fall after the outage ends.
    settings = worker_settings(
        tmp_path, postgres_url, broker_url, tiny_models, [destination],
        delivery_max_attempts=7, delivery_backoff=1.0, network_timeout=10.0,
    )
    workers.append(start_celery_worker(settings, tmp_path / "worker.log"))
    engine = get_engine(postgres_url)

    analysis_id = receive_study(settings, phantom_study)
    wait_for_analysis_state(engine, analysis_id, RUNNING_STATES, ANALYSIS_TIMEOUT, workers)
    orthanc.stop()
    stopped_at = time.monotonic()
    wait_for_failed_attempt(engine, ANALYSIS_TIMEOUT, workers)
    time.sleep(max(ORTHANC_OUTAGE - (time.monotonic() - stopped_at), 0))
    orthanc.restart()
    state = wait_for_analysis_state(engine, analysis_id, FINAL_STATES, ANALYSIS_TIMEOUT, workers)

    assert state == AnalysisState.DELIVERED
    rows = delivery_rows(engine)
    assert len(rows) >= 2
    assert [attempt for attempt, _ in rows] == list(range(1, len(rows) + 1))
    assert {status for _, status in rows[:-1]} == {DeliveryStatus.TRANSIENT_FAILURE}
    assert rows[-1][1] == DeliveryStatus.SUCCESS
    assert orthanc_holds(orthanc, report_uid(engine))


def wait_for_failed_attempt(engine: Engine, timeout: float, workers: list[WorkerProcess]) -> None:
    """Wait until a ``delivery`` row records a transient failure (the PACS is down)."""
    deadline = time.monotonic() + timeout
    while count(engine, Delivery, Delivery.status == DeliveryStatus.TRANSIENT_FAILURE) == 0:
        assert all(worker.is_running() for worker in workers), workers[0].log_text()[-3000:]
        assert time.monotonic() < deadline, f"no failed delivery attempt within {timeout:.0f} s"
        time.sleep(0.2)
