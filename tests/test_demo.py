"""``hclal demo``: the whole data path on embedded defaults with the shipped demo model."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
from sqlalchemy import select
from typer.testing import CliRunner

from tests.support.validate_dicom import validate
from worker.cli import app
from worker.db.models import Analysis, AnalysisState, Finding, Lesion
from worker.db.session import get_engine, session_scope
from worker.demo import run_demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_demo_reports_every_lesion(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "demo", seed=11, lesions=4, timeout=600)

    truth = json.loads((tmp_path / "demo" / "study" / "truth.json").read_text())
    assert [row["segment"] for row in result.rows] == [item["segment_number"] for item in truth["lesions"]]
    assert result.preview_path.read_bytes().startswith(PNG_SIGNATURE)

    report = pydicom.dcmread(result.report_path)
    assert report.SeriesDescription == "HCL-AL lesion sites"
    ok, output = validate([result.report_path])
    assert ok, output

    engine = get_engine(f"sqlite:///{tmp_path / 'demo' / 'worker' / 'hclal.sqlite3'}")
    with session_scope(engine) as session:
        assert session.scalars(select(Analysis.state)).all() == [AnalysisState.DELIVERED]
        findings = session.execute(select(Lesion.segment_number, Finding).join(Finding)).all()
        codes = {number: finding.code_value for number, finding in findings}
    for row in result.rows:
        if row["correct"]:
            expected = next(item for item in truth["lesions"] if item["segment_number"] == row["segment"])
            assert codes[row["segment"]] == expected["code"]["value"]


def test_demo_command_prints_table(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--output", str(tmp_path / "out"), "--lesions", "2", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "Lesions of the phantom study (seed 3)" in result.output
    assert "Structured Report received by the PACS" in result.output
    assert (tmp_path / "out" / "preview.png").is_file()


def test_demo_without_model_fails_fast(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HCLAL_COARSE_MODEL", str(tmp_path / "missing"))
    result = CliRunner().invoke(app, ["demo", "--output", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "cannot load the models" in result.output
    assert not (tmp_path / "out" / "study").exists()
