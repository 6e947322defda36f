"""DICOM files of a phantom study: CT Image, PET Image and Segmentation instances.

CT and PET are written as classic single-frame series on one Frame of Reference; the SEG
(built with highdicom) references the CT instances. UIDs are derived from the seed, so a
seed always gives the same UIDs and the same pixel data.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

from dicom.phantom.volumes import F18_HALF_LIFE_S, PhantomVolumes

logger = logging.getLogger(__name__)

MANUFACTURER = "HCL-AL project"
MODEL_NAME = "Analytic whole-body PET/CT phantom"
SOFTWARE_VERSION = "1"
F18_POSITRON_FRACTION = 0.9673
PET_FRAME_DURATION_MS = 120_000


@dataclass(frozen=True)
class StudyUids:
    """UIDs of one phantom study, derived from its seed."""

    seed: int
    study: str
    frame_of_reference: str
    ct_series: str
    pet_series: str
    seg_series: str
    seg_instance: str

    @classmethod
    def for_seed(cls, seed: int) -> StudyUids:
        """Return the UIDs of ``seed``."""

        def uid(name: str) -> str:
            return generate_uid(entropy_srcs=[f"hclal-phantom/{seed}/{name}"])

        return cls(seed, uid("study"), uid("frame-of-reference"), uid("ct"), uid("pet"), uid("seg"), uid("seg/1"))

    def instance(self, series: str, number: int) -> str:
        """Return the SOP Instance UID of instance ``number`` of ``series`` (``ct`` or ``pet``)."""
        return generate_uid(entropy_srcs=[f"hclal-phantom/{self.seed}/{series}/{number}"])


def _date(value: dt.datetime) -> str:
    return value.strftime("%Y%m%d")


def _time(value: dt.datetime) -> str:
    return value.strftime("%H%M%S")


def _common_dataset(volumes: PhantomVolumes, uids: StudyUids, sop_class: str, sop_instance: str) -> Dataset:
    """Return a dataset with the Patient, General Study, Frame of Reference and Equipment modules."""
    acquisition = volumes.acquisition
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    # Patient
    ds.PatientName = f"PHANTOM^SEED{uids.seed}"
    ds.PatientID = f"PHANTOM-{uids.seed:06d}"
    ds.PatientBirthDate = ""  # Type 2: left empty, the phantom has no birth date.
    ds.PatientSex = "M" if acquisition.male else "F"
    # General Study and Patient Study
    ds.StudyInstanceUID = uids.study
    ds.StudyDate = _date(acquisition.series_time)
    ds.StudyTime = _time(acquisition.series_time)
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"{uids.seed}"
    ds.AccessionNumber = f"PH{uids.seed:08d}"
    ds.StudyDescription = "PET/CT whole body (synthetic phantom)"
    ds.PatientAge = "055Y"
    ds.PatientWeight = f"{acquisition.weight_kg:.1f}"
    ds.PatientSize = f"{acquisition.height_m:.2f}"
    # Frame of Reference
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.SoftwareVersions = SOFTWARE_VERSION
    ds.InstitutionName = "Synthetic"
    return ds


def _image_plane(ds: Dataset, affine: np.ndarray, slice_index: int, spacing: tuple[float, float, float]) -> None:
    """Fill the Image Plane and Image Pixel geometry of one axial slice (PS3.3 C.7.6.2)."""
    position = affine @ np.array([slice_index, 0.0, 0.0, 1.0])
    ds.ImagePositionPatient = [f"{position[0]:.2f}", f"{position[1]:.2f}", f"{position[2]:.2f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[2]:g}"]
    ds.SliceThickness = f"{spacing[0]:g}"
    ds.SliceLocation = f"{position[2]:.2f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15


def ct_datasets(volumes: PhantomVolumes, uids: StudyUids) -> list[Dataset]:
    """Return one CT Image instance per CT slice, head first (PS3.3 A.3)."""
    acquisition = volumes.acquisition
    scan_time = acquisition.series_time - dt.timedelta(minutes=2)
    datasets = []
    for index in range(volumes.ct_hu.shape[0]):
        ds = _common_dataset(volumes, uids, CTImageStorage, uids.instance("ct", index + 1))
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Modality = "CT"
        ds.SeriesInstanceUID = uids.ct_series
        ds.SeriesNumber = 2
        ds.SeriesDescription = "CT whole body 3 mm"
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = _date(scan_time)
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _time(scan_time)
        ds.BodyPartExamined = "WHOLEBODY"
        ds.PatientPosition = "HFS"
        ds.InstanceNumber = index + 1
        ds.AcquisitionNumber = 1
        ds.KVP = "120"
        ds.ConvolutionKernel = "STANDARD"
        ds.ReconstructionDiameter = "512"
        _image_plane(ds, volumes.ct_affine, index, volumes.anatomy.grid.spacing)
        ds.Rows, ds.Columns = volumes.ct_hu.shape[1:]
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = np.ascontiguousarray(volumes.ct_hu[index]).tobytes()
        datasets.append(ds)
    return datasets


def _radiopharmaceutical(volumes: PhantomVolumes) -> Dataset:
    """Return the Radiopharmaceutical Information Sequence item (PS3.3 C.8.9.2)."""
    acquisition = volumes.acquisition
    item = Dataset()
    item.Radiopharmaceutical = "Fluorodeoxyglucose"
    item.RadiopharmaceuticalStartTime = _time(acquisition.injection_time)
    item.RadiopharmaceuticalStartDateTime = acquisition.injection_time.strftime("%Y%m%d%H%M%S")
    item.RadionuclideTotalDose = f"{acquisition.injected_activity_bq:.0f}"
    item.RadionuclideHalfLife = f"{F18_HALF_LIFE_S}"
    item.RadionuclidePositronFraction = f"{F18_POSITRON_FRACTION}"
    item.RadionuclideCodeSequence = Sequence([_code_item(codes.SCT._18Fluorine)])
    item.RadiopharmaceuticalCodeSequence = Sequence([_code_item(codes.SCT.FluorodeoxyglucoseF18)])
    return item


def _code_item(code) -> Dataset:  # noqa: ANN001 - pydicom Code
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def pet_datasets(volumes: PhantomVolumes, uids: StudyUids) -> list[Dataset]:
    """Return one PET Image instance per PET slice in Bq/ml, decay corrected to the series start (PS3.3 A.21)."""
    acquisition = volumes.acquisition
    stored = np.rint(volumes.pet_bqml / volumes.pet_slopes[:, None, None]).astype(np.uint16)
    slices = stored.shape[0]
    orientation = _code_item(codes.SCT.Recumbent)
    orientation.PatientOrientationModifierCodeSequence = Sequence([_code_item(codes.SCT.Supine)])
    gantry = Dataset()
    gantry.CodeValue, gantry.CodingSchemeDesignator, gantry.CodeMeaning = "102540008", "SCT", "headfirst"

    datasets = []
    for index in range(slices):
        ds = _common_dataset(volumes, uids, PositronEmissionTomographyImageStorage, uids.instance("pet", index + 1))
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.Modality = "PT"
        ds.SeriesInstanceUID = uids.pet_series
        ds.SeriesNumber = 3
        ds.SeriesDescription = "PET FDG whole body AC"
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = _date(acquisition.series_time)
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _time(acquisition.series_time)
        ds.BodyPartExamined = "WHOLEBODY"
        # Patient Position is absent because the Patient Orientation Code Sequence replaces it.
        ds.InstanceNumber = index + 1
        # PET Series
        ds.Units = "BQML"
        ds.CountsSource = "EMISSION"
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
        ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "RAN", "NORM", "DTIM"]
        ds.DecayCorrection = "START"
        ds.RandomsCorrectionMethod = "DLYD"
        ds.AttenuationCorrectionMethod = "CT"
        ds.ReconstructionMethod = "OSEM"
        ds.NumberOfSlices = slices
        ds.CollimatorType = "NONE"
        # PET Isotope and NM/PET Patient Orientation
        ds.RadiopharmaceuticalInformationSequence = Sequence([_radiopharmaceutical(volumes)])
        ds.PatientOrientationCodeSequence = Sequence([orientation])
        ds.PatientGantryRelationshipCodeSequence = Sequence([gantry])
        # PET Image
        _image_plane(ds, volumes.pet_affine, index, volumes.pet_grid.spacing)
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = f"{volumes.pet_slopes[index]:.10g}"
        ds.FrameReferenceTime = "0"
        ds.ImageIndex = index + 1
        ds.ActualFrameDuration = PET_FRAME_DURATION_MS
        ds.DecayFactor = "1"
        ds.DoseCalibrationFactor = "1"
        ds.PixelData = np.ascontiguousarray(stored[index]).tobytes()
        datasets.append(ds)
    return datasets


def seg_dataset(volumes: PhantomVolumes, uids: StudyUids, ct: list[Dataset]) -> Dataset:
    """Return a binary SEG with one segment per lesion, numbered from 1, on the CT grid."""
    import highdicom as hd

    label_map = np.zeros(volumes.ct_hu.shape, dtype=np.uint8 if len(volumes.lesions) < 255 else np.uint16)
    for number, (block, mask) in enumerate(volumes.lesion_masks, start=1):
        label_map[block][mask] = number

    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"Lesion {number}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            tracking_uid=generate_uid(entropy_srcs=[f"hclal-phantom/{uids.seed}/lesion/{number}"]),
            tracking_id=f"lesion-{number}",
        )
        for number in range(1, len(volumes.lesions) + 1)
    ]
    seg = hd.seg.Segmentation(
        source_images=ct,
        pixel_array=label_map,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=uids.seg_series,
        series_number=100,
        sop_instance_uid=uids.seg_instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
        device_serial_number="0",
        content_description="Phantom lesions",
        content_creator_name="PHANTOM^GENERATOR",
        content_label="LESIONS",
        omit_empty_frames=True,
    )
    seg.SeriesDescription = "Lesion segmentation (phantom truth)"
    return seg


def write_series(datasets: list[Dataset], folder: Path, prefix: str) -> list[Path]:
    """Write ``datasets`` as ``folder/prefix-NNNN.dcm`` in the DICOM file format (PS3.10)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, ds in enumerate(datasets, start=1):
        path = folder / f"{prefix}-{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.info("wrote %d %s instances of series %s", len(paths), prefix, datasets[0].SeriesInstanceUID)
    return paths
