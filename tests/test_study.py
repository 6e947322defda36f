"""Study loading end to end from files: series choice, SUV, lesions, and ``hclal lesions``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom.seg import SegmentationError
from dicom.study import StudyError, load_study
from dicom.suv import SuvResult
from tests.support.series_factory import (
    Geometry,
    PetDose,
    SeriesIds,
    ball,
    ct_series,
    pet_series,
    scan_time_after,
    segmentation,
    write_datasets,
)

CT_GEOMETRY = Geometry((12, 16, 16), (2.0, 1.0, 1.0), (-8.0, -8.0, 0.0))
PET_GEOMETRY = Geometry((6, 8, 8), (4.0, 2.0, 2.0), (-7.5, -7.5, 1.0))
LESION_CENTRE = (5, 8, 8)  # CT index; LPS (0, 0, 10)
DOSE = PetDose(scan_start=scan_time_after(60))
CONCENTRATION_BQ_ML = 5000.0


@dataclass
class StudyFolder:
    folder: Path
    ct_uid: str
    other_ct_uid: str
    pet_uid: str
    nac_pet_uid: str


def write_study(
    folder: Path,
    dose: PetDose = DOSE,
    seg_frame_of_reference: str | None = None,
    seg_references_series: bool = True,
    pet_frame_of_reference: str | None = None,
) -> StudyFolder:
    """Write a study with two CTs, an attenuation-corrected and an uncorrected PET, and a SEG."""
    ids = SeriesIds()
    hu = np.full(CT_GEOMETRY.shape, -50.0)
    lesion = ball(CT_GEOMETRY.shape, LESION_CENTRE, 2.0)
    hu[lesion] = 35.0
    ct = ct_series(hu, CT_GEOMETRY, ids)
    other_ct = ct_series(hu, CT_GEOMETRY, SeriesIds(study_uid=ids.study_uid))

    pet_ids = SeriesIds(
        study_uid=ids.study_uid, frame_of_reference_uid=pet_frame_of_reference or ids.frame_of_reference_uid
    )
    nac_ids = SeriesIds(study_uid=ids.study_uid, frame_of_reference_uid=ids.frame_of_reference_uid)
    activity = np.full(PET_GEOMETRY.shape, CONCENTRATION_BQ_ML)
    acquisition = [dose.scan_start] * 3 + [scan_time_after(90)] * 3
    pet = pet_series(activity, PET_GEOMETRY, pet_ids, dose, acquisition_times=acquisition)
    nac = pet_series(activity, PET_GEOMETRY, nac_ids, replace(dose, corrected_image=("DECY",)))

    seg = segmentation(ct, {"Tumour": lesion | ball(CT_GEOMETRY.shape, (9, 3, 3), 1.0)})
    seg.StudyInstanceUID = ids.study_uid
    if seg_frame_of_reference:
        seg.FrameOfReferenceUID = seg_frame_of_reference
    if not seg_references_series:
        del seg.ReferencedSeriesSequence

    write_datasets(ct, folder / "a", "ct")
    write_datasets(other_ct, folder / "b", "ct")
    write_datasets(pet + nac, folder / "c", "pt")
    write_datasets([seg], folder / "d", "seg")
    (folder / "README.txt").write_text("not DICOM")
    return StudyFolder(folder, ct[0].SeriesInstanceUID, other_ct[0].SeriesInstanceUID, pet[0].SeriesInstanceUID, nac[0].SeriesInstanceUID)


def test_load_study_chooses_series_and_measures(tmp_path: Path) -> None:
    study = write_study(tmp_path)

    inputs = load_study([tmp_path])

    assert inputs.ct_series_uid == study.ct_uid
    assert inputs.pet_series_uid == study.pet_uid
    assert inputs.choices["ct"] == {"series_instance_uid": study.ct_uid, "reason": "referenced by the SEG"}
    assert inputs.choices["pet"]["reason"] == "attenuation corrected, most instances of 1 corrected PET series"
    assert inputs.suv.factor * CONCENTRATION_BQ_ML == pytest.approx(1.3817, abs=1e-4)
    assert len(inputs.lesions) == 2
    main = inputs.lesions[0]
    assert main.voxels == int(ball(CT_GEOMETRY.shape, LESION_CENTRE, 2.0).sum())
    assert main.centroid_mm == pytest.approx((0.0, 0.0, 10.0))
    assert main.hu_mean == pytest.approx(35.0)
    assert main.suv_max == pytest.approx(1.3817, abs=1e-4)
    assert main.suv_peak == pytest.approx(1.3817, abs=1e-4)


def test_load_study_ct_by_pet_frame_of_reference(tmp_path: Path) -> None:
    study = write_study(tmp_path, seg_references_series=False)

    inputs = load_study([tmp_path])

    assert inputs.choices["ct"] == {
        "series_instance_uid": study.ct_uid,
        "reason": "shares the PET frame of reference",
    }


def test_load_study_pet_on_other_frame_of_reference(tmp_path: Path) -> None:
    study = write_study(tmp_path, pet_frame_of_reference="1.2.3.88")

    with pytest.raises(StudyError, match="use different frames of reference") as error:
        load_study([tmp_path])

    assert study.pet_uid in str(error.value)
    assert study.ct_uid in str(error.value)


def test_load_study_decay_none_uses_each_bed_time(tmp_path: Path) -> None:
    write_study(tmp_path, replace(DOSE, decay_correction="NONE"))

    inputs = load_study([tmp_path])

    # The lesion at z = 10 mm lies in PET slices 2 (z 9) and 3 (z 13): bed 1 at 60 min, bed 2 at 90 min.
    lesion = inputs.lesions[0]
    assert lesion.suv_mean is not None
    assert float(inputs.pet.array[2].min()) == pytest.approx(1.3817, abs=1e-4)
    assert float(inputs.pet.array[2].max()) == pytest.approx(1.3817, abs=1e-4)
    assert float(inputs.pet.array[3].min()) == pytest.approx(1.6699, abs=1e-4)
    assert lesion.suv_max == pytest.approx(1.6699, abs=1e-4)


def test_load_study_without_pet(tmp_path: Path) -> None:
    write_study(tmp_path)
    shutil.rmtree(tmp_path / "c")

    inputs = load_study([tmp_path])

    assert inputs.pet is None
    assert inputs.pet_series_uid is None
    assert inputs.suv == SuvResult(factor=None, reason="the study has no PET series")
    assert inputs.choices["pet"]["reason"] == "the study has no PET series, so SUV values are empty"
    assert inputs.lesions[0].suv_max is None
    assert inputs.lesions[0].hu_mean == pytest.approx(35.0)


def test_load_study_without_seg(tmp_path: Path) -> None:
    geometry = Geometry((2, 4, 4))
    write_datasets(ct_series(np.zeros(geometry.shape), geometry), tmp_path, "ct")

    with pytest.raises(StudyError, match="the study has no SEG"):
        load_study([tmp_path])


def test_load_study_uses_the_named_seg(tmp_path: Path) -> None:
    write_study(tmp_path)
    older = pydicom.dcmread(next((tmp_path / "d").iterdir()))
    newer = pydicom.dcmread(next((tmp_path / "d").iterdir()))
    newer.SeriesInstanceUID = generate_uid()
    newer.SOPInstanceUID = newer.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    newer.ContentDate = str(int(older.ContentDate) + 1)
    (tmp_path / "e").mkdir()
    newer.save_as(tmp_path / "e" / "seg.dcm")

    by_default = load_study([tmp_path])
    named = load_study([tmp_path], seg_series_uid=older.SeriesInstanceUID)

    assert by_default.seg.SeriesInstanceUID == newer.SeriesInstanceUID
    assert by_default.choices["seg"]["reason"] == "newest content date/time of 2 SEGs"
    assert named.seg.SeriesInstanceUID == older.SeriesInstanceUID
    assert named.choices["seg"]["reason"] == "the SEG series named for this analysis"
    with pytest.raises(StudyError, match="SEG series 1.2.3.99 is not among the study's files"):
        load_study([tmp_path], seg_series_uid="1.2.3.99")


def test_load_study_seg_on_other_frame_of_reference(tmp_path: Path) -> None:
    write_study(tmp_path, seg_frame_of_reference="1.2.3.77")

    with pytest.raises(SegmentationError, match="uses frame of reference 1.2.3.77"):
        load_study([tmp_path])


def run_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "lesions", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "COLUMNS": "200"},
    )


def test_lesions_command_json(tmp_path: Path) -> None:
    study = write_study(tmp_path)

    result = run_cli(str(tmp_path), "--json")

    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["ct_series_uid"] == study.ct_uid
    assert output["pet_series_uid"] == study.pet_uid
    assert output["suv"]["factor"] * CONCENTRATION_BQ_ML == pytest.approx(1.3817, abs=1e-4)
    assert [lesion["component"] for lesion in output["lesions"]] == [1, 2]
    first = output["lesions"][0]
    assert first["segment_number"] == 1
    assert first["centroid_mm"] == pytest.approx([0.0, 0.0, 10.0])
    assert len(first["bbox_mm"]) == 6
    assert first["volume_ml"] == pytest.approx(first["voxels"] * 0.002)
    assert first["suv_max"] == pytest.approx(1.3817, abs=1e-4)
    assert first["hu_mean"] == pytest.approx(35.0)


def test_lesions_command_table(tmp_path: Path) -> None:
    write_study(tmp_path)

    result = run_cli(str(tmp_path))

    assert result.returncode == 0, result.stderr
    assert "SUV factor" in result.stdout
    assert "Tumour" in result.stdout


def test_lesions_command_reports_missing_suv(tmp_path: Path) -> None:
    write_study(tmp_path, replace(DOSE, weight_kg=None))

    output = json.loads(run_cli(str(tmp_path), "--json").stdout)

    assert output["suv"] == {"factor": None, "reason": "Patient's Weight (0010,1030) is missing or zero"}
    assert output["lesions"][0]["suv_max"] is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: None, "no DICOM files were found"),
        (lambda folder: write_study(folder, seg_frame_of_reference="1.2.3.77"), "registered SEGs are not supported"),
    ],
    ids=["empty-folder", "seg-other-frame-of-reference"],
)
def test_lesions_command_errors(tmp_path: Path, make, message: str) -> None:  # noqa: ANN001
    make(tmp_path)

    result = run_cli(str(tmp_path), "--json")

    assert result.returncode == 1
    assert result.stdout == ""
    assert message in result.stderr
    assert "Traceback" not in result.stderr
