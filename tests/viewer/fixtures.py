"""A small CT study with a SEG and a TID 1500 SR for the viewer test.

The CT is a water cylinder with two spherical lesions. The SEG has one segment per
lesion. The SR is a TID 1500 Measurement Report with one TID 1410 planar group per
lesion: a closed 2-D POLYLINE (SCOORD) around the lesion on its centre CT slice,
a Finding Site code and the outline's area.
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

ROWS = COLUMNS = 96
SLICES = 12
PIXEL_SPACING_MM = 2.0
SLICE_THICKNESS_MM = 3.0
OUTLINE_POINTS = 24
SR_SERIES_NUMBER = 3
MANUFACTURER = "HCL-AL test"


@dataclass(frozen=True)
class PhantomLesion:
    """A spherical lesion: centre voxel ``(slice, row, column)``, radius in voxels, site."""

    label: str
    centre: tuple[int, int, int]
    radius: int
    finding_site: Code


LESIONS = (
    PhantomLesion("lesion 1", (5, 40, 34), 6, codes.SCT.Liver),
    PhantomLesion("lesion 2", (7, 52, 64), 5, codes.SCT.Spleen),
)


@dataclass(frozen=True)
class PhantomStudy:
    """Files of the phantom study, ready to upload."""

    study_instance_uid: str
    ct_paths: list[Path]
    seg_path: Path
    sr_path: Path
    lesions: tuple[PhantomLesion, ...]


def write_phantom_study(folder: Path) -> PhantomStudy:
    """Write the CT series, its SEG and its SR under ``folder``.

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

    sr = build_planar_sr(ct_datasets)
    sr_path = folder / "sr.dcm"
    sr.save_as(sr_path)

    return PhantomStudy(study_instance_uid, ct_paths, seg_path, sr_path, LESIONS)


def build_ct_series(study_instance_uid: str) -> list[Dataset]:
    """Build an axial CT series of a water cylinder (0 HU) holding the lesions (60 HU)."""
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


def new_series_attributes(series_number: int, description: str) -> dict:
    """Return the highdicom keyword arguments of a new one-instance series."""
    return {
        "series_instance_uid": generate_uid(),
        "series_number": series_number,
        "sop_instance_uid": generate_uid(),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "series_description": description,
    }


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
        **new_series_attributes(2, "Phantom lesions"),
    )


def build_planar_sr(ct_datasets: list[Dataset]) -> hd.sr.Comprehensive3DSR:
    """Build a TID 1500 report with one TID 1410 planar group per lesion."""
    groups = [planar_group(lesion, ct_datasets) for lesion in LESIONS]

    observation_context = hd.sr.ObservationContext(
        observer_person_context=None,
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=generate_uid(), name="viewer phantom"
            ),
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=ct_datasets,
        content=report,
        is_complete=True,
        **new_series_attributes(SR_SERIES_NUMBER, "Phantom lesion sites"),
    )


def planar_group(
    lesion: PhantomLesion, ct_datasets: list[Dataset]
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """Outline ``lesion`` on its centre slice as a closed POLYLINE with its Finding Site."""
    centre_slice, centre_row, centre_column = lesion.centre
    source = ct_datasets[centre_slice]
    angles = np.linspace(0.0, 2.0 * np.pi, OUTLINE_POINTS, endpoint=False)

    # SCOORD points are (column, row) in image pixels, PS3.3 C.18.6.1.1; the outline
    # is closed by repeating the first point (PS3.3 C.18.6.1.2, POLYLINE).
    columns = centre_column + 0.5 + lesion.radius * np.cos(angles)
    rows = centre_row + 0.5 + lesion.radius * np.sin(angles)
    outline = np.column_stack([columns, rows])
    outline = np.vstack([outline, outline[:1]])
    area_mm2 = polygon_area(outline) * PIXEL_SPACING_MM**2

    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=outline,
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
        ),
    )
    area = hd.sr.Measurement(
        name=codes.SCT.Area, value=round(area_mm2, 1), unit=codes.UCUM.SquareMillimeter
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=lesion.label),
        referenced_region=region,
        finding_type=codes.SCT.Lesion,
        finding_sites=[hd.sr.FindingSite(anatomic_location=lesion.finding_site)],
        measurements=[area],
    )


def polygon_area(points: np.ndarray) -> float:
    """Return the area of a closed polygon given as ``(N, 2)`` points (shoelace formula)."""
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2.0)
