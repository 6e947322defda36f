"""Adversarial checks of the analysis tasks: redelivered messages and stranded analyses.

Celery acknowledges ``hclal.localize`` late, so a worker killed after it
committed the report but before the acknowledgement gets its message delivered
again. The task body is :func:`worker.tasks.analyse_and_deliver`; calling it
twice is what the second worker does.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.test_pipeline import StatusPacs, SUCCESS, make_settings, receive_study
from worker.db.models import Delivery, Report
from worker.db.session import get_engine
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
