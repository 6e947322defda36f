"""TID 1500 Structured Report: content field by field, SOP class variants, validators."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage

from dicom.contour import ContourError, choose_slice, outline_lesion, polygon_area
from dicom.sr import (
    SERIES_DESCRIPTION,
    PredecessorReport,
    ReportInputs,
    SiteCandidate,
    SrSopClass,
    build_measurement_report,
    laterality_code,
    lesion_tracking_uid,
    save_report,
)
from tests.support.sr_inputs import (
    COLUMN_SPACING,
    LIVER,
    LUNG,
    RIB,
    ROW_SPACING,
    ROWS,
    make_report_inputs,
)
from tests.support.tid1500_reader import read_tid1500
from tests.support.validate_dicom import validate_file

MEASUREMENT_GROUP = codes.DCM.MeasurementGroup.value
TRACKING_IDENTIFIER = codes.DCM.TrackingIdentifier.value
TRACKING_UID = codes.DCM.TrackingUniqueIdentifier.value
FINDING = codes.DCM.Finding.value
FINDING_SITE = codes.SCT.FindingSite.value
LATERALITY = codes.SCT.Laterality.value
VOLUME = codes.SCT.Volume.value
AREA = codes.SCT.Area.value
SUV = codes.DCM.StandardizedUptakeValue.value
DERIVATION = codes.DCM.Derivation.value
PROBABILITY = codes.DCM.Probability.value
REFERENCED_SEGMENT = codes.DCM.ReferencedSegment.value
SOURCE_SERIES = codes.DCM.SourceSeriesForSegmentation.value
IMAGE_REGION = codes.DCM.ImageRegion.value
CERTAINTY = codes.DCM.CertaintyOfFinding.value


def _concept(item: Dataset) -> str:
    return item.ConceptNameCodeSequence[0].CodeValue


def _children(item: Dataset, code_value: str) -> list[Dataset]:
    return [child for child in item.get("ContentSequence", []) if _concept(child) == code_value]


def _child(item: Dataset, code_value: str) -> Dataset:
    found = _children(item, code_value)
    assert len(found) == 1, f"expected one item {code_value}, found {len(found)}"
    return found[0]


def _groups(report: Dataset) -> list[Dataset]:
    measurements = _child(report, codes.DCM.ImagingMeasurements.value)
    return _children(measurements, MEASUREMENT_GROUP)


def _code(item: Dataset) -> tuple[str, str]:
    concept = item.ConceptCodeSequence[0]
    return concept.CodeValue, concept.CodingSchemeDesignator


def _num(item: Dataset) -> tuple[float, str]:
    value = item.MeasuredValueSequence[0]
    return float(value.NumericValue), value.MeasurementUnitsCodeSequence[0].CodeValue


def _tracking(group: Dataset) -> tuple[str, str]:
    return _child(group, TRACKING_IDENTIFIER).TextValue, _child(group, TRACKING_UID).UID


def _is_planar(group: Dataset) -> bool:
    return bool(_children(group, IMAGE_REGION))


@pytest.fixture(scope="module")
def inputs() -> ReportInputs:
    return make_report_inputs()


@pytest.fixture(scope="module")
def report(inputs: ReportInputs) -> Dataset:
    return build_measurement_report(inputs)


def test_header_copies_study_and_starts_series(inputs: ReportInputs, report: Dataset) -> None:
    ct = inputs.ct_images[0]
    assert report.SOPClassUID == Comprehensive3DSRStorage
    assert report.Modality == "SR"
    assert report.StudyInstanceUID == ct.StudyInstanceUID
    assert report.SeriesInstanceUID not in (ct.SeriesInstanceUID, inputs.seg.SeriesInstanceUID)
    assert report.SeriesDescription == SERIES_DESCRIPTION
    assert report.PatientName == ct.PatientName
    assert report.PatientID == ct.PatientID
    assert report.PatientBirthDate == ct.PatientBirthDate
    assert report.AccessionNumber == ct.AccessionNumber
    assert report.SpecificCharacterSet == "ISO_IR 192"
    assert report.CompletionFlag == "COMPLETE"
    assert "PredecessorDocumentsSequence" not in report


def test_observer_context_names_device(report: Dataset) -> None:
    observer_type = _child(report, codes.DCM.ObserverType.value)
    assert _code(observer_type) == ("121007", "DCM")
    assert _child(report, codes.DCM.DeviceObserverUID.value).UID == "1.2.826.0.1.3680043.8.498.1"
    assert _child(report, codes.DCM.DeviceObserverName.value).TextValue == "HCL-AL hospital worker"
    assert _child(report, codes.DCM.DeviceObserverModelName.value).TextValue == "HCL-AL 0.1.0"
    assert _code(_child(report, codes.DCM.ProcedureReported.value)) == ("443271005", "SCT")


def test_two_groups_per_lesion_share_tracking(inputs: ReportInputs, report: Dataset) -> None:
    groups = _groups(report)
    assert len(groups) == 2 * len(inputs.findings) == 6
    for index, finding in enumerate(inputs.findings):
        volumetric, planar = groups[2 * index], groups[2 * index + 1]
        assert not _is_planar(volumetric)
        assert _is_planar(planar)
        expected = (finding.tracking_identifier, finding.tracking_uid)
        assert _tracking(volumetric) == expected
        assert _tracking(planar) == expected


def test_volumetric_group_references_segment(inputs: ReportInputs, report: Dataset) -> None:
    groups = _groups(report)
    ct_series = inputs.ct_images[0].SeriesInstanceUID
    for index, finding in enumerate(inputs.findings):
        group = groups[2 * index]
        segment = _child(group, REFERENCED_SEGMENT).ReferencedSOPSequence[0]
        assert segment.ReferencedSOPInstanceUID == inputs.seg.SOPInstanceUID
        assert segment.ReferencedSOPClassUID == inputs.seg.SOPClassUID
        assert segment.ReferencedSegmentNumber == finding.lesion.segment_number
        assert _child(group, SOURCE_SERIES).UID == ct_series


def test_volumetric_group_measurements(inputs: ReportInputs, report: Dataset) -> None:
    group = _groups(report)[2]
    lesion = inputs.findings[1].lesion
    assert _code(_child(group, FINDING)) == ("52988006", "SCT")

    site = _child(group, FINDING_SITE)
    assert _code(site) == (RIB.value, "SCT")
    assert _code(_child(site, LATERALITY)) == ("7771000", "SCT")

    volume, unit = _num(_child(group, VOLUME))
    assert volume == pytest.approx(lesion.volume_ml)
    assert unit == "ml"
    # 3 slices x 5 x 5 voxels of 0.8 x 0.7 x 2.5 mm.
    assert volume == pytest.approx(75 * 1.4 / 1000.0)

    suv_items = {
        _code(_child(item, DERIVATION))[0]: _num(item) for item in _children(group, SUV)
    }
    assert suv_items == {
        "56851009": (lesion.suv_max, "{SUVbw}g/ml"),
        "373098007": (lesion.suv_mean, "{SUVbw}g/ml"),
        "126031": (lesion.suv_peak, "{SUVbw}g/ml"),
    }


def test_site_probabilities_in_rank_order(inputs: ReportInputs, report: Dataset) -> None:
    group = _groups(report)[2]
    finding = inputs.findings[1]
    items = _children(group, PROBABILITY)
    expected = [finding.site, *finding.alternatives]
    assert len(items) == 3
    for item, candidate in zip(items, expected):
        value, unit = _num(item)
        assert value == pytest.approx(candidate.probability)
        assert unit == "1"
        site = _child(item, FINDING_SITE)
        assert _code(site)[0] == candidate.code.value
        assert _code(_child(site, LATERALITY))[0] == candidate.laterality.value


def test_uncertain_finding_is_marked(report: Dataset) -> None:
    groups = _groups(report)
    assert _code(_child(groups[2], CERTAINTY)) == ("64957009", "SCT")
    assert _code(_child(groups[3], CERTAINTY)) == ("64957009", "SCT")
    assert _children(groups[0], CERTAINTY) == []


def test_planar_scoord_outlines_box(inputs: ReportInputs, report: Dataset) -> None:
    # Lesion 2.1 is the box [2:5, 22:27, 4:9], so its centroid lies on slice 3.
    group = _groups(report)[3]
    region = _child(group, IMAGE_REGION)
    assert region.GraphicType == "POLYLINE"
    points = np.asarray(region.GraphicData, dtype=float).reshape(-1, 2)
    np.testing.assert_array_equal(points[0], points[-1])

    source = region.ContentSequence[0].ReferencedSOPSequence[0]
    assert source.ReferencedSOPInstanceUID == inputs.ct_images[3].SOPInstanceUID
    assert source.ReferencedSOPClassUID == inputs.ct_images[3].SOPClassUID

    # Marching squares at 0.5 runs along the pixel edges of the box and cuts
    # each corner by an eighth of a pixel: 25 - 4/8 pixels.
    assert points[:, 0].min() == pytest.approx(4.0)
    assert points[:, 0].max() == pytest.approx(9.0)
    assert points[:, 1].min() == pytest.approx(22.0)
    assert points[:, 1].max() == pytest.approx(27.0)
    area, unit = _num(_child(group, AREA))
    assert unit == "mm2"
    assert area == pytest.approx(24.5 * ROW_SPACING * COLUMN_SPACING, abs=1e-3)
    assert area == pytest.approx(polygon_area(points) * ROW_SPACING * COLUMN_SPACING, abs=1e-3)


def test_planar_scoord_lies_on_centroid_image(inputs: ReportInputs, report: Dataset) -> None:
    groups = _groups(report)
    positions = {image.SOPInstanceUID: image.ImagePositionPatient[2] for image in inputs.ct_images}
    for index, finding in enumerate(inputs.findings):
        region = _child(groups[2 * index + 1], IMAGE_REGION)
        uid = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        nearest = min(abs(z - finding.lesion.centroid_mm[2]) for z in positions.values())
        assert abs(positions[uid] - finding.lesion.centroid_mm[2]) == pytest.approx(nearest)
        points = np.asarray(region.GraphicData, dtype=float).reshape(-1, 2)
        assert points.min() >= 0.0
        assert points[:, 0].max() <= inputs.ct_images[0].Columns
        assert points[:, 1].max() <= inputs.ct_images[0].Rows


def test_planar_group_repeats_finding_site(report: Dataset) -> None:
    groups = _groups(report)
    for volumetric, planar in zip(groups[::2], groups[1::2]):
        assert _code(_child(planar, FINDING_SITE)) == _code(_child(volumetric, FINDING_SITE))
        assert _code(_child(planar, FINDING)) == ("52988006", "SCT")


@pytest.mark.parametrize(
    ("sop_class", "uid"),
    [(SrSopClass.ENHANCED, EnhancedSRStorage), (SrSopClass.COMPREHENSIVE, ComprehensiveSRStorage)],
    ids=["enhanced", "comprehensive"],
)
def test_fallback_class_keeps_content(inputs: ReportInputs, report: Dataset, sop_class, uid) -> None:
    fallback = build_measurement_report(replace(inputs, sop_class=sop_class))
    assert fallback.SOPClassUID == uid
    assert fallback.SOPInstanceUID != report.SOPInstanceUID
    assert fallback.ContentSequence == report.ContentSequence
    assert b"SCOORD3D" not in _encoded(fallback)


def test_given_uids_are_used(inputs: ReportInputs) -> None:
    document = build_measurement_report(
        replace(inputs, series_instance_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5", series_number=42)
    )
    assert document.SeriesInstanceUID == "1.2.3.4"
    assert document.SOPInstanceUID == "1.2.3.4.5"
    assert document.SeriesNumber == 42


def test_predecessor_is_referenced(inputs: ReportInputs, report: Dataset) -> None:
    predecessor = PredecessorReport(
        sop_class_uid=report.SOPClassUID,
        sop_instance_uid=report.SOPInstanceUID,
        series_instance_uid=report.SeriesInstanceUID,
        study_instance_uid=report.StudyInstanceUID,
    )
    second = build_measurement_report(replace(inputs, predecessor=predecessor))
    study_item = second.PredecessorDocumentsSequence[0]
    assert study_item.StudyInstanceUID == report.StudyInstanceUID
    series_item = study_item.ReferencedSeriesSequence[0]
    assert series_item.SeriesInstanceUID == report.SeriesInstanceUID
    instance = series_item.ReferencedSOPSequence[0]
    assert instance.ReferencedSOPInstanceUID == report.SOPInstanceUID
    assert instance.ReferencedSOPClassUID == Comprehensive3DSRStorage
    assert _tracking(_groups(second)[0]) == _tracking(_groups(report)[0])


@pytest.mark.parametrize(
    ("character_set", "name"),
    [("ISO_IR 100", "Müller^Jürgen"), ("ISO_IR 192", "山田^太郎"), (None, "Doe^John")],
    ids=["latin1-source", "utf8-source", "ascii-source"],
)
def test_patient_name_survives_encoding(tmp_path: Path, character_set, name: str) -> None:
    document = build_measurement_report(make_report_inputs(patient_name=name, character_set=character_set))
    path = tmp_path / "sr.dcm"
    document.save_as(path, enforce_file_format=True)

    reread = pydicom.dcmread(path)
    assert reread.SpecificCharacterSet == "ISO_IR 192"
    assert str(reread.PatientName) == name
    assert name.encode("utf-8") in path.read_bytes()


def test_segment_missing_from_seg_rejected(inputs: ReportInputs) -> None:
    lesion = replace(inputs.findings[0].lesion, segment_number=7)
    bad = replace(inputs, findings=[replace(inputs.findings[0], lesion=lesion)])
    with pytest.raises(ValueError, match="segment 7"):
        build_measurement_report(bad)


def test_seg_of_other_study_rejected(inputs: ReportInputs) -> None:
    other = make_report_inputs()
    with pytest.raises(ValueError, match="belongs to study"):
        build_measurement_report(replace(inputs, seg=other.seg))


def test_laterality_codes() -> None:
    assert laterality_code("Left").value == "7771000"
    assert laterality_code("right").value == "24028007"
    assert laterality_code("bilateral").value == "51440002"
    assert laterality_code(None) is None
    assert laterality_code("none") is None
    with pytest.raises(ValueError, match="laterality 'upper'"):
        laterality_code("upper")


def _encoded(dataset: Dataset) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue() + str(dataset).encode()


def _variant(name: str, base: ReportInputs) -> ReportInputs:
    if name == "enhanced":
        return replace(base, sop_class=SrSopClass.ENHANCED)
    if name == "comprehensive":
        return replace(base, sop_class=SrSopClass.COMPREHENSIVE)
    if name == "predecessor":
        earlier = build_measurement_report(base)
        return replace(
            base,
            predecessor=PredecessorReport(
                earlier.SOPClassUID, earlier.SOPInstanceUID, earlier.SeriesInstanceUID, earlier.StudyInstanceUID
            ),
        )
    if name == "non-ascii":
        return make_report_inputs(patient_name="Ångström^Zoë", character_set="ISO_IR 100")
    return base


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["comprehensive3d", "enhanced", "comprehensive", "predecessor", "non-ascii"])
def test_validators_accept_variant(tmp_path: Path, inputs: ReportInputs, variant: str) -> None:
    path = tmp_path / f"{variant}.dcm"
    build_measurement_report(_variant(variant, inputs)).save_as(path, enforce_file_format=True)
    ok, lines = validate_file(path)
    assert ok, "\n".join(lines)


def test_tid1500reader_reads_sites(tmp_path: Path, inputs: ReportInputs, report: Dataset) -> None:
    path = tmp_path / "sr.dcm"
    report.save_as(path, enforce_file_format=True)
    metadata = read_tid1500(path, tmp_path)

    groups = metadata["Measurements"]
    volumetric = [group for group in groups if "ReferencedSegment" in group]
    assert len(volumetric) == len(inputs.findings)
    for group, finding in zip(volumetric, inputs.findings):
        assert group["FindingSite"]["CodeValue"] == finding.site.code.value
        assert group["FindingSite"]["CodingSchemeDesignator"] == finding.site.code.scheme_designator
        assert group["ReferencedSegment"] == finding.lesion.segment_number
        assert group["TrackingUniqueIdentifier"] == finding.tracking_uid
    assert [g["FindingSite"]["CodeValue"] for g in volumetric] == [LIVER.value, RIB.value, LUNG.value]


def test_no_findings_rejected(inputs: ReportInputs) -> None:
    with pytest.raises(ValueError, match="findings is empty"):
        build_measurement_report(replace(inputs, findings=[]))


def test_missing_suv_left_out(inputs: ReportInputs) -> None:
    lesion = replace(inputs.findings[0].lesion, suv_max=None, suv_mean=None, suv_peak=float("nan"))
    document = build_measurement_report(
        replace(inputs, findings=[replace(inputs.findings[0], lesion=lesion)])
    )
    group = _groups(document)[0]
    assert _children(group, SUV) == []
    assert len(_children(group, VOLUME)) == 1


def test_outline_with_flipped_volume_rows(inputs: ReportInputs) -> None:
    # The same box lesion on a volume whose row axis runs bottom to top: the
    # outline must land on the same image pixels as with the plain volume.
    flipped = inputs.ct_affine.copy()
    flipped[:3, 1] = -inputs.ct_affine[:3, 1]
    flipped[:3, 3] = inputs.ct_affine[:3, 3] + inputs.ct_affine[:3, 1] * (ROWS - 1)
    lesion = inputs.findings[1].lesion
    low_row = ROWS - (lesion.mask_origin[1] + lesion.mask.shape[1])
    mirrored = replace(
        lesion,
        mask=lesion.mask[:, ::-1, :],
        mask_origin=(lesion.mask_origin[0], low_row, lesion.mask_origin[2]),
    )

    plain = outline_lesion(lesion.mask, lesion.mask_origin, lesion.centroid_mm, inputs.ct_affine, inputs.ct_images)
    other = outline_lesion(mirrored.mask, mirrored.mask_origin, lesion.centroid_mm, flipped, inputs.ct_images)

    assert other.image.SOPInstanceUID == plain.image.SOPInstanceUID
    assert other.area_mm2 == pytest.approx(plain.area_mm2)
    np.testing.assert_allclose(other.points.min(axis=0), plain.points.min(axis=0))
    np.testing.assert_allclose(other.points.max(axis=0), plain.points.max(axis=0))


def test_ring_lesion_outlined_off_centre() -> None:
    mask = np.zeros((5, 4, 4), dtype=bool)
    mask[0:2] = True
    mask[3:5] = True
    assert choose_slice(mask, (10, 0, 0), centroid_index=12.0) in (11, 13)
    assert choose_slice(mask, (10, 0, 0), centroid_index=12.4) == 13


def test_outline_needs_matching_ct_image(inputs: ReportInputs) -> None:
    shifted = inputs.ct_affine.copy()
    shifted[2, 3] += 1.0
    lesion = inputs.findings[0].lesion
    with pytest.raises(ContourError, match="no CT image lies in the plane"):
        outline_lesion(lesion.mask, lesion.mask_origin, lesion.centroid_mm, shifted, inputs.ct_images)


def test_candidate_from_vocabulary_site() -> None:
    code = SimpleNamespace(value="39607008", scheme="SCT", meaning="Lung")
    site = SimpleNamespace(id="lung_left", code=code, laterality="left")
    candidate = SiteCandidate.from_site(site, 0.73)
    assert candidate.code.value == "39607008"
    assert candidate.code.scheme_designator == "SCT"
    assert candidate.code.meaning == "Lung"
    assert candidate.laterality.value == "7771000"
    assert candidate.probability == pytest.approx(0.73)


def test_save_report_writes_part10_file(tmp_path: Path, report: Dataset) -> None:
    path = save_report(report, tmp_path / "reports")
    assert path == tmp_path / "reports" / report.StudyInstanceUID / f"{report.SOPInstanceUID}.dcm"
    reread = pydicom.dcmread(path)
    assert reread.SOPInstanceUID == report.SOPInstanceUID
    assert reread.file_meta.MediaStorageSOPClassUID == Comprehensive3DSRStorage
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_tracking_uid_stable_per_lesion() -> None:
    first = lesion_tracking_uid("1.2.3.4", 2, 1)
    assert first == lesion_tracking_uid("1.2.3.4", 2, 1)
    assert first != lesion_tracking_uid("1.2.3.4", 2, 2)
    assert lesion_tracking_uid("1.2.3.4", 1, 21) != lesion_tracking_uid("1.2.3.4", 12, 1)
    assert first != lesion_tracking_uid("1.2.3.5", 2, 1)
    assert len(first) <= 64
    assert pydicom.uid.UID(first).is_valid
