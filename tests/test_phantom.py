"""The whole-body PET/CT phantom: anatomy coverage, truth, determinism and DICOM validity."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from typer.testing import CliRunner

from dicom.phantom import (
    build_anatomy,
    build_phantom_volumes,
    default_anatomy,
    generate_study,
    phantom_sites,
    sample_lesion,
)
from dicom.phantom.anatomy import OUTSIDE, Grid
from dicom.phantom.lesions import LesionPlacementError, SiteSampler, sample_lesions, sphere_mask
from models.vocabulary import default_vocabulary
from tests.support.validate_dicom import validate
from worker.cli import app

SEED = 7
LESIONS = 6


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    return generate_study(tmp_path_factory.mktemp("phantom"), SEED, LESIONS)


@pytest.fixture(scope="module")
def volumes():
    return build_phantom_volumes(SEED, LESIONS)


def _pixel_bytes(paths) -> list[bytes]:  # noqa: ANN001 - iterable of paths
    return [pydicom.dcmread(path).PixelData for path in paths]


def test_same_seed_same_pixel_bytes(study, tmp_path: Path) -> None:
    again = generate_study(tmp_path / "again", SEED, LESIONS)

    assert _pixel_bytes(again.ct_paths) == _pixel_bytes(study.ct_paths)
    assert _pixel_bytes(again.pet_paths) == _pixel_bytes(study.pet_paths)
    assert _pixel_bytes([again.seg_path]) == _pixel_bytes([study.seg_path])
    assert again.as_dict() == study.as_dict()


def test_other_seed_other_anatomy(volumes) -> None:
    other = build_anatomy(SEED + 1)
    assert other.body != volumes.anatomy.body
    assert other.labels.shape != volumes.anatomy.labels.shape or not np.array_equal(other.labels, volumes.anatomy.labels)


def test_truth_json_layout(study) -> None:
    truth = json.loads(study.truth_path.read_text())
    vocabulary = default_vocabulary()

    assert list(truth) == ["lesions"]
    assert [lesion["segment_number"] for lesion in truth["lesions"]] == list(range(1, LESIONS + 1))
    for lesion in truth["lesions"]:
        assert set(lesion) == {"segment_number", "site_id", "code", "centroid_mm", "diameter_mm", "suv_max"}
        assert lesion["code"] == vocabulary.site(lesion["site_id"]).code.as_dict()
        assert vocabulary.site(lesion["site_id"]).level == "fine"
        assert len(lesion["centroid_mm"]) == 3
        assert 8.0 <= lesion["diameter_mm"] <= 30.0
        assert lesion["suv_max"] > 2.0
    assert len({lesion["site_id"] for lesion in truth["lesions"]}) == LESIONS


def test_truth_site_matches_label_map(study, volumes) -> None:
    for lesion in study.lesions:
        assert volumes.anatomy.site_at(lesion.centroid_mm) == lesion.site_id


def test_seg_segments_follow_truth(study) -> None:
    seg = hd.seg.segread(study.seg_path)
    ct_series = pydicom.dcmread(study.ct_paths[0], stop_before_pixels=True).SeriesInstanceUID

    assert seg.number_of_segments == LESIONS
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct_series
    assert seg.FrameOfReferenceUID == pydicom.dcmread(study.ct_paths[0], stop_before_pixels=True).FrameOfReferenceUID
    for lesion in study.lesions:
        description = seg.get_segment_description(lesion.segment_number)
        assert description.segment_label == f"Lesion {lesion.segment_number}"


def test_seg_mask_centroid_and_volume(study, volumes) -> None:
    affine = volumes.ct_affine
    for lesion, (block, mask) in zip(study.lesions, volumes.lesion_masks):
        start = np.array([block[0].start, block[1].start, block[2].start])
        points = np.argwhere(mask) + start
        centroid = (affine @ np.c_[points, np.ones(len(points))].T)[:3].mean(axis=1)
        assert np.allclose(centroid, lesion.centroid_mm, atol=1e-6)
        sphere_ml = math.pi / 6.0 * lesion.diameter_mm**3 / 1000.0
        voxel_ml = 2.0 * 2.0 * 3.0 / 1000.0
        assert abs(len(points) * voxel_ml - sphere_ml) <= 0.25 * sphere_ml + 2 * voxel_ml


def test_pet_suv_computable_by_hand(study, volumes) -> None:
    """SUVmax from the PET files and the radiopharmaceutical sequence equals the truth."""
    header = pydicom.dcmread(study.pet_paths[0], stop_before_pixels=True)
    item = header.RadiopharmaceuticalInformationSequence[0]

    assert header.Units == "BQML"
    assert header.DecayCorrection == "START"
    assert float(item.RadionuclideHalfLife) == 6586.2
    injected = datetime.strptime(item.RadiopharmaceuticalStartDateTime, "%Y%m%d%H%M%S")
    started = datetime.strptime(header.SeriesDate + header.SeriesTime, "%Y%m%d%H%M%S")
    decayed = float(item.RadionuclideTotalDose) * 2.0 ** (-(started - injected).total_seconds() / 6586.2)
    factor = float(header.PatientWeight) * 1000.0 / decayed

    lesion = study.lesions[0]
    pet_grid = volumes.pet_grid
    slice_index = round((pet_grid.origin[2] - lesion.centroid_mm[2]) / pet_grid.spacing[0])
    nearby = range(max(slice_index - 4, 0), min(slice_index + 5, pet_grid.shape[0]))
    maximum = 0.0
    for index in nearby:
        ds = pydicom.dcmread(study.pet_paths[index])
        row = round((lesion.centroid_mm[1] - float(ds.ImagePositionPatient[1])) / 4.0)
        column = round((lesion.centroid_mm[0] - float(ds.ImagePositionPatient[0])) / 4.0)
        window = ds.pixel_array[max(row - 4, 0) : row + 5, max(column - 4, 0) : column + 5]
        maximum = max(maximum, float(window.max()) * float(ds.RescaleSlope) * factor)
    assert maximum == pytest.approx(lesion.suv_max, rel=1e-3)


def test_ct_pet_seg_validate(study) -> None:
    middle = len(study.ct_paths) // 2
    paths = [study.ct_paths[0], study.ct_paths[middle], study.ct_paths[-1]]
    paths += [study.pet_paths[0], study.pet_paths[len(study.pet_paths) // 2], study.pet_paths[-1]]
    paths.append(study.seg_path)
    ok, report = validate(paths)
    assert ok, report


def test_grids_like_a_scanner(study) -> None:
    ct = pydicom.dcmread(study.ct_paths[0], stop_before_pixels=True)
    pet = pydicom.dcmread(study.pet_paths[0], stop_before_pixels=True)

    assert (ct.Rows, ct.Columns) == (256, 256)
    assert [float(v) for v in ct.PixelSpacing] == [2.0, 2.0]
    assert float(ct.SliceThickness) == 3.0
    assert 320 <= len(study.ct_paths) <= 380
    assert [float(v) for v in pet.PixelSpacing] == [4.0, 4.0]
    assert pet.FrameOfReferenceUID == ct.FrameOfReferenceUID
    assert float(pet.ImagePositionPatient[2]) != float(ct.ImagePositionPatient[2])


def test_phantom_site_coverage() -> None:
    sites = phantom_sites()
    vocabulary = default_vocabulary()

    assert len(sites) >= 120
    assert {vocabulary.region_of(site) for site in sites} == {
        "head", "neck", "chest", "abdomen", "pelvis", "axial_skeleton", "upper_limb", "lower_limb",
    }
    required = [f"liver_segment_{n}" for n in ("1", "2", "3", "4a", "4b", "5", "6", "7", "8")]
    required += [f"vertebra_c{i}" for i in range(1, 8)] + [f"vertebra_t{i}" for i in range(1, 13)]
    required += [f"vertebra_l{i}" for i in range(1, 6)]
    required += [f"rib_{i}_{side}" for i in range(1, 13) for side in ("left", "right")]
    required += ["mediastinal_station_7", "mediastinal_station_4r", "hilar_station_10l", "cervical_node_level_2_right"]
    required += ["kidney_upper_pole_left", "kidney_upper_pole_right", "humerus_shaft_left", "femur_shaft_right"]
    missing = [site for site in required if site not in sites]
    assert missing == []
    assert all(vocabulary.site(site).level == "fine" for site in sites)


@pytest.mark.parametrize("site_id", ["liver_segment_4a", "rib_3_left", "mediastinal_station_7", "vertebra_l2", "thigh_medial_compartment_right"])
def test_sample_lesion_inside_site(site_id: str) -> None:
    rng = np.random.default_rng(5)
    anatomy = default_anatomy()
    for _ in range(5):
        lesion = sample_lesion(site_id, rng)
        assert lesion.site_id == site_id
        assert anatomy.site_at(lesion.centre_mm) == site_id
        assert 8.0 <= lesion.diameter_mm <= 30.0
        block, mask = sphere_mask(anatomy.grid, lesion.centre_mm, lesion.diameter_mm)
        assert share_in_site(anatomy, block, mask, site_id) >= 0.5


def share_in_site(anatomy, block: tuple[slice, slice, slice], mask: np.ndarray, site_id: str) -> float:
    """Share of the voxels of ``mask`` (placed at ``block``) that the label map assigns to ``site_id``."""
    labels = anatomy.labels[block][mask]
    return sum(anatomy.site_ids[label] == site_id for label in labels) / len(labels)


def test_lesions_lie_mostly_in_site() -> None:
    volumes = build_phantom_volumes(5000, 20)
    anatomy = volumes.anatomy
    for lesion, (block, mask) in zip(volumes.lesions, volumes.lesion_masks, strict=True):
        assert share_in_site(anatomy, block, mask, lesion.site_id) >= 0.5, lesion


def sheet_sampler() -> SiteSampler:
    """A 20 x 20 x 20 map of 2 mm voxels: a block 12 mm thick and a sheet one voxel thin."""
    labels = np.full((20, 20, 20), OUTSIDE, dtype=np.int16)
    labels[2:18, 2:18, 2:8] = 2
    labels[2:18, 2:18, 14] = 3
    grid = Grid((20, 20, 20), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    sites = ["outside_body_external", None, "block", "sheet"]
    return SiteSampler(labels, sites, ["air", "fat", "muscle", "muscle"], grid)


def test_sample_lesion_rejects_thin_site() -> None:
    sampler = sheet_sampler()
    assert sampler.voxel_count("sheet") == 256
    with pytest.raises(LesionPlacementError, match="'sheet' has no point where a lesion of 8 mm"):
        sample_lesion("sheet", np.random.default_rng(0), sampler)


def test_sample_lesions_skips_thin_site() -> None:
    sampler = sheet_sampler()
    lesions = sample_lesions(1, np.random.default_rng(0), sampler)
    assert [lesion.site_id for lesion in lesions] == ["block"]
    assert sampler.fraction_in_site("block", lesions[0].centre_mm, lesions[0].diameter_mm) >= 0.5
    assert sampler.fraction_in_site("sheet", (28.0, 20.0, -20.0), 8.0) < 0.5
    with pytest.raises(ValueError, match="could place only 1 of 2"):
        sample_lesions(2, np.random.default_rng(0), sampler)


def test_sample_lesion_rejects_unpainted_site() -> None:
    with pytest.raises(ValueError, match="cannot hold a lesion"):
        sample_lesion("vertebra_c1_missing", np.random.default_rng(0))


def test_cli_rejects_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "old.dcm").write_bytes(b"")
    result = CliRunner().invoke(app, ["phantom", str(tmp_path), "--seed", "1"])
    assert result.exit_code == 1
    assert "is not empty" in result.stderr


def test_validator_reports_missing_attribute(study, tmp_path: Path) -> None:
    ds = pydicom.dcmread(study.ct_paths[0])
    del ds.ImagePositionPatient
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken)
    ok, report = validate([broken])
    assert not ok
    assert "Error" in report


def _measurement_report(study, finding_site_as_evaluation: bool):  # noqa: ANN001, ANN202
    """Return a TID 1500 report on the study's first CT slice with the liver as finding site."""
    ct = [pydicom.dcmread(path, stop_before_pixels=True) for path in study.ct_paths[:1]]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID()),
    )
    tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="lesion-1")
    if finding_site_as_evaluation:
        # Wrong on purpose: TID 1501 wants Finding Site as HAS CONCEPT MOD, not CONTAINS.
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.SCT.FindingSite, value=codes.SCT.Liver)],
        )
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=codes.SCT.Lesion,
            finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Liver)],
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[group],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=ct,
        content=report,
        series_instance_uid=hd.UID(),
        series_number=200,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
    )


def test_validator_passes_valid_sr(study, tmp_path: Path) -> None:
    path = tmp_path / "sr.dcm"
    _measurement_report(study, finding_site_as_evaluation=False).save_as(path)
    ok, report = validate([path])
    assert "DicomSRValidator: Found Root Template TID_1500" in report
    assert ok, report


def test_validator_flags_sr_template_error(study, tmp_path: Path) -> None:
    path = tmp_path / "sr.dcm"
    _measurement_report(study, finding_site_as_evaluation=True).save_as(path)
    ok, report = validate([path])
    assert not ok
    assert "Incorrect relationship - expected HAS CONCEPT MOD" in report


def test_volumes_as_shared_volume_type(volumes) -> None:
    pytest.importorskip("dicom.volume")
    from dicom.phantom import StudyUids

    uids = StudyUids.for_seed(SEED)
    ct, pet = volumes.as_volumes(uids)

    assert ct.modality == "CT"
    assert pet.modality == "PT"
    assert ct.frame_of_reference_uid == pet.frame_of_reference_uid == uids.frame_of_reference
    assert ct.array.shape == volumes.ct_hu.shape
    assert np.allclose(ct.affine @ [0, 0, 0, 1], volumes.ct_affine @ [0, 0, 0, 1])
    assert np.array_equal(pet.array, volumes.pet_suv)
    assert volumes.as_volumes()[0].series_instance_uid == uids.ct_series
    assert pet.spacing == pytest.approx((4.0, 4.0, 4.0))


def test_cli_writes_study(tmp_path: Path) -> None:
    out_dir = tmp_path / "study"
    result = CliRunner().invoke(app, ["phantom", str(out_dir), "--seed", "3", "--lesions", "2"])

    assert result.exit_code == 0, result.output
    assert "with 2 lesions" in result.stdout
    truth = json.loads((out_dir / "truth.json").read_text())
    assert [lesion["segment_number"] for lesion in truth["lesions"]] == [1, 2]
    assert len(list((out_dir / "seg").glob("*.dcm"))) == 1
    assert len(list((out_dir / "ct").glob("*.dcm"))) == len(build_anatomy(3).labels)


def test_cli_rejects_too_many_lesions(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["phantom", str(tmp_path / "study"), "--lesions", "1000"])
    assert result.exit_code == 1
    assert "1000 lesions requested" in result.stderr
