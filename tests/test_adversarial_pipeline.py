"""Adversarial checks of the analysis tasks: redelivered messages and malformed patient data.

Celery acknowledges ``hclal.localize`` late, so a worker killed after it
committed the report but before the acknowledgement gets its message delivered
again. The task body is :func:`worker.tasks.analyse_and_deliver`, so calling it
twice is what the second worker does.
"""

from __future__ import annotations

import contextlib
import logging
import shutil

import pydicom
import pytest
from sqlalchemy import func, select

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
