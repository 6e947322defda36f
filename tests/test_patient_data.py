"""Patient name, ID and birth date stay in the ``study`` table and out of every log line."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import inspect, text

from dicom.network.sender import dicom_files, send_files
from tests.support.receiver import receiver_settings, running_receiver
from worker.db.session import get_engine
from worker.delivery import deliver_report
from worker.pipeline import run_analysis

PATIENT_NAME = "Zzyzx^Quentina"
PATIENT_ID = "MRN-77413329"
BIRTH_DATE = "19480229"
PATIENT_TABLES = {"study"}


def relabel_study(source: Path, target: Path) -> None:
    """Copy the study with distinctive patient attributes that a search cannot confuse."""
    for path in dicom_files(source):
        dataset = pydicom.dcmread(path)
        dataset.PatientName = PATIENT_NAME
        dataset.PatientID = PATIENT_ID
        dataset.PatientBirthDate = BIRTH_DATE
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        dataset.save_as(destination, enforce_file_format=True)
    shutil.copy(source / "truth.json", target / "truth.json")


def text_cells(engine, table: str) -> list[str]:
    with engine.connect() as connection:
        rows = connection.execute(text(f'SELECT * FROM "{table}"')).all()
    return [str(value) for row in rows for value in row if value is not None]


def test_patient_data_only_in_study_table(
    tmp_path: Path, postgres_url: str, phantom_study: Path, tiny_models, caplog: pytest.LogCaptureFixture
) -> None:
    study = tmp_path / "study"
    relabel_study(phantom_study, study)
    coarse, fine = tiny_models
    settings = receiver_settings(tmp_path / "data", postgres_url, coarse_model=coarse, fine_model=fine)
    get_engine(postgres_url, auto_migrate=True)

    caplog.set_level(logging.DEBUG)
    with running_receiver(settings) as receiver:
        send_files(dicom_files(study), "127.0.0.1", receiver.port, settings.ae_title)
        analysis_id = receiver.queued[0]
    report_id = run_analysis(settings, analysis_id)
    deliver_report(settings, report_id)

    logged = "\n".join(record.getMessage() for record in caplog.records)
    for value in (PATIENT_NAME, PATIENT_NAME.replace("^", " "), PATIENT_ID, BIRTH_DATE):
        assert value not in logged

    engine = get_engine(postgres_url)
    holding = set()
    for table in inspect(engine).get_table_names():
        cells = text_cells(engine, table)
        if any(PATIENT_ID in cell or "Quentina" in cell or BIRTH_DATE in cell for cell in cells):
            holding.add(table)
    assert holding == PATIENT_TABLES
