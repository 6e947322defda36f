"""Lesion splitting and measurements against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from dicom.lesions import PEAK_SPHERE_RADIUS_MM, measure_lesions, sphere_offsets
from dicom.seg import SegmentMask
from dicom.volume import Volume


def axial_volume(array: np.ndarray, spacing: tuple[float, float, float], origin: tuple[float, float, float]) -> Volume:
    affine = np.eye(4)
    affine[:3, :3] = [[0.0, 0.0, spacing[2]], [0.0, spacing[1], 0.0], [spacing[0], 0.0, 0.0]]
    affine[:3, 3] = origin
    return Volume(array.astype(np.float32), affine, "1.2.3.1", "1.2.3.9", "CT")


def whole_segment(mask: np.ndarray, number: int = 3, label: str = "Lesion") -> SegmentMask:
    return SegmentMask(number, label, mask, (0, 0, 0))


# CT: 1 mm voxels, origin at 0. PET: 2 mm voxels whose centres coincide with even CT indices.
CT_SHAPE = (20, 20, 20)
PET_SHAPE = (10, 10, 10)


def ct_with(mask: np.ndarray, inside_hu: float = 40.0) -> Volume:
    values = np.full(CT_SHAPE, -100.0)
    values[mask] = inside_hu
    return axial_volume(values, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))


def pet_hot_spot() -> Volume:
    """SUV 1 everywhere except 124 at PET voxel (5, 5, 5), at LPS (10, 10, 10)."""
    values = np.ones(PET_SHAPE)
    values[5, 5, 5] = 124.0
    return axial_volume(values, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))


def test_sphere_offsets_count_on_2mm_grid() -> None:
    # A 1 ml sphere has radius 6.2035 mm, so on a 2 mm grid it contains the offsets with
    # dx^2 + dy^2 + dz^2 <= 9.62, that is 123 lattice points.
    assert PEAK_SPHERE_RADIUS_MM == pytest.approx(6.2035, abs=1e-4)
    assert sphere_offsets(np.diag([2.0, 2.0, 2.0, 1.0]), PEAK_SPHERE_RADIUS_MM).shape == (123, 3)


def test_measure_lesion_values() -> None:
    mask = np.zeros(CT_SHAPE, dtype=bool)
    mask[8:13, 8:13, 8:13] = True  # 125 CT voxels, centres 8..12 mm on each axis

    lesion = measure_lesions([whole_segment(mask)], ct_with(mask), pet_hot_spot())[0]

    assert (lesion.segment_number, lesion.segment_label, lesion.component) == (3, "Lesion", 1)
    assert lesion.voxels == 125
    assert lesion.volume_ml == pytest.approx(0.125)
    assert lesion.centroid_mm == pytest.approx((10.0, 10.0, 10.0))
    assert lesion.bbox_mm == pytest.approx((8.0, 8.0, 8.0, 12.0, 12.0, 12.0))
    assert lesion.hu_mean == pytest.approx(40.0)
    # PET centres inside: indices 4..6 on each axis (8, 10, 12 mm) = 27 voxels, one of them hot.
    assert lesion.suv_max == pytest.approx(124.0)
    assert lesion.suv_mean == pytest.approx((124.0 + 26.0) / 27.0)
    assert lesion.suv_peak == pytest.approx((124.0 + 122.0) / 123.0)
    assert lesion.suv_max_index_mm == pytest.approx((10.0, 10.0, 10.0))
    assert lesion.mask_origin == (8, 8, 8)
    assert lesion.mask.shape == (5, 5, 5)


def test_measure_lesion_smaller_than_pet_voxel() -> None:
    mask = np.zeros(CT_SHAPE, dtype=bool)
    mask[11, 11, 11] = True  # centre (11, 11, 11) mm lies between PET centres, inside voxel (6, 6, 6)
    pet = pet_hot_spot()
    pet.array[6, 6, 6] = 7.0

    lesion = measure_lesions([whole_segment(mask)], ct_with(mask), pet)[0]

    assert lesion.voxels == 1
    assert lesion.suv_max == pytest.approx(7.0)
    assert lesion.suv_mean == pytest.approx(7.0)
    assert lesion.suv_max_index_mm == pytest.approx((12.0, 12.0, 12.0))


@pytest.mark.parametrize(
    ("second_blob", "per_segment", "expected_voxels"),
    [
        ((slice(2, 4), slice(2, 4), slice(2, 4)), False, [8, 8]),
        ((slice(4, 6), slice(4, 6), slice(4, 6)), False, [16]),
        ((slice(2, 4), slice(2, 4), slice(2, 4)), True, [16]),
    ],
    ids=["apart-two-lesions", "corner-touching-one-lesion", "one-lesion-per-segment"],
)
def test_measure_lesions_components(second_blob: tuple[slice, ...], per_segment: bool, expected_voxels: list[int]) -> None:
    mask = np.zeros((12, 12, 12), dtype=bool)
    mask[6:8, 6:8, 6:8] = True
    mask[second_blob] = True
    ct = axial_volume(np.zeros((12, 12, 12)), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    segment = SegmentMask(2, "Nodes", mask[2:, 2:, 2:], (2, 2, 2))

    lesions = measure_lesions([segment], ct, None, one_lesion_per_segment=per_segment)

    assert sorted(lesion.voxels for lesion in lesions) == sorted(expected_voxels)
    assert [lesion.component for lesion in lesions] == list(range(1, len(expected_voxels) + 1))
    assert sum(lesion.volume_ml for lesion in lesions) == pytest.approx(sum(expected_voxels) * 0.002)


def test_measure_lesion_without_pet() -> None:
    mask = np.zeros(CT_SHAPE, dtype=bool)
    mask[2:4, 5, 5] = True

    lesion = measure_lesions([whole_segment(mask)], ct_with(mask), pet_hot_spot(), pet_in_suv=False)[0]

    assert (lesion.suv_max, lesion.suv_mean, lesion.suv_peak) == (None, None, None)
    assert lesion.suv_max_index_mm == pytest.approx((5.0, 5.0, 2.5))
    assert lesion.centroid_mm == pytest.approx((5.0, 5.0, 2.5))


def test_measure_lesion_peak_at_volume_corner() -> None:
    # The sphere around PET voxel (0, 0, 0) is cut to one octant: the offsets with
    # non-negative components and dx^2 + dy^2 + dz^2 <= 9 are 29 voxels, one of them hot.
    mask = np.zeros(CT_SHAPE, dtype=bool)
    mask[0, 0, 0] = True
    values = np.ones(PET_SHAPE)
    values[0, 0, 0] = 124.0
    pet = axial_volume(values, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))

    lesion = measure_lesions([whole_segment(mask)], ct_with(mask), pet)[0]

    assert lesion.suv_max == pytest.approx(124.0)
    assert lesion.suv_peak == pytest.approx((124.0 + 28.0) / 29.0)


def test_measure_lesion_outside_pet_field_of_view() -> None:
    mask = np.zeros(CT_SHAPE, dtype=bool)
    mask[15, 15, 15] = True
    pet = axial_volume(np.ones((2, 2, 2)), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))

    lesion = measure_lesions([whole_segment(mask)], ct_with(mask), pet)[0]

    assert (lesion.suv_max, lesion.suv_mean, lesion.suv_peak) == (None, None, None)
    assert lesion.hu_mean == pytest.approx(40.0)
