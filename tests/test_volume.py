"""Series assembly: slice order, affine, rescale, gantry tilt, gaps and rejected series."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import RLELossless

from dicom.volume import SeriesError, load_series
from tests.support.series_factory import (
    Geometry,
    SeriesIds,
    ct_series,
    enhanced_ct,
    write_datasets,
)

GEOMETRY = Geometry(shape=(6, 8, 10), spacing=(2.5, 0.8, 0.9), origin=(-4.0, -3.0, 100.0))


def ramp(shape: tuple[int, int, int]) -> np.ndarray:
    """Return HU values that differ in every voxel, so misplaced slices show."""
    return (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) - 200.0).astype(np.float32)


@pytest.mark.parametrize("order", ["sorted", "reversed", "shuffled"])
def test_load_series_sorts_by_position(order: str) -> None:
    values = ramp(GEOMETRY.shape)
    instances = ct_series(values, GEOMETRY)
    if order == "reversed":
        instances.reverse()
    elif order == "shuffled":
        random.Random(4).shuffle(instances)

    volume = load_series(instances)

    np.testing.assert_array_equal(volume.array, values)
    expected_affine = np.array(
        [[0.0, 0.0, 0.9, -4.0], [0.0, 0.8, 0.0, -3.0], [2.5, 0.0, 0.0, 100.0], [0.0, 0.0, 0.0, 1.0]]
    )
    np.testing.assert_allclose(volume.affine, expected_affine)
    assert volume.modality == "CT"
    assert volume.array.dtype == np.float32
    assert volume.sop_instance_uids == tuple(
        sorted((d.SOPInstanceUID for d in instances), key=lambda uid: _z_of(instances, uid))
    )


def _z_of(instances: list, uid: str) -> float:
    return next(float(d.ImagePositionPatient[2]) for d in instances if d.SOPInstanceUID == uid)


def test_load_series_reads_files_lazily(tmp_path: Path) -> None:
    values = ramp(GEOMETRY.shape)
    paths = write_datasets(ct_series(values, GEOMETRY), tmp_path, "ct")

    volume = load_series(list(reversed(paths)))

    np.testing.assert_array_equal(volume.array, values)
    np.testing.assert_allclose(volume.index_to_lps(np.array([[5, 7, 9]]))[0], [-4.0 + 8.1, -3.0 + 5.6, 112.5])


def test_load_series_applies_rescale_per_instance() -> None:
    values = ramp(GEOMETRY.shape)
    instances = ct_series(values[:3], Geometry((3, 8, 10), GEOMETRY.spacing, GEOMETRY.origin), slope=1.0)
    shifted_origin = (GEOMETRY.origin[0], GEOMETRY.origin[1], GEOMETRY.origin[2] + 3 * 2.5)
    rest = ct_series(
        values[3:],
        Geometry((3, 8, 10), GEOMETRY.spacing, shifted_origin),
        SeriesIds(instances[0].StudyInstanceUID, instances[0].SeriesInstanceUID, instances[0].FrameOfReferenceUID),
        slope=0.5,
        intercept=-2000.0,
    )

    volume = load_series(instances + rest)

    assert float(rest[0].RescaleSlope) == 0.5
    np.testing.assert_allclose(volume.array, values, atol=0.25)


@pytest.mark.parametrize(
    "frame_order", [[0, 1, 2, 3, 4, 5], [5, 3, 1, 0, 2, 4]], ids=["in-order", "out-of-order"]
)
def test_load_series_enhanced_ct(frame_order: list[int]) -> None:
    values = ramp(GEOMETRY.shape)
    slopes = [1.0, 0.5, 1.0, 2.0, 1.0, 0.25]
    instance = enhanced_ct(values, GEOMETRY, frame_order=frame_order, slopes=slopes)

    volume = load_series([instance])

    np.testing.assert_allclose(volume.array, values, atol=1.0)
    np.testing.assert_allclose(volume.affine[:3, 3], [-4.0, -3.0, 100.0])
    np.testing.assert_allclose(volume.spacing, (2.5, 0.8, 0.9))
    assert volume.sop_instance_uids == (instance.SOPInstanceUID,) * 6


def test_load_series_gantry_tilt_shears_affine() -> None:
    tilted = Geometry((5, 8, 8), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), tilt_degrees=20.0)
    instances = ct_series(ramp(tilted.shape), tilted)

    volume = load_series(instances)

    angle = math.radians(20.0)
    np.testing.assert_allclose(volume.affine[:3, 0], [0.0, 0.0, 2.0], atol=1e-9)
    np.testing.assert_allclose(volume.affine[:3, 1], [0.0, math.cos(angle), math.sin(angle)], atol=1e-9)
    last_row_centre = volume.index_to_lps(np.array([[4, 7, 0]]))[0]
    np.testing.assert_allclose(last_row_centre, [0.0, 7 * math.cos(angle), 8.0 + 7 * math.sin(angle)])
    assert volume.voxel_volume_ml == pytest.approx(2.0 * math.cos(angle) / 1000.0)


def test_load_series_fills_missing_slice() -> None:
    values = ramp(GEOMETRY.shape)
    instances = ct_series(values, GEOMETRY)
    del instances[2]

    volume = load_series(instances)

    assert volume.array.shape == GEOMETRY.shape
    np.testing.assert_allclose(volume.array[2], (values[1] + values[3]) / 2)
    np.testing.assert_allclose(volume.array[4], values[4])
    assert volume.sop_instance_uids == ()


def _positions(*z_values: float) -> list[list[float]]:
    return [[-4.0, -3.0, z] for z in z_values]


@pytest.mark.parametrize(
    ("positions", "message"),
    [
        (
            _positions(0.0, 2.5, 5.0, 30.0),
            "has a gap of 25.00 mm after slice 3 (typical spacing 2.50 mm, at most 3 spacings are filled)",
        ),
        (_positions(0.0, 2.5, 2.5, 5.0), "has two frames at the same position"),
        ([[-4.0, -3.0, 0.0], [-4.0, -3.0, 2.5], [6.0, -3.0, 5.0]], "do not lie on a line"),
    ],
    ids=["large-gap", "duplicate-position", "not-collinear"],
)
def test_load_series_rejects_geometry(positions: list[list[float]], message: str) -> None:
    geometry = Geometry((len(positions), 4, 4), (2.5, 1.0, 1.0))
    instances = ct_series(np.zeros(geometry.shape), geometry, positions=positions)

    with pytest.raises(SeriesError, match="series " + instances[0].SeriesInstanceUID) as error:
        load_series(instances)

    assert message in str(error.value)


def test_load_series_rejects_mixed_series() -> None:
    first = ct_series(np.zeros((2, 4, 4)), Geometry((2, 4, 4)))
    second = ct_series(np.zeros((2, 4, 4)), Geometry((2, 4, 4), origin=(0.0, 0.0, 10.0)))

    with pytest.raises(SeriesError, match="instances of several series were given together"):
        load_series(first + second)


def test_load_series_rejects_missing_position() -> None:
    instances = ct_series(np.zeros((2, 4, 4)), Geometry((2, 4, 4)))
    del instances[1].ImagePositionPatient

    with pytest.raises(SeriesError, match="lacks ImagePositionPatient; the volume geometry is unknown"):
        load_series(instances)


def test_load_series_rejects_mixed_orientation() -> None:
    instances = ct_series(np.zeros((3, 4, 4)), Geometry((3, 4, 4)))
    instances[2].ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]

    with pytest.raises(SeriesError, match="mixes image orientations"):
        load_series(instances)


def test_load_series_skips_localizer() -> None:
    values = ramp(GEOMETRY.shape)
    instances = ct_series(values, GEOMETRY)
    scout = ct_series(np.zeros((1, 8, 10)), Geometry((1, 8, 10)), SeriesIds(
        instances[0].StudyInstanceUID, instances[0].SeriesInstanceUID, instances[0].FrameOfReferenceUID
    ))[0]
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]

    volume = load_series([scout, *instances])

    assert volume.array.shape == GEOMETRY.shape
    assert scout.SOPInstanceUID not in volume.sop_instance_uids


def test_load_series_rle_compressed() -> None:
    values = ramp(GEOMETRY.shape)
    instances = ct_series(values, GEOMETRY)
    for instance in instances:
        instance.compress(RLELossless)

    volume = load_series(instances)

    assert instances[0].file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(volume.array, values)
