"""A small CT study with a SEG and three SRs for the viewer test.

The CT is a water cylinder with two spherical lesions. The SEG has one segment per
lesion. All SRs are TID 1500 Measurement Reports built from the phantom's true
lesion masks, each lesion at its true Finding Site:

- the worker's report, from ``dicom.sr.build_measurement_report``: per lesion a
  volumetric group (volume, SUVs, site probabilities) and a planar group that share
  the Tracking Unique Identifier;
- the worker's outline document (``outlines_only``, Enhanced SR): only the planar
  groups (TID 1410), each holding one lesion's outline, its area and its Finding Site;
- the worker's report in its fallback SOP class, Enhanced SR, which the worker
  sends to a destination that rejects Comprehensive 3D SR.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicom.sr import (
    OUTLINE_SERIES_DESCRIPTION,
    SERIES_DESCRIPTION,
    AlgorithmInfo,
    LesionFinding,
    ReportInputs,
    SiteCandidate,
    SrSopClass,
    build_measurement_report,
    lesion_tracking_uid,
)
from tests.support.sr_inputs import SyntheticLesion

ROWS = COLUMNS = 96
SLICES = 12
PIXEL_SPACING_MM = 2.0
SLICE_THICKNESS_MM = 3.0
MANUFACTURER = "HCL-AL test"


@dataclass(frozen=True)
class PhantomLesion:
    """A spherical lesion: centre voxel ``(slice, row, column)``, radius in voxels, site, SUVmax."""

    label: str
    centre: tuple[int, int, int]
    radius: int
    finding_site: Code
    suv_max: float


LESIONS = (
    PhantomLesion("lesion 1", (5, 40, 34), 6, codes.SCT.Liver, 7.5),
    PhantomLesion("lesion 2", (7, 52, 64), 5, codes.SCT.Spleen, 4.0),
)
SITE_PROBABILITY = 0.9
# The next most likely sites of every lesion, written as the report's alternatives.
ALTERNATIVE_SITES = ((codes.SCT.Kidney, 0.05), (codes.SCT.Stomach, 0.03))
WORKER_SR_SERIES_NUMBER = 9001
OUTLINE_SR_SERIES_NUMBER = 9002
FALLBACK_SR_SERIES_NUMBER = 9003


@dataclass(frozen=True)
class PhantomStudy:
    """Files of the phantom study, ready to upload."""

    study_instance_uid: str
    ct_paths: list[Path]
    seg_path: Path
    worker_sr_path: Path
    outline_sr_path: Path
    fallback_sr_path: Path
    lesions: tuple[PhantomLesion, ...]

    @property
    def paths(self) -> list[Path]:
        """Every file of the study."""
        reports = [self.worker_sr_path, self.outline_sr_path, self.fallback_sr_path]
        return [*self.ct_paths, self.seg_path, *reports]


def write_phantom_study(folder: Path) -> PhantomStudy:
    """Write the CT series, its SEG and both SRs under ``folder``.

    Parameters
    ----------
    folder
        Output folder; created if missing.

    Returns
    -------
    PhantomStudy
        Paths of every file written and the lesions they contain.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_instance_uid = generate_uid()

    ct_datasets = build_ct_series(study_instance_uid)
    ct_paths = []
    for dataset in ct_datasets:
        path = folder / f"ct-{dataset.InstanceNumber:03d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        ct_paths.append(path)

    seg = build_seg(ct_datasets)
    seg_path = folder / "seg.dcm"
    seg.save_as(seg_path)

    worker_report = build_worker_report(ct_datasets, seg)
    worker_sr_path = folder / "sr-worker.dcm"
    worker_report.save_as(worker_sr_path)
    outline_sr_path = folder / "sr-outlines.dcm"
    build_worker_report(
        ct_datasets, seg, SrSopClass.ENHANCED, OUTLINE_SR_SERIES_NUMBER, outlines_only=True
    ).save_as(outline_sr_path)
    fallback_sr_path = folder / "sr-worker-enhanced.dcm"
    fallback = build_worker_report(
        ct_datasets, seg, SrSopClass.ENHANCED, FALLBACK_SR_SERIES_NUMBER
    )
    fallback.save_as(fallback_sr_path)

    return PhantomStudy(
        study_instance_uid,
        ct_paths,
        seg_path,
        worker_sr_path,
        outline_sr_path,
        fallback_sr_path,
        LESIONS,
    )


def build_ct_series(study_instance_uid: str) -> list[Dataset]:
    """Build an axial CT series of a water cylinder (0 HU) containing the lesions (60 HU)."""
    series_instance_uid = generate_uid()
    frame_of_reference_uid = generate_uid()
    volume = phantom_hounsfield_units()
    now = datetime.datetime.now()

    datasets = []
    for index in range(SLICES):
        dataset = Dataset()
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop_instance_uid = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid

        # Patient and General Study
        dataset.PatientName = "Phantom^Viewer"
        dataset.PatientID = "HCLAL-VIEWER-1"
        dataset.PatientBirthDate = ""
        dataset.PatientSex = "O"
        dataset.StudyInstanceUID = study_instance_uid
        dataset.StudyDate = now.strftime("%Y%m%d")
        dataset.StudyTime = now.strftime("%H%M%S")
        dataset.StudyID = "1"
        dataset.AccessionNumber = "VIEWER1"
        dataset.ReferringPhysicianName = ""
        dataset.StudyDescription = "HCL-AL viewer phantom"

        # General Series, Frame of Reference, General Equipment
        dataset.Modality = "CT"
        dataset.SeriesInstanceUID = series_instance_uid
        dataset.SeriesNumber = 1
        dataset.SeriesDescription = "Phantom CT"
        dataset.FrameOfReferenceUID = frame_of_reference_uid
        dataset.PositionReferenceIndicator = ""
        dataset.Manufacturer = MANUFACTURER

        # General Image, Image Plane, CT Image
        dataset.SOPClassUID = CTImageStorage
        dataset.SOPInstanceUID = sop_instance_uid
        dataset.InstanceNumber = index + 1
        dataset.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        dataset.ImagePositionPatient = [
            -COLUMNS * PIXEL_SPACING_MM / 2,
            -ROWS * PIXEL_SPACING_MM / 2,
            index * SLICE_THICKNESS_MM,
        ]
        dataset.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
        dataset.SliceThickness = SLICE_THICKNESS_MM
        dataset.KVP = 120
        dataset.RescaleIntercept = -1024
        dataset.RescaleSlope = 1
        dataset.RescaleType = "HU"
        dataset.WindowCenter = 40
        dataset.WindowWidth = 400

        # Image Pixel
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.Rows = ROWS
        dataset.Columns = COLUMNS
        dataset.BitsAllocated = 16
        dataset.BitsStored = 16
        dataset.HighBit = 15
        dataset.PixelRepresentation = 0
        stored = (volume[index] + 1024).astype(np.uint16)
        dataset.PixelData = stored.tobytes()

        datasets.append(dataset)
    return datasets


def phantom_hounsfield_units() -> np.ndarray:
    """Return the phantom in HU, shape ``(slices, rows, columns)``: air, water, lesions."""
    slices, rows, columns = np.mgrid[0:SLICES, 0:ROWS, 0:COLUMNS]
    centre = (ROWS - 1) / 2
    volume = np.full((SLICES, ROWS, COLUMNS), -1000, dtype=np.int16)
    volume[(rows - centre) ** 2 + (columns - centre) ** 2 <= (0.42 * ROWS) ** 2] = 0
    for lesion in LESIONS:
        volume[lesion_mask(lesion, slices, rows, columns)] = 60
    return volume


def lesion_mask(
    lesion: PhantomLesion, slices: np.ndarray, rows: np.ndarray, columns: np.ndarray
) -> np.ndarray:
    """Return the voxels within ``lesion.radius`` of its centre, in voxel units."""
    centre_slice, centre_row, centre_column = lesion.centre
    distance_sq = (
        (slices - centre_slice) ** 2 + (rows - centre_row) ** 2 + (columns - centre_column) ** 2
    )
    return distance_sq <= lesion.radius**2


def build_seg(ct_datasets: list[Dataset]) -> hd.seg.Segmentation:
    """Build a binary SEG with one segment per lesion on the CT grid."""
    slices, rows, columns = np.mgrid[0:SLICES, 0:ROWS, 0:COLUMNS]
    masks = np.stack(
        [lesion_mask(lesion, slices, rows, columns) for lesion in LESIONS], axis=-1
    ).astype(np.uint8)

    algorithm = hd.AlgorithmIdentificationSequence(
        name="viewer phantom", version="1", family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=lesion.label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, lesion in enumerate(LESIONS, start=1)
    ]
    return hd.seg.Segmentation(
        source_images=ct_datasets,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        manufacturer_model_name="viewer phantom",
        software_versions="1",
        device_serial_number="1",
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description="Phantom lesions",
    )


def ct_affine(ct_datasets: list[Dataset]) -> np.ndarray:
    """Return the index-to-LPS matrix of the phantom CT, columns (slice, row, column) steps."""
    affine = np.eye(4)
    affine[:3, 0] = (0.0, 0.0, SLICE_THICKNESS_MM)
    affine[:3, 1] = (0.0, PIXEL_SPACING_MM, 0.0)
    affine[:3, 2] = (PIXEL_SPACING_MM, 0.0, 0.0)
    affine[:3, 3] = [float(value) for value in ct_datasets[0].ImagePositionPatient]
    return affine


def lesion_volume_ml(lesion: PhantomLesion) -> float:
    """Return the lesion's volume: its voxel count times the voxel volume."""
    slices, rows, columns = np.mgrid[0:SLICES, 0:ROWS, 0:COLUMNS]
    voxels = int(lesion_mask(lesion, slices, rows, columns).sum())
    return voxels * PIXEL_SPACING_MM**2 * SLICE_THICKNESS_MM / 1000.0


def lesion_measurement(
    number: int, lesion: PhantomLesion, affine: np.ndarray
) -> SyntheticLesion:
    """Return the lesion's measurements as the lesion stage would.

    SUVmean and SUVpeak are fixed fractions of the lesion's SUVmax.
    """
    slices, rows, columns = np.mgrid[0:SLICES, 0:ROWS, 0:COLUMNS]
    centre_mm = affine @ np.array([*lesion.centre, 1.0])
    return SyntheticLesion(
        segment_number=number,
        component=1,
        centroid_mm=tuple(float(value) for value in centre_mm[:3]),
        volume_ml=lesion_volume_ml(lesion),
        suv_max=lesion.suv_max,
        suv_mean=lesion.suv_max * 0.6,
        suv_peak=lesion.suv_max * 0.8,
        mask=lesion_mask(lesion, slices, rows, columns),
        mask_origin=(0, 0, 0),
    )


def build_worker_report(
    ct_datasets: list[Dataset],
    seg: Dataset,
    sop_class: SrSopClass = SrSopClass.COMPREHENSIVE_3D,
    series_number: int = WORKER_SR_SERIES_NUMBER,
    outlines_only: bool = False,
) -> Dataset:
    """Build the worker's SR for the phantom with ``dicom.sr``, each lesion at its true site.

    With ``outlines_only`` it is the worker's outline document: planar groups only.
    """
    affine = ct_affine(ct_datasets)
    alternatives = [SiteCandidate(code, probability) for code, probability in ALTERNATIVE_SITES]
    findings = [
        LesionFinding(
            lesion=lesion_measurement(number, lesion, affine),
            tracking_uid=lesion_tracking_uid(seg.SOPInstanceUID, number, 1),
            site=SiteCandidate(lesion.finding_site, SITE_PROBABILITY),
            alternatives=alternatives,
        )
        for number, lesion in enumerate(LESIONS, start=1)
    ]

    algorithm = AlgorithmInfo(
        name="HCL-AL",
        version="viewer-test",
        checkpoint_hashes=["coarse sha256:0", "fine sha256:0"],
        device_uid=generate_uid(),
    )
    inputs = ReportInputs(
        ct_images=ct_datasets,
        ct_affine=affine,
        seg=seg,
        findings=findings,
        algorithm=algorithm,
        sop_class=sop_class,
        series_number=series_number,
        outlines_only=outlines_only,
        series_description=OUTLINE_SERIES_DESCRIPTION if outlines_only else SERIES_DESCRIPTION,
    )
    return build_measurement_report(inputs)
