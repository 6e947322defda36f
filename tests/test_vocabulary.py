"""The coded anatomical vocabulary: data file, loader, checks and the ``hclal vocab`` command."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from pydicom.sr._concepts_dict import concepts
from pydicom.sr.codedict import codes
from typer.testing import CliRunner

from models.vocabulary import (
    DEFAULT_VOCABULARY_PATH,
    UnknownSiteError,
    default_vocabulary,
    load_vocabulary,
)
from models.vocabulary.check import check_vocabulary
from worker.cli import app

EIGHT_BODY_REGIONS = [
    "head",
    "neck",
    "chest",
    "abdomen",
    "pelvis",
    "axial_skeleton",
    "upper_limb",
    "lower_limb",
]


@pytest.fixture(scope="module")
def vocabulary():
    return default_vocabulary()


def _pydicom_meanings(scheme: str, value: str) -> set[str]:
    return {
        meaning
        for entries in concepts[scheme].values()
        for code_value, (meaning, _cids) in entries.items()
        if code_value == value
    }


def _edited_copy(tmp_path: Path, edit) -> Path:  # noqa: ANN001 - edit is a callable on the data
    data = json.loads(DEFAULT_VOCABULARY_PATH.read_text(encoding="utf-8"))
    edit(data)
    path = tmp_path / "sites.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_vocabulary_size_and_regions(vocabulary) -> None:
    assert len(vocabulary.fine_sites) >= 387
    assert 105 <= len(vocabulary.coarse_sites) <= 135
    assert [region.id for region in vocabulary.regions][:8] == EIGHT_BODY_REGIONS
    assert [region.id for region in vocabulary.regions][8:] == ["outside"]


def test_every_code_is_in_pydicom_with_same_meaning(vocabulary) -> None:
    for site in vocabulary:
        assert site.code.scheme == "SCT", site.id
        assert site.code.meaning in _pydicom_meanings("SCT", site.code.value), site.id
        if site.modifier is not None:
            assert site.modifier.meaning in _pydicom_meanings("SCT", site.modifier.value), site.id


def test_laterality_codes_match_pydicom(vocabulary) -> None:
    site = vocabulary.site("rib_4_left")
    assert site.laterality_code.value == codes.SCT.Left.value
    assert site.laterality_code.meaning == codes.SCT.Left.meaning
    assert vocabulary.site("vertebra_t4").laterality_code is None


def test_check_passes_on_project_vocabulary(vocabulary) -> None:
    assert check_vocabulary(vocabulary) == []


def test_required_granularity_present(vocabulary) -> None:
    ids = {site.id for site in vocabulary.fine_sites}
    liver = [f"liver_segment_{n}" for n in ("1", "2", "3", "4a", "4b", "5", "6", "7", "8")]
    vertebrae = (
        [f"vertebra_c{i}" for i in range(1, 8)]
        + [f"vertebra_t{i}" for i in range(1, 13)]
        + [f"vertebra_l{i}" for i in range(1, 6)]
    )
    ribs = [f"rib_{i}_{side}" for i in range(1, 13) for side in ("left", "right")]
    stations = ["mediastinal_station_4r", "mediastinal_station_7", "hilar_station_10l"]
    for site_id in liver + vertebrae + ribs + stations + ["sacral_body", "outside_body_external"]:
        assert site_id in ids, site_id


def test_liver_segment_codes(vocabulary) -> None:
    segment_8 = vocabulary.site("liver_segment_8")
    assert segment_8.code.value == codes.SCT.CouinaudHepaticSegmentVIII.value
    segment_4a = vocabulary.site("liver_segment_4a")
    segment_4b = vocabulary.site("liver_segment_4b")
    assert segment_4a.code.value == codes.SCT.CouinaudHepaticSegmentIV.value
    assert segment_4a.modifier.value == codes.SCT.Superior.value
    assert segment_4b.modifier.value == codes.SCT.Inferior.value


def test_tree_navigation(vocabulary) -> None:
    assert vocabulary.parent("liver_segment_4a").id == "liver"
    assert [site.id for site in vocabulary.children("kidney_left")][0] == "kidney_upper_pole_left"
    assert vocabulary.region_of("rib_12_right") == "axial_skeleton"
    assert vocabulary.region_of("liver") == "abdomen"
    assert vocabulary.site("liver").level == "coarse"
    assert vocabulary.site("liver_segment_2").parent == "liver"
    with pytest.raises(ValueError, match="fine site"):
        vocabulary.children("liver_segment_2")
    with pytest.raises(ValueError, match="coarse site"):
        vocabulary.parent("liver")


def test_unknown_site_raises_with_hint(vocabulary) -> None:
    with pytest.raises(UnknownSiteError, match="hclal vocab show"):
        vocabulary.site("liver_segment_9")
    assert "liver_segment_9" not in vocabulary


def test_indices_follow_file_order(vocabulary) -> None:
    for position, site in enumerate(vocabulary.fine_sites):
        assert vocabulary.fine_index(site.id) == position
    assert vocabulary.coarse_index(vocabulary.coarse_sites[-1].id) == len(vocabulary.coarse_sites) - 1
    with pytest.raises(ValueError, match="not a fine site"):
        vocabulary.fine_index("liver")
    with pytest.raises(UnknownSiteError):
        vocabulary.coarse_index("liver_segment_9")


def test_ids_snake_case_and_unique(vocabulary) -> None:
    ids = [site.id for site in vocabulary]
    assert len(ids) == len(set(ids))
    for site_id in ids:
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", site_id), site_id


def test_fine_laterality_follows_coarse(vocabulary) -> None:
    for coarse in vocabulary.coarse_sites:
        if coarse.laterality in ("left", "right"):
            for fine in vocabulary.children(coarse.id):
                assert fine.laterality == coarse.laterality, fine.id


def test_hash_is_stable_and_content_bound(tmp_path: Path, vocabulary) -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", vocabulary.vocabulary_hash)
    assert load_vocabulary().vocabulary_hash == vocabulary.vocabulary_hash

    def rename(data: dict) -> None:
        data["regions"][0]["coarse"][0]["name"] = "Renamed"

    assert load_vocabulary(_edited_copy(tmp_path, rename)).vocabulary_hash != vocabulary.vocabulary_hash


def test_check_reports_invented_code(tmp_path: Path) -> None:
    def invent(data: dict) -> None:
        data["regions"][2]["coarse"][0]["fine"][0]["code"]["value"] = "999999999"

    problems = check_vocabulary(load_vocabulary(_edited_copy(tmp_path, invent)))
    assert len(problems) == 1
    assert "999999999 is not in pydicom's code tables" in problems[0]


def test_check_reports_wrong_meaning(tmp_path: Path) -> None:
    def mislabel(data: dict) -> None:
        data["regions"][3]["coarse"][0]["code"]["meaning"] = "Spleen"

    problems = check_vocabulary(load_vocabulary(_edited_copy(tmp_path, mislabel)))
    assert len(problems) == 1
    assert "'Spleen'" in problems[0]


def test_check_reports_laterality_conflict(tmp_path: Path) -> None:
    def flip(data: dict) -> None:
        for coarse in data["regions"][3]["coarse"]:
            if coarse["id"] == "kidney_left":
                coarse["fine"][0]["laterality"] = "right"

    problems = check_vocabulary(load_vocabulary(_edited_copy(tmp_path, flip)))
    assert problems == [
        "kidney_upper_pole_left: laterality 'right' differs from its coarse site kidney_left ('left')"
    ]


def test_cli_check_exit_status(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["vocab", "check"]).exit_code == 0

    def bad_modifier(data: dict) -> None:
        data["regions"][0]["coarse"][0]["fine"][0]["modifier"] = {
            "value": "10200004",
            "scheme": "SCT",
            "meaning": "Liver",
        }

    result = runner.invoke(app, ["vocab", "check", "--vocabulary", str(_edited_copy(tmp_path, bad_modifier))])
    assert result.exit_code == 1
    assert "is not in CID 2" in result.output


def test_cli_export_csv(vocabulary) -> None:
    result = CliRunner().invoke(app, ["vocab", "export"])
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == len(vocabulary.fine_sites)
    assert list(rows[0])[:9] == [
        "site_id",
        "region",
        "coarse",
        "fine",
        "name",
        "laterality",
        "code_value",
        "code_scheme",
        "code_meaning",
    ]
    row = next(r for r in rows if r["site_id"] == "liver_segment_4b")
    assert row["coarse"] == "liver"
    assert row["region"] == "abdomen"
    assert row["code_value"] == "277958008"
    assert row["modifier_meaning"] == "Inferior"


def test_cli_show_region() -> None:
    result = CliRunner().invoke(app, ["vocab", "show", "--region", "pelvis"])
    assert result.exit_code == 0
    assert "urinary_bladder" in result.output
    assert "liver_segment_4a" not in result.output

    result = CliRunner().invoke(app, ["vocab", "show", "--region", "torso"])
    assert result.exit_code == 1
    assert "region 'torso' not found" in result.output


def _write_hclal_files(tmp_path: Path, library: object, descriptions: object) -> tuple[Path, Path]:
    library_path = tmp_path / "library.json"
    descriptions_path = tmp_path / "descriptions.json"
    library_path.write_text(json.dumps(library), encoding="utf-8")
    descriptions_path.write_text(json.dumps(descriptions), encoding="utf-8")
    return library_path, descriptions_path


def test_import_hclal_region_layout(tmp_path: Path, vocabulary) -> None:
    from models.vocabulary.hclal_import import import_hclal_files

    library = {
        "Abdomen": {
            "Liver": {"Liver S2": "Liver S2", "Liver S4": "Liver S4"},
            "Left kidney": {"Kidney": "Left kidney"},
        },
        "Axial skeleton": {"Vertebra T7": {"Thoracic spine": "Vertebra T7", "Bony bump": "Nowhere bump"}},
    }
    descriptions = {"Liver": "a sentence", "Liver S2": "a sentence", "Unused name": "a sentence"}
    result = import_hclal_files(*_write_hclal_files(tmp_path, library, descriptions), vocabulary)

    assert result.mapping() == {
        "Liver": "liver",
        "Liver S2": "liver_segment_2",
        "Liver S4": "liver",
        "Left kidney": "kidney_left",
        "Vertebra T7": "vertebra_t7",
    }
    assert [entry.name for entry in result.entries if entry.site_id is None] == ["Nowhere bump"]
    assert result.unmatched_count == 1
    assert result.descriptions_without_entry == ["Unused name"]
    assert "no description for fine name 'Left kidney'" in result.unmatched_lines()


def test_import_hclal_flat_layout(tmp_path: Path, vocabulary) -> None:
    from models.vocabulary.hclal_import import import_hclal_files

    library = {
        "Right ribs": ["Rib R3", "Right rib 11"],
        "Mediastinum": ["Mediastinum 4R", "Mediastinum 7", "Oesophagus"],
        "Lumbar spine": ["L2 vertebra", "vertebra l5"],
        "Back": ["Right upper back subcutaneous tissue", "Left lumbar muscle"],
    }
    result = import_hclal_files(*_write_hclal_files(tmp_path, library, {}), vocabulary)
    mapping = result.mapping()

    assert mapping["Rib R3"] == "rib_3_right"
    assert mapping["Right rib 11"] == "rib_11_right"
    assert mapping["Right ribs"] == "ribs_right"
    assert mapping["Mediastinum 4R"] == "mediastinal_station_4r"
    assert mapping["Mediastinum 7"] == "mediastinal_station_7"
    assert mapping["Oesophagus"] == "thoracic_esophagus"
    assert mapping["L2 vertebra"] == "vertebra_l2"
    assert mapping["vertebra l5"] == "vertebra_l5"
    assert mapping["Lumbar spine"] == "lumbar_spine"
    assert mapping["Right upper back subcutaneous tissue"] == "upper_back_subcutaneous_tissue"
    assert mapping["Left lumbar muscle"] == "paraspinal_lumbar_muscle_left"
    assert "Mediastinum" not in mapping


def test_import_hclal_cli(tmp_path: Path) -> None:
    library = {"Spleen": ["Spleen", "Splenic hilum", "Moon crater"]}
    library_path, descriptions_path = _write_hclal_files(tmp_path, library, {"Spleen": "x"})
    output = tmp_path / "mapping.json"
    runner = CliRunner()

    result = runner.invoke(
        app, ["vocab", "import-hclal", str(library_path), str(descriptions_path), "-o", str(output)]
    )
    assert result.exit_code == 0
    assert "4 names: 3 matched, 1 unmatched" in result.stdout
    assert "unmatched fine name 'Moon crater'" in result.stderr
    assert json.loads(output.read_text())["mapping"]["Splenic hilum"] == "splenic_hilum"

    strict = runner.invoke(app, ["vocab", "import-hclal", str(library_path), str(descriptions_path), "--strict"])
    assert strict.exit_code == 1


def test_import_hclal_rejects_bad_structure(tmp_path: Path) -> None:
    library_path, descriptions_path = _write_hclal_files(tmp_path, ["Liver"], {})
    result = CliRunner().invoke(app, ["vocab", "import-hclal", str(library_path), str(descriptions_path)])
    assert result.exit_code == 1
    assert "the library must be a non-empty JSON object" in result.stderr

    missing = CliRunner().invoke(app, ["vocab", "import-hclal", str(tmp_path / "nope.json"), str(descriptions_path)])
    assert missing.exit_code == 1
    assert "not found" in missing.stderr
