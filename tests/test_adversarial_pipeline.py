"""Adversarial checks of the analysis tasks: redelivered messages and malformed patient data.

Celery acknowledges ``hclal.localize`` late, so a worker killed after it
committed the report but before the acknowledgement gets its message delivered
again. The task body is :func:`worker.tasks.analyse_and_deliver`, so calling it
twice is what the second worker does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import func, select

from dicom.network.sender import dicom_files, send_files
from tests.support.receiver import free_port, scp_command
from tests.test_pipeline import StatusPacs, SUCCESS, make_settings, receive_study
from worker.db.models import Analysis, AnalysisState, Delivery, Report
from worker.db.session import get_engine, session_scope
from worker.pipeline import run_analysis
from worker.tasks import analyse_and_deliver


@pytest.mark.slow
def test_redelivered_localize_sends_once(tmp_path, sqlite_url, phantom_study, tiny_models) -> None:
    pacs = StatusPacs([SUCCESS])
    try:
        settings = make_settings(tmp_path, sqlite_url, tiny_models, [pacs.destination])
        analysis_id = receive_study(settings, phantom_study)[0]

        first = analyse_and_deliver(settings, analysis_id)
        redelivered = analyse_and_deliver(settings, analysis_id)
        received = [str(ds.SOPInstanceUID) for ds in pacs.received]
    finally:
        pacs.stop()

    engine = get_engine(settings.effective_database_url)
    with engine.connect() as connection:
        reports = connection.scalar(select(func.count()).select_from(Report))
        deliveries = connection.scalar(select(func.count()).select_from(Delivery))
    assert redelivered == first
    assert reports == 1
    assert len(received) == 1, f"the PACS received the SR {len(received)} times: {received}"
    assert deliveries == 1


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_invalid_birth_date_analysed(
    tmp_path, sqlite_url, phantom_study, tiny_models, caplog: pytest.LogCaptureFixture
) -> None:
    # DA allows only YYYYMMDD (PS3.5 6.2), but PACS exports often contain hyphenated
    # dates. The SCP stores such instances with Success, so the analysis must cope too.
    study = tmp_path / "study"
    shutil.copytree(phantom_study, study)
    for path in study.rglob("*.dcm"):
        dataset = pydicom.dcmread(path)
        dataset.PatientBirthDate = "1970-01-01"
        dataset.save_as(path)
    settings = make_settings(tmp_path, sqlite_url, tiny_models, [])
    analysis_id = receive_study(settings, study)[0]

    # Only what the worker logs counts: drop the records of this test's own reads and writes.
    caplog.clear()
    with caplog.at_level(logging.INFO), contextlib.suppress(ValueError):
        # A ValueError is what a failed analysis re-raises; its row is checked below.
        run_analysis(settings, analysis_id)

    with session_scope(get_engine(settings.effective_database_url)) as session:
        analysis = session.get(Analysis, analysis_id)
        state, error = analysis.state, analysis.error
    assert "1970-01-01" not in caplog.text
    assert "1970-01-01" not in (error or "")
    assert state == AnalysisState.REPORTED, error


def _start_scp(port: int, environment: dict[str, str], log: Path) -> subprocess.Popen:
    """Start ``hclal scp`` and return once it answers C-ECHO."""
    with log.open("a") as stream:
        process = subprocess.Popen(
            scp_command(port, "HCLAL"), env=environment, stdout=stream, stderr=stream
        )
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        assoc = ae.associate("127.0.0.1", port, ae_title="HCLAL")
        if assoc.is_established:
            assoc.release()
            return process
        time.sleep(0.5)
    process.kill()
    process.wait()
    raise AssertionError(f"hclal scp did not start; see {log}")


def _analysis_state(database: Path) -> tuple[str | None, int]:
    """Return the state of the first analysis (None if there is none) and the report count."""
    engine = get_engine(f"sqlite:///{database}", auto_migrate=False)
    with engine.connect() as connection:
        state = connection.scalar(select(Analysis.state).order_by(Analysis.id).limit(1))
        reports = connection.scalar(select(func.count()).select_from(Report))
    return (state.value if state is not None else None), reports


@pytest.mark.slow
def test_killed_in_process_analysis_redone(tmp_path, phantom_study, tiny_models) -> None:
    # Without HCLAL_BROKER_URL the SCP process runs the analyses, so its restart is the
    # only "other worker" there is.
    coarse, fine = tiny_models
    database = tmp_path / "data" / "hclal.sqlite3"
    environment = {name: value for name, value in os.environ.items() if not name.startswith("HCLAL_")}
    environment.update(
        HCLAL_DATA_DIR=str(tmp_path / "data"),
        HCLAL_COARSE_MODEL=str(coarse),
        HCLAL_FINE_MODEL=str(fine),
    )
    port = free_port()
    log = tmp_path / "scp.log"

    first = _start_scp(port, environment, log)
    try:
        send_files(dicom_files(phantom_study), "127.0.0.1", port, "HCLAL")
        deadline = time.monotonic() + 120
        running = {AnalysisState.STARTED.value, AnalysisState.LOCALISED.value}
        while _analysis_state(database)[0] not in running:
            assert time.monotonic() < deadline, "the analysis never started"
            time.sleep(0.2)
    finally:
        first.kill()
        first.wait()
    state_after_kill = _analysis_state(database)

    second = _start_scp(port, environment, log)
    try:
        deadline = time.monotonic() + 240
        finished = {AnalysisState.REPORTED.value, AnalysisState.FAILED.value}
        while _analysis_state(database)[0] not in finished and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        second.terminate()
        second.wait(timeout=60)
    final_state, reports = _analysis_state(database)

    assert state_after_kill[0] in running
    assert state_after_kill[1] == 0
    assert final_state == AnalysisState.REPORTED.value, (
        f"analysis is still {final_state} 240 s after the restart; SCP log:\n{log.read_text()[-1500:]}"
    )
    assert reports == 1
