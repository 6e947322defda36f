"""Small synthetic CT series, SEG and lesions to build Structured Reports in tests.

The CT is 8 axial slices of 32 x 32 pixels (0.8 x 0.7 mm pixels, 2.5 mm
slices). The SEG made with highdicom has two segments: segment 1 is one
lesion, segment 2 has two separate components, so the report gets three
lesions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicom.sr import (
    AlgorithmInfo,
    LesionFinding,
    ReportInputs,
    SiteCandidate,
    laterality_code,
    lesion_tracking_uid,
)

SLICES, ROWS, COLUMNS = 8, 32, 32
ROW_SPACING, COLUMN_SPACING, SLICE_SPACING = 0.8, 0.7, 2.5
ORIGIN = (-12.0, -20.0, -100.0)

# Sites with real SNOMED CT codes, as the vocabulary would supply them.
LIVER = Code("10200004", "SCT", "Liver")
LUNG = Code("39607008", "SCT", "Lung")
RIB = Code("113197003", "SCT", "Rib")
PLEURA = Code("3120008", "SCT", "Pleura")


@dataclass
class SyntheticLesion:
    """The fields of the lesion contract that the report uses."""

    segment_number: int
    component: int
    centroid_mm: tuple[float, float, float]
    volume_ml: float
    suv_max: float | None
    suv_mean: float | None
    suv_peak: float | None
    mask: np.ndarray
    mask_origin: tuple[int, int, int]


def ct_affine() -> np.ndarray:
    """Return the index-to-LPS matrix of the synthetic CT (identity orientation)."""
    affine = np.eye(4)
    affine[:3, 0] = (0.0, 0.0, SLICE_SPACING)
    affine[:3, 1] = (0.0, ROW_SPACING, 0.0)
    affine[:3, 2] = (COLUMN_SPACING, 0.0, 0.0)
    affine[:3, 3] = ORIGIN
    return affine


def make_ct_series(
    patient_name: str = "Doe^Jane",
    character_set: str | None = None,
    study_uid: str | None = None,
) -> list[Dataset]:
    """Return the CT series as in-memory CT Image Storage datasets with pixel data."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_of_reference = generate_uid()
    images = []
    for index in range(SLICES):
        image = Dataset()
        image.file_meta = FileMetaDataset()
        image.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        image.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = generate_uid()
        image.file_meta.MediaStorageSOPInstanceUID = sop_uid
        if character_set:
            image.SpecificCharacterSet = character_set
        image.SOPClassUID = CTImageStorage
        image.SOPInstanceUID = sop_uid
        image.StudyInstanceUID = study_uid
        image.SeriesInstanceUID = series_uid
        image.FrameOfReferenceUID = frame_of_reference
        image.PatientName = patient_name
        image.PatientID = "SYN-0001"
        image.PatientBirthDate = "19600101"
        image.PatientSex = "F"
        image.StudyID = "1"
        image.StudyDate = "20260101"
        image.StudyTime = "120000"
        image.AccessionNumber = "ACC0001"
        image.ReferringPhysicianName = ""
        image.StudyDescription = "PET/CT whole body"
        image.Modality = "CT"
        image.Manufacturer = "Synthetic"
        image.SeriesNumber = 2
        image.InstanceNumber = index + 1
        image.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        image.PositionReferenceIndicator = ""
        image.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + index * SLICE_SPACING]
        image.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        image.PixelSpacing = [ROW_SPACING, COLUMN_SPACING]
        image.SliceThickness = SLICE_SPACING
        image.KVP = 120
        image.Rows, image.Columns = ROWS, COLUMNS
        image.SamplesPerPixel = 1
        image.PhotometricInterpretation = "MONOCHROME2"
        image.BitsAllocated = 16
        image.BitsStored = 16
        image.HighBit = 15
        image.PixelRepresentation = 1
        image.RescaleIntercept = 0
        image.RescaleSlope = 1
        image.RescaleType = "HU"
        image.PixelData = np.full((ROWS, COLUMNS), 40, dtype=np.int16).tobytes()
        images.append(image)
    return images


def make_labelmap() -> np.ndarray:
    """Return the segment labels on the CT grid ``(slices, rows, columns)``.

    Segment 1: an ellipsoid-like block around slice 3 with a notch.
    Segment 2: two separate boxes (components 1 and 2).
    """
    labels = np.zeros((SLICES, ROWS, COLUMNS), dtype=np.uint8)
    zz, yy, xx = np.mgrid[:SLICES, :ROWS, :COLUMNS]
    ellipsoid = ((zz - 3) / 2.0) ** 2 + ((yy - 10) / 5.0) ** 2 + ((xx - 9) / 6.0) ** 2 <= 1.0
    labels[ellipsoid] = 1
    labels[2:5, 22:27, 4:9] = 2
    labels[5:7, 24:29, 20:28] = 2
    return labels


def make_seg(ct_images: Sequence[Dataset], labels: np.ndarray) -> hd.seg.Segmentation:
    """Return a binary highdicom SEG with one segment per label value."""
    descriptions = []
    for number in range(1, int(labels.max()) + 1):
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=f"Lesions {number}",
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Lesion,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        )
    return hd.seg.Segmentation(
        source_images=ct_images,
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=3,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Synthetic",
        manufacturer_model_name="Test SEG",
        software_versions="1",
        device_serial_number="1",
    )


def lesions_from_labels(labels: np.ndarray, affine: np.ndarray) -> list[SyntheticLesion]:
    """Split each segment into 6-connected components and measure them as the pipeline would."""
    from scipy import ndimage

    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    lesions = []
    for number in range(1, int(labels.max()) + 1):
        components, count = ndimage.label(labels == number)
        for component in range(1, count + 1):
            voxels = np.argwhere(components == component)
            low, high = voxels.min(axis=0), voxels.max(axis=0) + 1
            mask = components[low[0]:high[0], low[1]:high[1], low[2]:high[2]] == component
            centroid = affine @ np.append(voxels.mean(axis=0), 1.0)
            lesions.append(
                SyntheticLesion(
                    segment_number=number,
                    component=component,
                    centroid_mm=tuple(float(v) for v in centroid[:3]),
                    volume_ml=float(len(voxels) * voxel_ml),
                    suv_max=4.0 + number + component,
                    suv_mean=2.0 + number,
                    suv_peak=3.5 + number,
                    mask=mask,
                    mask_origin=tuple(int(v) for v in low),
                )
            )
    return lesions


def default_findings(lesions: Sequence[SyntheticLesion], seg_uid: str) -> list[LesionFinding]:
    """Return one finding per lesion with a chosen site and two alternatives."""
    choices = [
        (SiteCandidate(LIVER, 0.81), [SiteCandidate(LUNG, 0.12, laterality_code("right"))], False),
        (
            SiteCandidate(RIB, 0.44, laterality_code("left")),
            [SiteCandidate(PLEURA, 0.31, laterality_code("left")), SiteCandidate(LUNG, 0.2, laterality_code("left"))],
            True,
        ),
        (SiteCandidate(LUNG, 0.66, laterality_code("bilateral")), [], False),
    ]
    findings = []
    for index, lesion in enumerate(lesions):
        site, alternatives, uncertain = choices[index % len(choices)]
        findings.append(
            LesionFinding(
                lesion=lesion,
                tracking_uid=lesion_tracking_uid(seg_uid, lesion.segment_number, lesion.component),
                site=site,
                alternatives=alternatives,
                uncertain=uncertain,
            )
        )
    return findings


def make_report_inputs(patient_name: str = "Doe^Jane", character_set: str | None = None, **changes) -> ReportInputs:
    """Return complete :class:`ReportInputs` for the synthetic study; ``changes`` override fields."""
    ct_images = make_ct_series(patient_name=patient_name, character_set=character_set)
    affine = ct_affine()
    labels = make_labelmap()
    seg = make_seg(ct_images, labels)
    lesions = lesions_from_labels(labels, affine)
    inputs = ReportInputs(
        ct_images=ct_images,
        ct_affine=affine,
        seg=seg,
        findings=default_findings(lesions, seg.SOPInstanceUID),
        algorithm=AlgorithmInfo(
            name="HCL-AL",
            version="0.1.0",
            checkpoint_hashes=("coarse sha256:" + "a" * 64, "fine sha256:" + "b" * 64),
            device_uid="1.2.826.0.1.3680043.8.498.1",
        ),
    )
    return replace(inputs, **changes)
