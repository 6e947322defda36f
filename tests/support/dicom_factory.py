"""Small CT, PET and SEG data sets for tests, built with pydicom and highdicom.

The images are tiny (default 16 x 16 pixels) but carry every attribute the
receiver and the study loader read: UIDs, geometry, modality and pixel data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)


def _image(
    sop_class_uid: str,
    modality: str,
    study_uid: str,
    series_uid: str,
    index: int,
    size: int,
    frame_of_reference_uid: str,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.Modality = modality
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TEST-0001"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC0001"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "test"
    ds.SeriesNumber = 2 if modality == "CT" else 3
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(index) * 2.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [2.0, 2.0]
    ds.SliceThickness = 2.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if modality == "CT" else 0
    ds.RescaleIntercept = -1024.0 if modality == "CT" else 0.0
    ds.RescaleSlope = 1.0
    dtype = np.int16 if modality == "CT" else np.uint16
    pixels = (np.arange(size * size, dtype=np.int64).reshape(size, size) + index * 7) % 2000
    ds.PixelData = pixels.astype(dtype).tobytes()
    return ds


def ct_series(
    count: int,
    *,
    study_uid: str | None = None,
    size: int = 16,
    frame_of_reference_uid: str | None = None,
) -> list[Dataset]:
    """Return ``count`` CT Image Storage slices of one new series, 2 mm apart."""
    return _series(CTImageStorage, "CT", count, study_uid, size, frame_of_reference_uid)


def pet_series(
    count: int,
    *,
    study_uid: str | None = None,
    size: int = 16,
    frame_of_reference_uid: str | None = None,
) -> list[Dataset]:
    """Return ``count`` PET Image Storage slices of one new series, 2 mm apart."""
    return _series(PositronEmissionTomographyImageStorage, "PT", count, study_uid, size, frame_of_reference_uid)


def _series(
    sop_class_uid: str,
    modality: str,
    count: int,
    study_uid: str | None,
    size: int,
    frame_of_reference_uid: str | None,
) -> list[Dataset]:
    """Return ``count`` slices of one new series, generating the UIDs not given."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame = frame_of_reference_uid or generate_uid()
    return [_image(sop_class_uid, modality, study_uid, series_uid, i, size, frame) for i in range(count)]


def segmentation(source_images: Sequence[Dataset], mask: np.ndarray | None = None) -> Dataset:
    """Return a binary highdicom Segmentation of ``source_images`` with one segment.

    ``mask`` has shape ``(len(source_images), rows, columns)``; the default marks a
    4 x 4 square on every slice. The SEG references every source image in its
    Common Instance Reference module and in the frames' Derivation Image Sequence.
    """
    import highdicom as hd  # noqa: PLC0415 - slow import, only tests that build a SEG pay for it
    from pydicom.sr.codedict import codes  # noqa: PLC0415

    first = source_images[0]
    if mask is None:
        mask = np.zeros((len(source_images), first.Rows, first.Columns), dtype=bool)
        mask[:, 4:8, 4:8] = True

    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion 1",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    return hd.seg.Segmentation(
        source_images=list(source_images),
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=generate_uid(),
        series_number=100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
        omit_empty_frames=False,
    )


def write(dataset: Dataset, path: Path) -> Path:
    """Write ``dataset`` as a DICOM file (PS3.10) at ``path`` and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def write_all(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    """Write each data set as ``<folder>/<SOPInstanceUID>.dcm``; return the paths in order."""
    return [write(ds, folder / f"{ds.SOPInstanceUID}.dcm") for ds in datasets]


def encoded(dataset: Dataset) -> bytes:
    """Return ``dataset`` encoded as a DICOM file (preamble, File Meta Information, data set)."""
    buffer = DicomBytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dataset_bytes(data: bytes) -> bytes:
    """Return the data set after the File Meta Information of a PS3.10 file's bytes.

    (0002,0000) File Meta Information Group Length comes first (PS3.10 7.1), so its
    value at byte 140 gives where the data set starts.
    """
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length :]
