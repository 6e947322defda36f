"""SEG masks placed on CT and PET grids: encodings, frame order, references and real SEGs."""

from __future__ import annotations

import copy
import io
import json
import random
from dataclasses import replace
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import pack_bits

from dicom.seg import SegmentationError, SegmentMask, read_segmentation, segment_masks
from dicom.volume import Volume, load_series
from tests.support.series_factory import Geometry, SeriesIds, ball, ct_series, segmentation

CT_GEOMETRY = Geometry(shape=(8, 16, 16), spacing=(2.0, 1.0, 1.0), origin=(-8.0, -8.0, 0.0))


def reread(dataset: Dataset) -> Dataset:
    """Write ``dataset`` to bytes and read it back with pydicom, as received from a PACS."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def full_mask(segment: SegmentMask, shape: tuple[int, ...]) -> np.ndarray:
    """Paste a cropped segment mask into an empty array of ``shape``."""
    full = np.zeros(shape, dtype=bool)
    crop = tuple(slice(o, o + n) for o, n in zip(segment.origin, segment.mask.shape, strict=True))
    full[crop] = segment.mask
    return full


@pytest.fixture
def ct() -> tuple[list[Dataset], Volume]:
    instances = ct_series(np.zeros(CT_GEOMETRY.shape), CT_GEOMETRY)
    return instances, load_series(instances)


def shuffle_frames(seg: Dataset, seed: int) -> Dataset:
    """Return a copy of a BINARY SEG with its frames stored in a random order."""
    shuffled = copy.deepcopy(seg)
    frames = shuffled.pixel_array
    order = list(range(frames.shape[0]))
    random.Random(seed).shuffle(order)
    items = list(shuffled.PerFrameFunctionalGroupsSequence)
    shuffled.PerFrameFunctionalGroupsSequence = [items[index] for index in order]
    shuffled.PixelData = pack_bits(frames[order])
    return shuffled


def test_segment_masks_binary_overlapping_sparse_shuffled(ct: tuple[list[Dataset], Volume]) -> None:
    instances, volume = ct
    first = ball(CT_GEOMETRY.shape, (2, 5, 5), 2.0)
    second = ball(CT_GEOMETRY.shape, (3, 6, 6), 3.0)
    seg = segmentation(instances, {"left": first, "right": second})

    masks = segment_masks(reread(shuffle_frames(seg, seed=7)), volume)

    assert [m.segment_number for m in masks] == [1, 2]
    assert [m.segment_label for m in masks] == ["left", "right"]
    assert int(seg.NumberOfFrames) < 2 * CT_GEOMETRY.shape[0]
    np.testing.assert_array_equal(full_mask(masks[0], volume.array.shape), first)
    np.testing.assert_array_equal(full_mask(masks[1], volume.array.shape), second)
    assert np.any(first & second)


@pytest.mark.parametrize("tilt_degrees", [0.0, 15.0], ids=["axial", "gantry-tilt"])
def test_segment_masks_round_trip_geometry(tilt_degrees: float) -> None:
    geometry = replace(CT_GEOMETRY, tilt_degrees=tilt_degrees)
    instances = ct_series(np.zeros(geometry.shape), geometry)
    lesion = ball(geometry.shape, (4, 7, 9), 2.5)

    volume = load_series(instances)
    masks = segment_masks(reread(segmentation(instances, lesion)), volume)

    np.testing.assert_array_equal(full_mask(masks[0], volume.array.shape), lesion)


def test_segment_masks_fractional_threshold(ct: tuple[list[Dataset], Volume]) -> None:
    instances, volume = ct
    probabilities = np.zeros(CT_GEOMETRY.shape, dtype=np.float32)
    probabilities[3, 4, 4:8] = [0.49, 0.5, 0.8, 1.0]
    probabilities[4, 9, 9] = 0.3

    masks = segment_masks(reread(segmentation(instances, probabilities, fractional=True)), volume)

    assert len(masks) == 1
    assert masks[0].origin == (3, 4, 5)
    assert masks[0].mask.shape == (1, 1, 3)
    assert int(masks[0].mask.sum()) == 3


def test_segment_masks_non_consecutive_numbers(ct: tuple[list[Dataset], Volume]) -> None:
    instances, volume = ct
    seg = reread(segmentation(instances, {"a": ball(CT_GEOMETRY.shape, (2, 4, 4), 1.5),
                                          "b": ball(CT_GEOMETRY.shape, (5, 10, 10), 2.0)}))
    seg.SegmentSequence[1].SegmentNumber = 7
    for item in seg.PerFrameFunctionalGroupsSequence:
        identification = item.SegmentIdentificationSequence[0]
        if identification.ReferencedSegmentNumber == 2:
            identification.ReferencedSegmentNumber = 7

    masks = segment_masks(reread(seg), volume)

    assert [(m.segment_number, m.segment_label) for m in masks] == [(1, "a"), (7, "b")]
    assert int(masks[1].mask.sum()) == int(ball(CT_GEOMETRY.shape, (5, 10, 10), 2.0).sum())


def test_segment_masks_by_source_instance(ct: tuple[list[Dataset], Volume]) -> None:
    """A SEG without a frame of reference locates its frames by the source images' SOP Instance UIDs."""
    instances, volume = ct
    lesion = ball(CT_GEOMETRY.shape, (4, 8, 8), 2.5)
    seg = reread(segmentation(instances, lesion))
    del seg.FrameOfReferenceUID
    seg.DimensionIndexSequence = seg.DimensionIndexSequence[:1]
    for item in seg.PerFrameFunctionalGroupsSequence:
        del item.PlanePositionSequence
        content = item.FrameContentSequence[0]
        content.DimensionIndexValues = content.DimensionIndexValues[:1]
    random.Random(3).shuffle(instances)

    masks = segment_masks(reread(seg), load_series(instances))

    np.testing.assert_array_equal(full_mask(masks[0], volume.array.shape), lesion)


def test_segment_masks_unknown_source_instance(ct: tuple[list[Dataset], Volume]) -> None:
    instances, volume = ct
    seg = reread(segmentation(instances, ball(CT_GEOMETRY.shape, (4, 8, 8), 1.0)))
    del seg.FrameOfReferenceUID
    seg.DimensionIndexSequence = seg.DimensionIndexSequence[:1]
    for item in seg.PerFrameFunctionalGroupsSequence:
        del item.PlanePositionSequence
        item.FrameContentSequence[0].DimensionIndexValues = item.FrameContentSequence[0].DimensionIndexValues[:1]
        item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.4"

    with pytest.raises(SegmentationError, match=r"has no Plane Position and none of its source images \(1\.2\.3\.4\)"):
        segment_masks(reread(seg), volume)


def test_segment_masks_rejects_other_frame_of_reference(ct: tuple[list[Dataset], Volume]) -> None:
    instances, _ = ct
    seg = reread(segmentation(instances, ball(CT_GEOMETRY.shape, (4, 8, 8), 2.0)))
    other = ct_series(np.zeros(CT_GEOMETRY.shape), CT_GEOMETRY, SeriesIds(frame_of_reference_uid="1.2.3.99"))

    with pytest.raises(SegmentationError, match="registered SEGs are not supported") as error:
        segment_masks(seg, load_series(other))

    assert f"uses frame of reference {instances[0].FrameOfReferenceUID}" in str(error.value)
    assert "uses 1.2.3.99" in str(error.value)


def test_segment_masks_on_coarser_pet_grid(ct: tuple[list[Dataset], Volume]) -> None:
    """A box drawn on the 1 mm CT grid covers the 2 mm PET voxels whose centres lie inside it."""
    instances, volume = ct
    box = np.zeros(CT_GEOMETRY.shape, dtype=bool)
    box[2:6, 4:12, 4:12] = True
    seg = reread(segmentation(instances, box))
    pet_geometry = Geometry((4, 8, 8), (4.0, 2.0, 2.0), (-7.5, -7.5, 1.0))
    pet = load_series(
        ct_series(np.zeros(pet_geometry.shape), pet_geometry, SeriesIds(frame_of_reference_uid=volume.frame_of_reference_uid))
    )

    masks = segment_masks(seg, pet)

    # CT box: x and y from -4 to 3 mm (voxel centres), z from 4 to 10 mm.
    # PET centres: x, y at -7.5 + 2k (k = 2..5 lie in [-4.5, 3.5]); z at 1 + 4k (k = 1, 2 lie in [3, 11]).
    assert masks[0].origin == (1, 2, 2)
    assert masks[0].mask.shape == (2, 4, 4)
    assert bool(masks[0].mask.all())


def test_segment_masks_from_pet_grid_on_finer_ct(ct: tuple[list[Dataset], Volume]) -> None:
    """A SEG drawn on 2 mm PET voxels fills every CT voxel whose centre lies in a marked PET voxel."""
    _, volume = ct
    pet_geometry = Geometry((4, 8, 8), (4.0, 2.0, 2.0), (-7.5, -7.5, 1.0))
    pet_instances = ct_series(
        np.zeros(pet_geometry.shape), pet_geometry, SeriesIds(frame_of_reference_uid=volume.frame_of_reference_uid)
    )
    lesion = np.zeros(pet_geometry.shape, dtype=bool)
    lesion[1, 3, 3] = True

    masks = segment_masks(reread(segmentation(pet_instances, lesion)), volume)

    # PET voxel (1, 3, 3): centre (-1.5, -1.5, 5), extent x, y in [-2.5, -0.5], z in [3, 7].
    # CT centres inside: x, y in {-2, -1} (columns and rows 6, 7), z in {4, 6} (slices 2, 3).
    assert masks[0].origin == (2, 6, 6)
    assert masks[0].mask.shape == (2, 2, 2)
    assert bool(masks[0].mask.all())


def test_segment_masks_thin_slices_spaced_apart(ct: tuple[list[Dataset], Volume]) -> None:
    """Frames of 1 mm thickness every 4 mm cover the 4 mm between them, not only 1 mm."""
    _, volume = ct
    source_geometry = Geometry((4, 8, 8), (4.0, 2.0, 2.0), (-7.5, -7.5, 1.0))
    sources = ct_series(
        np.zeros(source_geometry.shape), source_geometry, SeriesIds(frame_of_reference_uid=volume.frame_of_reference_uid)
    )
    for source in sources:
        source.SliceThickness = 1.0
    lesion = np.zeros(source_geometry.shape, dtype=bool)
    lesion[1:3, 3, 3] = True
    seg = reread(segmentation(sources, lesion))
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    if "SpacingBetweenSlices" in measures:
        del measures.SpacingBetweenSlices

    masks = segment_masks(reread(seg), volume)

    # Source frames at z = 5 and 9 mm reach 2 mm either side: CT slices at z = 4, 6, 8 and 10 mm.
    assert float(measures.SliceThickness) == 1.0
    assert masks[0].origin == (2, 6, 6)
    assert masks[0].mask.shape == (4, 2, 2)
    assert bool(masks[0].mask.all())


def test_segment_masks_real_liver_seg() -> None:
    """pydicom-data's liver.dcm references CT images that are not shipped, so a CT grid is built
    from the SEG's own frame of reference, positions and spacing."""
    seg = pydicom.dcmread(get_testdata_file("liver.dcm"))
    shared = seg.SharedFunctionalGroupsSequence[0]
    spacing = [float(value) for value in shared.PixelMeasuresSequence[0].PixelSpacing]
    z_values = sorted(
        float(item.PlanePositionSequence[0].ImagePositionPatient[2]) for item in seg.PerFrameFunctionalGroupsSequence
    )
    first = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
    geometry = Geometry(
        (len(z_values), int(seg.Rows), int(seg.Columns)),
        (z_values[1] - z_values[0], spacing[0], spacing[1]),
        (float(first[0]), float(first[1]), z_values[0]),
    )
    grid = load_series(
        ct_series(np.zeros(geometry.shape, dtype=np.int16), geometry, SeriesIds(frame_of_reference_uid=seg.FrameOfReferenceUID))
    )

    masks = segment_masks(read_segmentation(seg), grid)

    assert [(m.segment_number, m.segment_label) for m in masks] == [(1, "Liver")]
    assert int(masks[0].mask.sum()) == int(np.count_nonzero(seg.pixel_array))
    assert int(masks[0].mask.sum()) > 1000


@pytest.mark.skipif(shutil.which("itkimage2segimage") is None, reason="dcmqi is not installed")
@pytest.mark.parametrize("segmentation_type", ["binary", "labelmap"])
def test_segment_masks_dcmqi_seg(tmp_path: Path, ct: tuple[list[Dataset], Volume], segmentation_type: str) -> None:
    instances, volume = ct
    ct_folder = tmp_path / "ct"
    ct_folder.mkdir()
    for index, dataset in enumerate(instances):
        dataset.save_as(ct_folder / f"{index}.dcm", enforce_file_format=True)

    labels = np.zeros(CT_GEOMETRY.shape, dtype=np.uint8)
    labels[ball(CT_GEOMETRY.shape, (3, 5, 5), 2.0)] = 1
    labels[ball(CT_GEOMETRY.shape, (5, 11, 11), 2.5)] = 2
    label_path = tmp_path / "labels.nrrd"
    sitk.WriteImage(_sitk_image(labels, volume), str(label_path))
    metadata_path = tmp_path / "meta.json"
    metadata_path.write_text(json.dumps(_dcmqi_metadata(["first", "second"])))
    seg_path = tmp_path / "seg.dcm"

    subprocess.run(
        [
            "itkimage2segimage",
            "--inputImageList", str(label_path),
            "--inputDICOMDirectory", str(ct_folder),
            "--inputMetadata", str(metadata_path),
            "--outputDICOM", str(seg_path),
            "--segmentationType", segmentation_type,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )

    seg = read_segmentation(seg_path)
    masks = segment_masks(seg, volume)

    assert seg.SegmentationType == segmentation_type.upper()
    assert [m.segment_label for m in masks] == ["first", "second"]
    np.testing.assert_array_equal(full_mask(masks[0], volume.array.shape), labels == 1)
    np.testing.assert_array_equal(full_mask(masks[1], volume.array.shape), labels == 2)


def _sitk_image(array: np.ndarray, volume: Volume) -> sitk.Image:
    """Return ``array`` as a SimpleITK image on the grid of an axial ``volume``."""
    image = sitk.GetImageFromArray(array)
    spacing = volume.spacing
    image.SetSpacing((spacing[2], spacing[1], spacing[0]))
    image.SetOrigin(tuple(float(value) for value in volume.affine[:3, 3]))
    return image


def _dcmqi_metadata(labels: list[str]) -> dict:
    code = {"CodeValue": "4147007", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Mass"}
    category = {"CodeValue": "49755003", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Morphologically Altered Structure"}
    return {
        "ContentCreatorName": "Tests",
        "ClinicalTrialSeriesID": "1",
        "ClinicalTrialTimePointID": "1",
        "SeriesDescription": "dcmqi SEG",
        "SeriesNumber": "300",
        "InstanceNumber": "1",
        "BodyPartExamined": "",
        "segmentAttributes": [
            [
                {
                    "labelID": number,
                    "SegmentLabel": label,
                    "SegmentDescription": label,
                    "SegmentAlgorithmType": "MANUAL",
                    "SegmentedPropertyCategoryCodeSequence": category,
                    "SegmentedPropertyTypeCodeSequence": code,
                }
                for number, label in enumerate(labels, start=1)
            ]
        ],
        "ContentLabel": "SEGMENTATION",
        "ContentDescription": "test",
        "ClinicalTrialCoordinatingCenterName": "tests",
    }
