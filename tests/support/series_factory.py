"""Builders of synthetic CT, PET and SEG instances for tests.

Every builder returns complete pydicom datasets with file meta, so a test can
use them in memory or write them with :func:`write_datasets`. Geometry is
given in LPS millimetres, and voxel arrays are ``(slices, rows, columns)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

#: Half-life of F-18 in seconds (109.77 min).
F18_HALF_LIFE_S = 6586.2
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass
class Geometry:
    """A regular grid: first voxel centre, spacings (slice, row, column) and orientation."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] = (2.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: tuple[float, ...] = AXIAL
    tilt_degrees: float = 0.0

    def positions(self) -> list[tuple[float, float, float]]:
        """Return Image Position (Patient) of each slice.

        With gantry tilt the image plane is rotated about the L axis while the
        slices still step along the table (S) axis.
        """
        return [
            (self.origin[0], self.origin[1], self.origin[2] + index * self.spacing[0])
            for index in range(self.shape[0])
        ]

    def tilted_orientation(self) -> tuple[float, ...]:
        angle = math.radians(self.tilt_degrees)
        if angle == 0:
            return tuple(self.orientation)
        return (1.0, 0.0, 0.0, 0.0, math.cos(angle), math.sin(angle))


@dataclass
class SeriesIds:
    """UIDs shared by the instances of one series."""

    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)


def _base_dataset(sop_class_uid: str, modality: str, ids: SeriesIds) -> Dataset:
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = sop_class_uid
    dataset.SOPClassUID = sop_class_uid
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.Modality = modality
    dataset.StudyInstanceUID = ids.study_uid
    dataset.SeriesInstanceUID = ids.series_uid
    dataset.FrameOfReferenceUID = ids.frame_of_reference_uid
    dataset.PatientName = "Phantom^Test"
    dataset.PatientID = "TEST-0001"
    dataset.PatientBirthDate = "19700101"
    dataset.PatientSex = "O"
    dataset.StudyDate = "20240102"
    dataset.StudyTime = "090000"
    dataset.SeriesDate = "20240102"
    dataset.SeriesTime = "100000"
    dataset.ContentDate = "20240102"
    dataset.ContentTime = "100000"
    dataset.AccessionNumber = "A1"
    dataset.StudyID = "1"
    dataset.SeriesNumber = 1
    dataset.ReferringPhysicianName = ""
    dataset.Manufacturer = "HCLAL tests"
    dataset.PositionReferenceIndicator = ""
    return dataset


def _set_pixels(dataset: Dataset, stored: np.ndarray) -> None:
    dataset.Rows, dataset.Columns = int(stored.shape[-2]), int(stored.shape[-1])
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 1
    dataset.PixelData = np.ascontiguousarray(stored.astype("<i2")).tobytes()


def ct_series(
    values: np.ndarray,
    geometry: Geometry,
    ids: SeriesIds | None = None,
    *,
    slope: float = 1.0,
    intercept: float = -1024.0,
    positions: Sequence[Sequence[float]] | None = None,
) -> list[Dataset]:
    """Build a classic CT series whose rescaled values are ``values`` (HU).

    ``positions`` overrides the slice positions, for gaps and uneven spacing.
    """
    ids = ids or SeriesIds()
    positions = positions or geometry.positions()
    instances = []
    for index, (plane, position) in enumerate(zip(values, positions, strict=True)):
        dataset = _base_dataset(CTImageStorage, "CT", ids)
        dataset.InstanceNumber = len(values) - index
        dataset.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        dataset.ImagePositionPatient = [float(value) for value in position]
        dataset.ImageOrientationPatient = list(geometry.tilted_orientation())
        dataset.PixelSpacing = [geometry.spacing[1], geometry.spacing[2]]
        dataset.SliceThickness = geometry.spacing[0]
        dataset.GantryDetectorTilt = geometry.tilt_degrees
        dataset.KVP = 120
        dataset.RescaleSlope = slope
        dataset.RescaleIntercept = intercept
        dataset.RescaleType = "HU"
        _set_pixels(dataset, np.rint((plane - intercept) / slope))
        instances.append(dataset)
    return instances


@dataclass
class PetDose:
    """Radiopharmaceutical and patient values that decide the SUV factor."""

    weight_kg: float | None = 70.0
    dose_bq: float | None = 370e6
    half_life_s: float | None = F18_HALF_LIFE_S
    injection: datetime | None = datetime(2024, 1, 2, 9, 0, 0)
    scan_start: datetime = datetime(2024, 1, 2, 10, 0, 0)
    decay_correction: str = "START"
    units: str = "BQML"
    corrected_image: tuple[str, ...] = ("ATTN", "DECY")
    use_start_datetime: bool = True


def pet_series(
    values: np.ndarray,
    geometry: Geometry,
    ids: SeriesIds | None = None,
    dose: PetDose | None = None,
    *,
    acquisition_times: Sequence[datetime] | None = None,
) -> list[Dataset]:
    """Build a classic PET series whose rescaled values are ``values`` (Bq/ml).

    Each slice gets its own Rescale Slope, as PET scanners write them.
    """
    ids = ids or SeriesIds()
    dose = dose or PetDose()
    instances = []
    for index, (plane, position) in enumerate(zip(values, geometry.positions(), strict=True)):
        dataset = _base_dataset(PositronEmissionTomographyImageStorage, "PT", ids)
        dataset.InstanceNumber = index + 1
        dataset.ImageType = ["ORIGINAL", "PRIMARY"]
        dataset.ImagePositionPatient = list(position)
        dataset.ImageOrientationPatient = list(geometry.orientation)
        dataset.PixelSpacing = [geometry.spacing[1], geometry.spacing[2]]
        dataset.SliceThickness = geometry.spacing[0]
        _set_pet_module(dataset, dose)
        acquired = acquisition_times[index] if acquisition_times else dose.scan_start
        dataset.AcquisitionDate = acquired.strftime("%Y%m%d")
        dataset.AcquisitionTime = acquired.strftime("%H%M%S")
        peak = float(np.max(np.abs(plane))) or 1.0
        slope = peak / 32000.0
        dataset.RescaleSlope = f"{slope:.10g}"
        dataset.RescaleIntercept = 0
        _set_pixels(dataset, np.rint(plane / float(dataset.RescaleSlope)))
        instances.append(dataset)
    return instances


def _set_pet_module(dataset: Dataset, dose: PetDose) -> None:
    dataset.SeriesDate = dose.scan_start.strftime("%Y%m%d")
    dataset.SeriesTime = dose.scan_start.strftime("%H%M%S")
    dataset.Units = dose.units
    dataset.DecayCorrection = dose.decay_correction
    dataset.CorrectedImage = list(dose.corrected_image)
    if dose.weight_kg is not None:
        dataset.PatientWeight = dose.weight_kg
    info = Dataset()
    info.Radiopharmaceutical = "Fluorodeoxyglucose"
    if dose.dose_bq is not None:
        info.RadionuclideTotalDose = dose.dose_bq
    if dose.half_life_s is not None:
        info.RadionuclideHalfLife = dose.half_life_s
    if dose.injection is not None:
        if dose.use_start_datetime:
            info.RadiopharmaceuticalStartDateTime = dose.injection.strftime("%Y%m%d%H%M%S")
        info.RadiopharmaceuticalStartTime = dose.injection.strftime("%H%M%S")
    dataset.RadiopharmaceuticalInformationSequence = DicomSequence([info])


def enhanced_ct(
    values: np.ndarray,
    geometry: Geometry,
    ids: SeriesIds | None = None,
    *,
    frame_order: Sequence[int] | None = None,
    slopes: Sequence[float] | None = None,
    intercept: float = -1024.0,
) -> Dataset:
    """Build one Enhanced CT instance (PS3.3 A.38) holding all slices as frames.

    ``frame_order`` lists which slice each stored frame holds, so frames can
    be stored out of spatial order. ``slopes`` sets a Rescale Slope per slice
    in the Pixel Value Transformation Sequence.
    """
    ids = ids or SeriesIds()
    order = list(frame_order) if frame_order is not None else list(range(values.shape[0]))
    slopes = list(slopes) if slopes is not None else [1.0] * values.shape[0]
    dataset = _base_dataset(EnhancedCTImageStorage, "CT", ids)
    dataset.InstanceNumber = 1
    dataset.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    dataset.NumberOfFrames = len(order)

    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = list(geometry.orientation)
    measures = Dataset()
    measures.PixelSpacing = [geometry.spacing[1], geometry.spacing[2]]
    measures.SliceThickness = geometry.spacing[0]
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    dataset.SharedFunctionalGroupsSequence = DicomSequence([shared])

    positions = geometry.positions()
    frames = []
    per_frame = []
    for slice_index in order:
        item = Dataset()
        plane = Dataset()
        plane.ImagePositionPatient = list(positions[slice_index])
        transform = Dataset()
        transform.RescaleSlope = slopes[slice_index]
        transform.RescaleIntercept = intercept
        transform.RescaleType = "HU"
        item.PlanePositionSequence = DicomSequence([plane])
        item.PixelValueTransformationSequence = DicomSequence([transform])
        per_frame.append(item)
        frames.append(np.rint((values[slice_index] - intercept) / slopes[slice_index]))
    dataset.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    _set_pixels(dataset, np.stack(frames))
    return dataset


def segmentation(
    source_images: Sequence[Dataset],
    masks: dict[str, np.ndarray] | np.ndarray,
    *,
    fractional: bool = False,
    series_uid: str | None = None,
    labels: Sequence[str] | None = None,
) -> hd.seg.Segmentation:
    """Build a SEG over ``source_images`` with highdicom.

    ``masks`` maps segment labels to ``(slices, rows, columns)`` arrays in the
    sorted order of ``source_images``; boolean for BINARY, float in ``[0, 1]``
    for FRACTIONAL. A single array is one segment, unless ``labels`` is given:
    then it is an integer label map whose value ``n`` marks segment ``n``,
    which keeps memory low for many segments. Empty frames are omitted
    (sparse encoding).
    """
    if isinstance(masks, dict):
        labels = list(masks)
        pixel_array = np.stack(list(masks.values()), axis=-1)
    elif labels is not None:
        pixel_array = masks
    else:
        labels = ["Lesion"]
        pixel_array = masks[..., np.newaxis]
    if fractional:
        pixel_array = pixel_array.astype(np.float32)
    elif pixel_array.dtype.kind == "f" or pixel_array.ndim == 4:
        pixel_array = pixel_array.astype(bool)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
            segmented_property_type=hd.sr.CodedConcept("4147007", "SCT", "Mass"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, label in enumerate(labels, start=1)
    ]
    return hd.seg.Segmentation(
        source_images=list(source_images),
        pixel_array=pixel_array,
        segmentation_type="FRACTIONAL" if fractional else "BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=series_uid or generate_uid(),
        series_number=100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="HCLAL tests",
        manufacturer_model_name="series_factory",
        software_versions="1",
        device_serial_number="1",
        max_fractional_value=255,
    )


def write_datasets(datasets: Sequence[Dataset], folder: Path, prefix: str) -> list[Path]:
    """Write ``datasets`` as numbered files in ``folder`` and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, dataset in enumerate(datasets):
        path = folder / f"{prefix}-{index:04d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def ball(shape: tuple[int, int, int], centre: Sequence[float], radius: float) -> np.ndarray:
    """Return a boolean ball of ``radius`` voxels around ``centre`` (voxel indices)."""
    grid = np.indices(shape).astype(np.float64)
    distance = sum((grid[axis] - centre[axis]) ** 2 for axis in range(3))
    return distance <= radius**2


def scan_time_after(minutes: float, injection: datetime = datetime(2024, 1, 2, 9, 0, 0)) -> datetime:
    """Return the time ``minutes`` after ``injection``."""
    return injection + timedelta(minutes=minutes)
