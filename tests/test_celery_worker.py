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
from sqlalchemy import Engine, make_url, select

from dicom.network.scp import create_scp
from dicom.network.sender import dicom_files, send_files
from tests.support.celery_worker import (  # noqa: F401 - broker_url and worker_processes are fixtures
    ANALYSIS_TIMEOUT,
    FINAL_STATES,
    WorkerProcess,
    broker_url,
    count_rows,
    start_celery_worker,
    wait_for_analysis_state,
    worker_processes,
)
from tests.support.orthanc import OrthancServer, start_orthanc
from tests.support.receiver import receiver_settings
from tests.support.tcp_proxy import TcpProxy
from tests.test_pipeline import SUCCESS, StatusPacs
from worker.celery_app import get_celery_app
from worker.config import Destination, Settings
from worker.db.models import Analysis, AnalysisState, Delivery, DeliveryStatus, Finding, Lesion, Report
from worker.db.session import get_engine, session_scope

# Each test starts worker processes and runs at least one analysis: over 30 s on two cores.
pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

RUNNING_STATES = {AnalysisState.STARTED, AnalysisState.LOCALISED}
# Seconds before a task of a killed worker goes to another worker.
VISIBILITY_TIMEOUT = 5.0
ORTHANC_OUTAGE = 30.0


@pytest.fixture
def pacs() -> Iterator[StatusPacs]:
    server = StatusPacs([SUCCESS])
    yield server
    server.stop()


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


def truth_lesion_count(study: Path) -> int:
    return len(json.loads((study / "truth.json").read_text())["lesions"])


def delivery_rows(engine: Engine) -> list[tuple[str, int, DeliveryStatus]]:
    """Return ``(SOP Instance UID, attempt, status)`` of every ``delivery`` row in insertion order."""
    with session_scope(engine) as session:
        rows = session.scalars(select(Delivery).order_by(Delivery.id)).all()
        return [(row.sop_instance_uid, row.attempt, row.status) for row in rows]


def report_documents(engine: Engine) -> list[str]:
    """Return the SOP Instance UIDs of the only report and of its outline document, in sending order."""
    with session_scope(engine) as session:
        report = session.scalars(select(Report)).one()
        return [report.sop_instance_uid, report.outline_sop_instance_uid]


def delivered_once(engine: Engine) -> list[tuple[str, int, DeliveryStatus]]:
    """Return the ``delivery`` rows of a report whose two documents were each stored at the first attempt."""
    return [(uid, 1, DeliveryStatus.SUCCESS) for uid in report_documents(engine)]


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


def test_worker_analyses_and_delivers(tmp_path, postgres_url, broker_url, phantom_study, tiny_models, pacs, worker_processes):
    settings = worker_settings(tmp_path, postgres_url, broker_url, tiny_models, [pacs.destination])
    worker_processes.append(start_celery_worker(settings, tmp_path / "worker.log"))

    analysis_id = receive_study(settings, phantom_study)
    state = wait_for_analysis_state(get_engine(postgres_url), analysis_id, FINAL_STATES, ANALYSIS_TIMEOUT, worker_processes)

    engine = get_engine(postgres_url)
    assert state == AnalysisState.DELIVERED
    assert count_rows(engine, Report) == 1
    assert count_rows(engine, Lesion) == truth_lesion_count(phantom_study)
    assert count_rows(engine, Finding) == truth_lesion_count(phantom_study)
    assert delivery_rows(engine) == delivered_once(engine)
    assert [str(ds.SOPInstanceUID) for ds in pacs.received] == report_documents(engine)
    assert wait_until_acknowledged(broker_url) == 0

    # A deliver message that comes again (its worker died before the ack) sends nothing.
    with engine.connect() as connection:
        report_id = connection.scalar(select(Report.id))
    task_id = get_celery_app(settings).send_task("hclal.deliver", args=[report_id], queue="deliver").id
    finished = wait_for_log(worker_processes[0], f"hclal.deliver[{task_id}] succeeded")
    assert finished.endswith(f"'{AnalysisState.DELIVERED.value}'")
    assert delivery_rows(engine) == delivered_once(engine)
    assert len(pacs.received) == 2


def wait_for_log(process: WorkerProcess, text: str, timeout: float = 120.0) -> str:
    """Wait until the process logs a line that contains ``text``; return that line."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in process.log_text().splitlines() if text in line]
        if lines:
            return lines[0]
        assert process.is_running(), process.log_text()[-3000:]
        assert time.monotonic() < deadline, f"{process.name} did not log {text!r} within {timeout:.0f} s"
        time.sleep(0.2)


def test_killed_worker_task_completed_once(
    tmp_path, postgres_url, broker_url, phantom_study, tiny_models, pacs, worker_processes
):
    settings = worker_settings(tmp_path, postgres_url, broker_url, tiny_models, [pacs.destination])
    first = start_celery_worker(settings, tmp_path / "first-worker.log")
    worker_processes.append(first)
    engine = get_engine(postgres_url)

    analysis_id = receive_study(settings, phantom_study)
    wait_for_analysis_state(engine, analysis_id, RUNNING_STATES, ANALYSIS_TIMEOUT, worker_processes)
    first.kill()

    assert count_rows(engine, Report) == 0, "the first worker finished before it was killed"
    second = start_celery_worker(settings, tmp_path / "second-worker.log")
    worker_processes.append(second)
    state = wait_for_analysis_state(engine, analysis_id, FINAL_STATES, ANALYSIS_TIMEOUT, [second])

    assert state == AnalysisState.DELIVERED
    assert f"analysis {analysis_id} restarted" in second.log_text()
    assert count_rows(engine, Report) == 1
    assert count_rows(engine, Lesion, Lesion.analysis_id == analysis_id) == truth_lesion_count(phantom_study)
    assert count_rows(engine, Lesion) == truth_lesion_count(phantom_study)
    assert count_rows(engine, Finding) == truth_lesion_count(phantom_study)
    assert delivery_rows(engine) == delivered_once(engine)
    assert [str(ds.SOPInstanceUID) for ds in pacs.received] == report_documents(engine)
    assert wait_until_acknowledged(broker_url) == 0


def test_database_outage_retried(tmp_path, postgres_url, broker_url, phantom_study, tiny_models, pacs, worker_processes):
    proxy = TcpProxy(target_port=make_url(postgres_url).port)
    proxy.open()
    try:
        settings = worker_settings(tmp_path, postgres_url, broker_url, tiny_models, [pacs.destination])
        # The worker reaches PostgreSQL through the proxy, the SCP in the test directly.
        proxied_url = make_url(postgres_url).set(port=proxy.port).render_as_string(hide_password=False)
        worker = start_celery_worker(settings.model_copy(update={"database_url": proxied_url}), tmp_path / "worker.log")
        worker_processes.append(worker)

        proxy.close()
        analysis_id = receive_study(settings, phantom_study)
        retried = wait_for_log(worker, "hclal.localize[")
        wait_for_log(worker, "retry: Retry in")
        proxy.open()
        state = wait_for_analysis_state(
            get_engine(postgres_url), analysis_id, FINAL_STATES, ANALYSIS_TIMEOUT, worker_processes
        )
    finally:
        proxy.close()

    engine = get_engine(postgres_url)
    assert "received" in retried
    assert "OperationalError" in wait_for_log(worker, "retry: Retry in")
    assert state == AnalysisState.DELIVERED
    assert count_rows(engine, Report) == 1
    assert count_rows(engine, Lesion) == truth_lesion_count(phantom_study)
    assert delivery_rows(engine) == delivered_once(engine)
    assert [str(ds.SOPInstanceUID) for ds in pacs.received] == report_documents(engine)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    server = start_orthanc(tmp_path / "pacs", {}, aet="ORTHANC")
    yield server
    server.stop()


def orthanc_holds(server: OrthancServer, sop_instance_uid: str) -> bool:
    found = server.request("POST", "/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}})
    return len(found) == 1


@pytest.mark.orthanc
def test_delivery_survives_orthanc_outage(
    tmp_path, postgres_url, broker_url, phantom_study, tiny_models, orthanc, worker_processes
):
    destination = Destination(ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port)
    # Retries 1, 2, 4, 8, 16 and 32 s apart: the last attempts fall after the outage ends.
    settings = worker_settings(
        tmp_path, postgres_url, broker_url, tiny_models, [destination],
        delivery_max_attempts=7, delivery_backoff=1.0, network_timeout=10.0,
    )
    worker_processes.append(start_celery_worker(settings, tmp_path / "worker.log"))
    engine = get_engine(postgres_url)

    analysis_id = receive_study(settings, phantom_study)
    wait_for_analysis_state(engine, analysis_id, RUNNING_STATES, ANALYSIS_TIMEOUT, worker_processes)
    orthanc.stop()
    stopped_at = time.monotonic()
    wait_for_failed_attempt(engine, ANALYSIS_TIMEOUT, worker_processes)
    time.sleep(max(ORTHANC_OUTAGE - (time.monotonic() - stopped_at), 0))
    orthanc.restart()
    state = wait_for_analysis_state(engine, analysis_id, FINAL_STATES, ANALYSIS_TIMEOUT, worker_processes)

    assert state == AnalysisState.DELIVERED
    report, outline = report_documents(engine)
    rows = [(attempt, status) for uid, attempt, status in delivery_rows(engine) if uid == report]
    assert len(rows) >= 2
    assert [attempt for attempt, _ in rows] == list(range(1, len(rows) + 1))
    assert {status for _, status in rows[:-1]} == {DeliveryStatus.TRANSIENT_FAILURE}
    assert rows[-1][1] == DeliveryStatus.SUCCESS
    assert [(attempt, status) for uid, attempt, status in delivery_rows(engine) if uid == outline] == [
        (1, DeliveryStatus.SUCCESS)
    ]
    assert orthanc_holds(orthanc, report)
    assert orthanc_holds(orthanc, outline)


def wait_for_failed_attempt(engine: Engine, timeout: float, worker_processes: list[WorkerProcess]) -> None:
    """Wait until a ``delivery`` row records a transient failure (the PACS is down)."""
    deadline = time.monotonic() + timeout
    while count_rows(engine, Delivery, Delivery.status == DeliveryStatus.TRANSIENT_FAILURE) == 0:
        assert all(worker.is_running() for worker in worker_processes), worker_processes[0].log_text()[-3000:]
        assert time.monotonic() < deadline, f"no failed delivery attempt within {timeout:.0f} s"
        time.sleep(0.2)
