"""The production data path end to end, with Orthanc as the hospital PACS.

Every part runs as it does in a hospital: ``python -m worker scp`` and
``python -m worker worker`` as separate processes, PostgreSQL, Redis, and
Orthanc. The phantom study is uploaded to Orthanc by REST and forwarded to the
worker with ``POST /modalities/{id}/store``, as Orthanc's auto-forwarding does.
The worker's SR comes back to Orthanc, where the test finds it by C-FIND (DCMTK
``findscu``) and by the REST API.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pydicom
import pytest
import redis
from sqlalchemy import select

from dicom.network.sender import dicom_files
from models.vocabulary import load_vocabulary
from tests.support.celery_worker import (  # noqa: F401 - broker_url and worker_processes are fixtures
    ANALYSIS_TIMEOUT,
    FINAL_STATES,
    broker_url,
    count_rows,
    start_celery_worker,
    start_scp_process,
    wait_for_analysis_state,
    worker_processes,
)
from tests.support.dcmtk import require_dcmtk_tool
from tests.support.orthanc import OrthancServer, start_orthanc
from tests.support.receiver import free_port, receiver_settings
from tests.support.validate_dicom import validate
from worker.config import Destination
from worker.db.models import Analysis, AnalysisState, Delivery, DeliveryStatus, Finding, Instance, Lesion, Report
from worker.db.session import get_engine, session_scope

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.slow]

WORKER_AE_TITLE = "HCLAL"
PACS_AE_TITLE = "ORTHANC"
QUERY_AE_TITLE = "FINDSCU"


@pytest.fixture
def hospital(tmp_path: Path, postgres_url: str, broker_url: str, worker_processes):  # noqa: ANN001, ANN201
    """Orthanc, the worker's SCP process and a Celery worker process, wired to each other."""
    scp_port = free_port()
    pacs = start_orthanc(
        tmp_path / "pacs",
        {
            "HCLAL": (WORKER_AE_TITLE, "127.0.0.1", scp_port),
            "FINDSCU": (QUERY_AE_TITLE, "127.0.0.1", free_port()),
        },
        aet=PACS_AE_TITLE,
    )
    try:
        # The shipped demo model: HCLAL_COARSE_MODEL and HCLAL_FINE_MODEL left unset.
        settings = receiver_settings(
            tmp_path / "data", postgres_url,
            scp_port=scp_port,
            ae_title=WORKER_AE_TITLE,
            allowed_calling_ae_titles=[PACS_AE_TITLE],
            broker_url=broker_url,
            destinations=[Destination(ae_title=PACS_AE_TITLE, host="127.0.0.1", port=pacs.dicom_port)],
            delivery_backoff=0.5,
            delivery_max_attempts=3,
        )
        # Production databases are migrated by 'hclal db upgrade' before the services start.
        engine = get_engine(postgres_url, auto_migrate=True)
        worker_processes.append(start_scp_process(settings, tmp_path / "scp.log"))
        worker_processes.append(start_celery_worker(settings, tmp_path / "worker.log"))
        yield pacs, engine
    finally:
        pacs.stop()


def find_with_dcmtk(pacs: OrthancServer, keys: dict[str, str], folder: Path) -> list[pydicom.Dataset]:
    """Query Orthanc by C-FIND (Study Root) with DCMTK ``findscu``; return the responses' identifiers."""
    findscu = require_dcmtk_tool("findscu")
    folder.mkdir(parents=True)
    command = [findscu, "-S", "-aet", QUERY_AE_TITLE, "-aec", pacs.aet, "-X", "-od", str(folder)]
    for keyword, value in keys.items():
        command += ["-k", f"{keyword}={value}" if value else keyword]
    command += ["127.0.0.1", str(pacs.dicom_port)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return [pydicom.dcmread(path) for path in sorted(folder.glob("rsp*.dcm"))]


def orthanc_sr_series(pacs: OrthancServer, study_id: str) -> list[dict]:
    """Return Orthanc's records of the SR series of a study (``GET /studies/{id}/series``)."""
    series = pacs.request("GET", f"/studies/{study_id}/series")
    return [entry for entry in series if entry["MainDicomTags"].get("Modality") == "SR"]


def orthanc_study_id(pacs: OrthancServer, study_instance_uid: str) -> str:
    found = pacs.request("POST", "/tools/lookup", study_instance_uid.encode())
    studies = [entry["ID"] for entry in found if entry["Type"] == "Study"]
    assert len(studies) == 1, found
    return studies[0]


def localize_queue_length(broker_url: str) -> int:
    client = redis.Redis.from_url(broker_url)
    try:
        return client.llen("localize")
    finally:
        client.close()


def test_orthanc_forward_reported_once(tmp_path, phantom_study, hospital, broker_url, worker_processes):
    pacs, engine = hospital
    files = dicom_files(phantom_study)
    instance_ids = [pacs.upload(path) for path in files]

    answer = pacs.store_to_modality("HCLAL", instance_ids)
    assert answer["FailedInstancesCount"] == 0
    assert count_rows(engine, Instance) == len(files)
    with engine.connect() as connection:
        analysis_ids = connection.scalars(select(Analysis.id)).all()
    assert len(analysis_ids) == 1
    state = wait_for_analysis_state(engine, analysis_ids[0], FINAL_STATES, ANALYSIS_TIMEOUT, worker_processes)
    assert state == AnalysisState.DELIVERED

    with session_scope(engine) as session:
        report = session.scalars(select(Report)).one()
        study_uid = report.analysis.study.study_instance_uid
        sr_uid, sr_series_uid = report.sop_instance_uid, report.series_instance_uid
        outline_uid = report.outline_sop_instance_uid
        sent = pydicom.dcmread(report.file_path)
        outline = pydicom.dcmread(report.outline_file_path)
        findings = {
            lesion.segment_number: (lesion.finding.site_id, lesion.finding.code_value, lesion.finding.code_scheme)
            for lesion in session.scalars(select(Lesion))
        }
        deliveries = [(row.sop_instance_uid, row.attempt, row.status) for row in session.scalars(select(Delivery))]
    assert deliveries == [(sr_uid, 1, DeliveryStatus.SUCCESS), (outline_uid, 1, DeliveryStatus.SUCCESS)]
    # The report and its outline document (for web viewers) are two SR series.
    descriptions = {sr_series_uid: str(sent.SeriesDescription), str(outline.SeriesInstanceUID): str(outline.SeriesDescription)}

    # C-FIND: the SR series of the study, then the report instance itself.
    series = find_with_dcmtk(
        pacs,
        {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": study_uid, "Modality": "SR",
         "SeriesInstanceUID": "", "SeriesDescription": ""},
        tmp_path / "find-series",
    )
    assert {str(ds.SeriesInstanceUID): str(ds.SeriesDescription) for ds in series} == descriptions
    images = find_with_dcmtk(
        pacs,
        {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": study_uid, "SeriesInstanceUID": sr_series_uid,
         "SOPInstanceUID": ""},
        tmp_path / "find-images",
    )
    assert [str(ds.SOPInstanceUID) for ds in images] == [sr_uid]

    # REST: the study lists the two SR series with their descriptions, one instance each.
    study_id = orthanc_study_id(pacs, study_uid)
    sr_series = {entry["MainDicomTags"]["SeriesInstanceUID"]: entry for entry in orthanc_sr_series(pacs, study_id)}
    assert {uid: entry["MainDicomTags"]["SeriesDescription"] for uid, entry in sr_series.items()} == descriptions
    assert [len(entry["Instances"]) for entry in sr_series.values()] == [1, 1]
    stored_path = tmp_path / "stored-sr.dcm"
    stored_path.write_bytes(pacs.request_bytes("GET", f"/instances/{sr_series[sr_series_uid]['Instances'][0]}/file"))
    assert str(pydicom.dcmread(stored_path).SOPInstanceUID) == sr_uid
    ok, output = validate([stored_path])
    assert ok, output

    # Findings: one per true lesion, coded as the vocabulary codes the predicted site; where
    # the demo model names the true site, the row holds the phantom's true code.
    truth = json.loads((phantom_study / "truth.json").read_text())["lesions"]
    assert sorted(findings) == sorted(lesion["segment_number"] for lesion in truth)
    vocabulary = load_vocabulary()
    for segment_number, (site_id, code_value, code_scheme) in findings.items():
        site = vocabulary.site(site_id)
        assert (code_value, code_scheme) == (site.code.value, site.code.scheme), segment_number
    for lesion in truth:
        site_id, code_value, code_scheme = findings[lesion["segment_number"]]
        if site_id == lesion["site_id"]:
            assert (code_value, code_scheme) == (lesion["code"]["value"], lesion["code"]["scheme"])
    assert count_rows(engine, Finding) == len(truth)

    # Forwarding the same study again stores nothing new and queues nothing.
    orthanc_instances = pacs.request("GET", f"/studies/{study_id}/statistics")["CountInstances"]
    answer = pacs.store_to_modality("HCLAL", instance_ids)
    assert answer["FailedInstancesCount"] == 0
    assert count_rows(engine, Instance) == len(files)
    assert count_rows(engine, Analysis) == 1
    assert count_rows(engine, Report) == 1
    assert localize_queue_length(broker_url) == 0
    assert pacs.request("GET", f"/studies/{study_id}/statistics")["CountInstances"] == orthanc_instances
    assert [len(entry["Instances"]) for entry in orthanc_sr_series(pacs, study_id)] == [1, 1]
