"""Tests of ``hclal localize`` on a phantom study folder."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dicom.phantom import generate_study
from models.vocabulary import default_vocabulary
from tests.support.tiny_models import write_tiny_models
from worker.cli import app


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A phantom study with three lesions and small random-weight models."""
    root = tmp_path_factory.mktemp("localize")
    truth = generate_study(root / "study", seed=4, lesions=3)
    write_tiny_models(root / "model")
    return root, truth


@pytest.mark.slow
def test_localize_json_reports_each_lesion(phantom):
    root, truth = phantom
    result = CliRunner().invoke(app, ["localize", str(root / "study"), "--model", str(root / "model"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    vocabulary = default_vocabulary()

    assert [lesion["segment_number"] for lesion in data["lesions"]] == [1, 2, 3]
    assert len(truth.lesions) == 3
    for lesion in data["lesions"]:
        site = vocabulary.site(lesion["site_id"])
        assert lesion["site_code"] == site.code.as_dict()
        assert lesion["laterality"] == site.laterality
        assert len(lesion["coarse_topk"]) == 3
        assert lesion["uncertain"] == (lesion["probability"] < 0.5)
        assert 0.0 < lesion["probability"] <= 1.0

        coarse_ids = {site_id for site_id, _ in lesion["coarse_topk"]}
        assert not lesion["coarse_only"]
        assert site.parent in coarse_ids
        assert lesion["fine_topk"][0] == [lesion["site_id"], lesion["probability"]]
        assert all(vocabulary.site(site_id).parent in coarse_ids for site_id, _ in lesion["fine_topk"])


@pytest.mark.slow
def test_localize_table_names_sites(phantom):
    root, _ = phantom
    arguments = ["localize", str(root / "study"), "--model", str(root / "model")]
    runner = CliRunner(env={"COLUMNS": "240"})
    table = runner.invoke(app, arguments)
    data = json.loads(runner.invoke(app, [*arguments, "--json"]).stdout)
    assert table.exit_code == 0, table.output
    assert "probability" in table.stdout
    for lesion in data["lesions"]:
        assert lesion["site_id"] in table.stdout
        assert f"SCT {lesion['site_code']['value']}" in table.stdout


def test_localize_reports_missing_model(tmp_path):
    (tmp_path / "study").mkdir()
    result = CliRunner().invoke(app, ["localize", str(tmp_path / "study"), "--model", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "cannot load the model" in result.output
    assert "not found" in result.output


def test_localize_rejects_file_argument(tmp_path):
    path = tmp_path / "study.dcm"
    path.write_bytes(b"")
    result = CliRunner().invoke(app, ["localize", str(path), "--json"])
    assert result.exit_code == 1
    assert "is not a folder" in result.output
