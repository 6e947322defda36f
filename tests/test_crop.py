"""Tests of lesion crops: patient orientation, outside voxels, normalisation, masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.checkpoint import CT_NORMALIZER, PET_NORMALIZER
from models.crop import (
    CropError,
    CropSpec,
    StudyCropper,
    crop_lesions,
    grid_offsets,
    lesion_box_centre,
    mask_channel,
    volume_channel,
)

from dicom.lesions import LesionMeasurement
from dicom.volume import Volume


SPEC = CropSpec(size=(16, 12, 8), spacing=(2.0, 2.0, 3.0), normalizers=(CT_NORMALIZER, PET_NORMALIZER, None))
CT, PET, MASK = 0, 1, 2


def axial_affine(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Affine of an axial stack: columns along +x, rows along +y, slices along +z (sx, sy, sz)."""
    sx, sy, sz = spacing
    affine = np.eye(4)
    affine[:3, 0] = (0.0, 0.0, sz)
    affine[:3, 1] = (0.0, sy, 0.0)
    affine[:3, 2] = (sx, 0.0, 0.0)
    affine[:3, 3] = origin
    return affine


def voxel_centres(shape, affine) -> np.ndarray:
    """Return the ``(slices, rows, columns, 3)`` LPS centres of a volume's voxels."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    return index @ affine[:3, :3].T + affine[:3, 3]


def flipped_columns(volume: Volume) -> Volume:
    """The same physical image stored with the column order reversed (columns along -x)."""
    affine = volume.affine.copy()
    columns = volume.array.shape[2]
    affine[:3, 3] = affine[:3, 3] + affine[:3, 2] * (columns - 1)
    affine[:3, 2] = -affine[:3, 2]
    return Volume(array=np.ascontiguousarray(volume.array[:, :, ::-1]), affine=affine,
                  series_instance_uid="1.2.3.9", frame_of_reference_uid="1.2.3.4", modality="CT")


def lesion_from_mask(volume: Volume, mask: np.ndarray) -> LesionMeasurement:
    """Build a lesion record from a full-size mask on the volume's grid."""
    where = np.argwhere(mask)
    low, high = where.min(axis=0), where.max(axis=0)
    centres = voxel_centres(mask.shape, volume.affine)[mask]
    return LesionMeasurement(
        segment_number=1, segment_label="lesion", component=1,
        centroid_mm=tuple(centres.mean(axis=0)),
        bbox_mm=(*centres.min(axis=0), *centres.max(axis=0)),
        volume_ml=float(mask.sum()) / 1000, voxels=int(mask.sum()),
        suv_max=None, suv_mean=None, suv_peak=None, hu_mean=None,
        mask=mask[low[0]:high[0] + 1, low[1]:high[1] + 1, low[2]:high[2] + 1].copy(),
        mask_origin=tuple(int(v) for v in low),
        suv_max_index_mm=tuple(centres.mean(axis=0)),
    )


@pytest.fixture
def ct_of_x() -> Volume:
    """CT whose value in HU is the LPS x coordinate in mm, x from -39.5 to 39.5."""
    affine = axial_affine(origin=(-39.5, -29.5, -19.5))
    x = voxel_centres((40, 60, 80), affine)[..., 0]
    return Volume(array=x.astype(np.float32), affine=affine, series_instance_uid="1.2.3.1",
                  frame_of_reference_uid="1.2.3.4", modality="CT")


def crop_x_positions(centre_x: float) -> np.ndarray:
    """LPS x of the crop's voxel centres along its last axis."""
    size, spacing = SPEC.size[0], SPEC.spacing[0]
    return centre_x + (np.arange(size) - (size - 1) / 2) * spacing


def test_crop_ct_is_linear_in_patient_x(ct_of_x):
    crops = StudyCropper(ct_of_x, None).crop_boxes(SPEC, [(5.0, 1.0, 2.0)], [(4.0, 4.0, 4.0)])
    expected = (crop_x_positions(5.0) - 40.0) / 200.0
    assert crops.shape == (1, 3, 8, 12, 16)
    np.testing.assert_allclose(crops[0, CT, 4, 6].numpy(), expected, atol=1e-5)
    # Every row and slice of the crop sees the same x profile.
    np.testing.assert_allclose(crops[0, CT].numpy(), np.broadcast_to(expected, (8, 12, 16)), atol=1e-5)


def test_crop_with_two_scales_stacks_a_closer_view(ct_of_x):
    spec = CropSpec(size=SPEC.size, spacing=SPEC.spacing, normalizers=SPEC.normalizers, scales=(1.0, 0.25))
    crops = StudyCropper(ct_of_x, None).crop_boxes(spec, [(5.0, 1.0, 2.0)], [(4.0, 4.0, 4.0)])

    assert spec.input_channels == 6
    assert crops.shape == (1, 6, 8, 12, 16)
    # The second view's columns are 0.5 mm apart instead of 2 mm, around the same centre.
    close_x = 5.0 + (np.arange(16) - 7.5) * 0.5
    np.testing.assert_allclose(crops[0, 3 + CT, 4, 6].numpy(), (close_x - 40.0) / 200.0, atol=1e-5)
    np.testing.assert_allclose(crops[0, CT, 4, 6].numpy(), (crop_x_positions(5.0) - 40.0) / 200.0, atol=1e-5)
    # The box spans x 3 to 7 mm: 8 columns of the close view (3.25 to 6.75), 2 of the wide one (4, 6).
    assert crops[0, 3 + MASK, 4, 6].sum().item() == 8
    assert crops[0, MASK, 4, 6].sum().item() == 2


def test_crop_keeps_left_right_when_columns_flipped(ct_of_x):
    flipped = flipped_columns(ct_of_x)
    mask = np.zeros((40, 60, 80), dtype=bool)
    # A lesion on the patient's left (+x): x from 10.5 to 14.5 mm.
    mask[18:22, 28:32, 50:55] = True
    lesion = lesion_from_mask(ct_of_x, mask)
    flipped_lesion = lesion_from_mask(flipped, mask[:, :, ::-1])
    assert lesion_box_centre(lesion) == pytest.approx(lesion_box_centre(flipped_lesion))

    spec = CropSpec(size=(32, 16, 8), spacing=(1.0, 1.0, 1.0), normalizers=SPEC.normalizers)
    # Centre the crop on the image centre so that the lesion lies in its left half.
    straight = StudyCropper(ct_of_x, None).crop(spec, [(0.0, 0.5, 0.5)], [lesion])
    mirrored = StudyCropper(flipped, None).crop(spec, [(0.0, 0.5, 0.5)], [flipped_lesion])
    torch.testing.assert_close(straight, mirrored)

    columns = torch.nonzero(straight[0, MASK].sum(dim=(0, 1))).flatten().tolist()
    # Crop column i sits at x = i - 15.5 mm, so x 10.5..14.5 is columns 26..30.
    assert columns == [26, 27, 28, 29, 30]
    assert straight[0, CT, 4, 8, 31].item() == pytest.approx((15.5 - 40) / 200, abs=1e-5)


def test_crop_outside_voxels_are_zero():
    affine = axial_affine(spacing=(2.0, 2.0, 2.0))
    ct = Volume(array=np.full((10, 10, 10), 240.0, np.float32), affine=affine, series_instance_uid="1.2",
                frame_of_reference_uid="1.2.3", modality="CT")
    pet = Volume(array=np.full((10, 10, 10), 9.0, np.float32), affine=affine, series_instance_uid="1.3",
                 frame_of_reference_uid="1.2.3", modality="PT")
    # The image spans -1..19 mm on each axis; centre the crop next to its corner voxel.
    crops = StudyCropper(ct, pet).crop_boxes(SPEC, [(0.5, 0.5, 0.2)], [(1.0, 1.0, 1.0)])
    spec_x = 0.5 + (np.arange(16) - 7.5) * 2.0
    spec_y = 0.5 + (np.arange(12) - 5.5) * 2.0
    spec_z = 0.2 + (np.arange(8) - 3.5) * 3.0
    inside = (spec_z[:, None, None] >= -1) & (spec_y[None, :, None] >= -1) & (spec_x[None, None, :] >= -1)
    ct_channel = crops[0, CT].numpy()
    pet_channel = crops[0, PET].numpy()
    assert inside.sum() == 4 * 7 * 9
    np.testing.assert_allclose(ct_channel[inside], 1.0, atol=1e-6)
    np.testing.assert_allclose(pet_channel[inside], 2.0, atol=1e-6)
    assert np.all(ct_channel[~inside] == 0)
    assert np.all(pet_channel[~inside] == 0)


@pytest.mark.parametrize(
    ("hu", "suv", "ct_value", "pet_value"),
    [(100.0, 0.0, 0.3, -1.0), (1000.0, 9.0, 1.0, 2.0), (-1000.0, 30.0, -1.0, 9.0), (40.0, 3.0, 0.0, 0.0)],
    ids=["soft-tissue", "ct-clipped-high", "ct-clipped-low", "means"],
)
def test_crop_normalisation(hu, suv, ct_value, pet_value):
    affine = axial_affine(spacing=(4.0, 4.0, 4.0), origin=(-40, -40, -40))
    ct = Volume(array=np.full((21, 21, 21), hu, np.float32), affine=affine, series_instance_uid="1.2",
                frame_of_reference_uid="1.2.3", modality="CT")
    pet = Volume(array=np.full((21, 21, 21), suv, np.float32), affine=affine, series_instance_uid="1.3",
                 frame_of_reference_uid="1.2.3", modality="PT")
    crops = StudyCropper(ct, pet).crop_boxes(SPEC, [(0.0, 0.0, 0.0)], [(2.0, 2.0, 2.0)])
    np.testing.assert_allclose(crops[0, CT].numpy(), ct_value, atol=1e-6)
    np.testing.assert_allclose(crops[0, PET].numpy(), pet_value, atol=1e-6)


def test_crop_pet_on_its_own_grid(ct_of_x):
    # A coarser PET whose SUV is the LPS z coordinate in mm.
    affine = axial_affine(spacing=(4.0, 4.0, 3.0), origin=(-60.0, -60.0, -30.0))
    z = voxel_centres((21, 31, 31), affine)[..., 2]
    pet = Volume(array=z.astype(np.float32), affine=affine, series_instance_uid="1.2.3.2",
                 frame_of_reference_uid="1.2.3.4", modality="PT")
    crops = StudyCropper(ct_of_x, pet).crop_boxes(SPEC, [(3.0, -2.0, 1.5)], [(2.0, 2.0, 2.0)])
    z_positions = 1.5 + (np.arange(8) - 3.5) * 3.0
    np.testing.assert_allclose(crops[0, PET, :, 5, 7].numpy(), (z_positions - 3.0) / 3.0, atol=1e-5)


def test_crop_without_pet_leaves_channel_zero(ct_of_x):
    crops = StudyCropper(ct_of_x, None).crop_boxes(SPEC, [(0.0, 0.0, 0.0)], [(2.0, 2.0, 2.0)])
    assert crops[0, PET].abs().max() == 0


def test_crop_box_mask_channel(ct_of_x):
    crops = StudyCropper(ct_of_x, None).crop_boxes(SPEC, [(0.0, 0.0, 0.0)], [(4.0, 5.0, 5.0)])
    mask = crops[0, MASK]
    # Centres inside: x at +-1 mm (of +-2), y at +-1 mm (of +-2.5), z at +-1.5 mm (of +-2.5).
    assert mask.sum().item() == 2 * 2 * 2
    assert mask[3:5, 5:7, 7:9].min().item() == 1.0


def point_based_crop(ct, lesion, spec) -> torch.Tensor:
    """The crop computed point by point through the inverse affine, without the separable path."""
    points = torch.as_tensor(lesion_box_centre(lesion), dtype=torch.float32) + grid_offsets(spec, torch.device("cpu"))
    data = torch.from_numpy(np.ascontiguousarray(ct.array, dtype=np.float32))
    return torch.stack([
        volume_channel(ct, points, spec.normalizer("ct"), data),
        torch.zeros(points.shape[:-1]),
        mask_channel(lesion, ct, points),
    ])


@pytest.mark.parametrize("flip", [False, True], ids=["columns-along-x", "columns-flipped"])
def test_crop_separable_matches_point_sampling(ct_of_x, flip):
    volume = flipped_columns(ct_of_x) if flip else ct_of_x
    generator = np.random.default_rng(5)
    array = generator.normal(0, 150, size=volume.array.shape).astype(np.float32)
    volume = Volume(array=array, affine=volume.affine, series_instance_uid="1.2.3.7",
                    frame_of_reference_uid="1.2.3.4", modality="CT")
    lesions = []
    for start in (10, 30, 50, 60):
        mask = np.zeros((40, 60, 80), dtype=bool)
        mask[15:20, 20:26, start:start + 4] = True
        mask[17, 23, start + 4] = True
        lesions.append(lesion_from_mask(volume, mask))
    spec = CropSpec(size=(16, 12, 8), spacing=(1.3, 0.7, 2.1), normalizers=SPEC.normalizers)
    crops = crop_lesions(volume, None, lesions, spec)
    for crop, lesion in zip(crops, lesions, strict=True):
        expected = point_based_crop(volume, lesion, spec)
        # grid_sample rescales indices to [-1, 1] in float32, hence the tolerance.
        torch.testing.assert_close(crop[CT], expected[CT], atol=1e-4, rtol=0)
        assert torch.equal(crop[MASK], expected[MASK])
        assert crop[MASK].sum() > 0


def test_crop_oblique_volume_is_linear_in_x():
    # Voxel axes rotated by 30 degrees about z; the CT value is again the LPS x in mm.
    angle = np.deg2rad(30.0)
    affine = np.eye(4)
    affine[:3, 0] = (0.0, 0.0, 2.0)
    affine[:3, 1] = (-np.sin(angle), np.cos(angle), 0.0)
    affine[:3, 2] = (np.cos(angle), np.sin(angle), 0.0)
    affine[:3, 3] = (-30.0, -30.0, -30.0)
    x = voxel_centres((30, 70, 70), affine)[..., 0]
    ct = Volume(array=x.astype(np.float32), affine=affine, series_instance_uid="1.2.3.8",
                frame_of_reference_uid="1.2.3.4", modality="CT")
    crops = StudyCropper(ct, None).crop_boxes(SPEC, [(5.0, 10.0, 0.0)], [(4.0, 4.0, 4.0)])
    expected = (crop_x_positions(5.0) - 40.0) / 200.0
    np.testing.assert_allclose(crops[0, CT].numpy(), np.broadcast_to(expected, (8, 12, 16)), atol=1e-4)


def test_crop_rejects_mismatched_boxes(ct_of_x):
    with pytest.raises(CropError, match="2 box centres for 1 box sizes"):
        StudyCropper(ct_of_x, None).crop_boxes(SPEC, [(0, 0, 0), (1, 1, 1)], [(1, 1, 1)])
