"""Lesion crops on a model's grid: CT, PET-SUV and lesion-mask channels in one pass.

Each crop is an axis-aligned grid in LPS patient coordinates (DICOM PS3.3 C.7.6.2.1.1).
Its array index ``[z, y, x]`` increases towards the patient's left (+x), posterior (+y)
and head (+z) whatever the acquisition orientation, so left and right in a crop are
the patient's. Voxel centres are symmetric about the lesion centre.

Trilinear interpolation is separable when a volume's voxel axes are parallel to the
patient axes, as in any axial, coronal or sagittal stack, flipped or not. Each crop is
then three matrix products with 1-D interpolation weights on the block of voxels it
covers. Oblique volumes map every grid point through the inverse affine and use
:func:`torch.nn.functional.grid_sample`; the results agree.

Channels, as the published HCL-AL models expect them:

1. CT in HU, trilinear, ``(v - 40) / 200`` clipped to [-1, 1];
2. PET in SUV, trilinear, ``(v - 3) / 3``;
3. the lesion's own mask, nearest neighbour, 0 or 1.

The normalisers come from the checkpoint. Grid points outside a volume are 0 in that
volume's channel after normalisation. A model with several scales takes the channels
once per scale, each on a grid of the same size and centre whose spacing is the
model's spacing times the scale: a wide view and a close view of the same lesion.

NOTE: whether the reference implementation fills outside voxels with 0 before or after
normalisation is not documented. Here the network input is 0 there, which only
matters for crops that reach past the image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from models.checkpoint import CheckpointMetadata, Normalizer

if TYPE_CHECKING:
    from dicom.lesions import LesionMeasurement
    from dicom.volume import Volume

LOGGER = logging.getLogger(__name__)

# Relative size of off-axis affine terms below which a voxel axis counts as parallel
# to a patient axis.
AXIS_ALIGNMENT_TOLERANCE = 1e-6


class CropError(ValueError):
    """The volumes or lesions cannot be cropped as requested; the message gives the reason."""


@dataclass(frozen=True)
class CropSpec:
    """The grid and intensity handling of one model's input.

    ``size`` (voxels) and ``spacing`` (mm) are in ``(x, y, z)`` order; the crop array
    is ``(channels * len(scales), z, y, x)``: the channels at each spacing factor of
    ``scales``, in that order.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    channels: tuple[str, ...] = ("ct", "pet", "mask")
    normalizers: tuple[Normalizer | None, ...] = ()
    scales: tuple[float, ...] = (1.0,)

    @classmethod
    def from_metadata(cls, metadata: CheckpointMetadata) -> CropSpec:
        """Return the crop specification stored in a checkpoint's metadata."""
        return cls(
            size=metadata.crop_size,
            spacing=metadata.spacing,
            channels=tuple(metadata.channels),
            normalizers=tuple(metadata.normalizers),
            scales=tuple(metadata.scales),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Crop array shape ``(z, y, x)``."""
        x, y, z = self.size
        return (z, y, x)

    @property
    def input_channels(self) -> int:
        """Channels of the crop array: every channel once per scale."""
        return len(self.channels) * len(self.scales)

    def at_scale(self, scale: float) -> CropSpec:
        """Return the single-scale grid of this crop whose spacing is multiplied by ``scale``."""
        spacing = tuple(value * scale for value in self.spacing)
        return replace(self, spacing=spacing, scales=(1.0,))  # type: ignore[arg-type]

    def normalizer(self, channel: str) -> Normalizer | None:
        """Return the normaliser of ``channel``, or ``None`` for none."""
        index = self.channels.index(channel)
        return self.normalizers[index] if index < len(self.normalizers) else None


def grid_offsets(spec: CropSpec, device: torch.device) -> torch.Tensor:
    """Return the ``(z, y, x, 3)`` LPS offsets in mm of the crop's voxel centres from its centre."""
    return grid_points(crop_axes(spec, device))


def crop_axes(spec: CropSpec, device: torch.device) -> list[torch.Tensor]:
    """Return the 1-D LPS offsets in mm of the crop's voxel centres along x, y and z."""
    return [
        ((torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2.0) * spacing).to(torch.float32)
        for size, spacing in zip(spec.size, spec.spacing, strict=True)
    ]


def lps_to_index(points: torch.Tensor, affine: np.ndarray) -> torch.Tensor:
    """Map ``(..., 3)`` LPS points to continuous ``(slice, row, column)`` indices of a volume."""
    inverse = torch.as_tensor(np.linalg.inv(np.asarray(affine, dtype=np.float64)), device=points.device)
    inverse = inverse.to(points.dtype)
    return points @ inverse[:3, :3].T + inverse[:3, 3]


def inside_volume(indices: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Return whether each index lies within the volume's extent (half a voxel past the outer centres)."""
    upper = torch.tensor([size - 0.5 for size in shape], dtype=indices.dtype, device=indices.device)
    return ((indices >= -0.5) & (indices <= upper)).all(dim=-1)


def sample_linear(volume: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Trilinearly sample a ``(slices, rows, columns)`` tensor at ``(..., 3)`` continuous indices.

    Points past the outer voxel centres take the border value; callers zero points
    outside the volume afterwards, so border voxels are not blended with zeros.
    """
    sizes = torch.tensor(volume.shape, dtype=indices.dtype, device=indices.device)
    # grid_sample's align_corners=True maps -1 and +1 to the outer voxel centres, and
    # its last grid axis is ordered (column, row, slice).
    scale = torch.where(sizes > 1, 2.0 / (sizes - 1).clamp(min=1), torch.zeros_like(sizes))
    normalised = (indices * scale - (sizes > 1).to(indices.dtype)).flip(-1)
    grid = normalised.reshape(1, -1, 1, 1, 3).to(volume.dtype)
    values = F.grid_sample(
        volume[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True
    )
    return values.reshape(indices.shape[:-1])


def normalise(values: torch.Tensor, normalizer: Normalizer | None) -> torch.Tensor:
    """Apply ``(v - mean) / stddev`` and the optional clip to [-1, 1]."""
    if normalizer is None:
        return values
    values = (values - normalizer.mean) / normalizer.stddev
    return values.clamp(-1.0, 1.0) if normalizer.clip else values


def volume_channel(
    volume: Volume, points: torch.Tensor, normalizer: Normalizer | None, data: torch.Tensor
) -> torch.Tensor:
    """Sample ``volume`` (its voxels already on the device as ``data``) at LPS ``points``."""
    indices = lps_to_index(points, volume.affine)
    values = normalise(sample_linear(data, indices), normalizer)
    return torch.where(inside_volume(indices, data.shape), values, torch.zeros_like(values))


def mask_channel(lesion: LesionMeasurement, ct: Volume, points: torch.Tensor) -> torch.Tensor:
    """Sample the lesion's own mask (on the CT grid) by nearest neighbour at LPS ``points``."""
    mask = torch.as_tensor(np.ascontiguousarray(lesion.mask, dtype=bool), device=points.device)
    origin = torch.tensor(lesion.mask_origin, dtype=points.dtype, device=points.device)
    indices = torch.round(lps_to_index(points, ct.affine) - origin).long()
    upper = torch.tensor(mask.shape, device=points.device)
    valid = ((indices >= 0) & (indices < upper)).all(dim=-1)
    clamped = torch.minimum(indices.clamp(min=0), upper - 1)
    values = mask[clamped[..., 0], clamped[..., 1], clamped[..., 2]] & valid
    return values.to(torch.float32)


def axis_alignment(affine: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray] | None:
    """Return the patient axis and signed step (mm) of each voxel axis, or ``None`` if oblique."""
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    world = tuple(int(axis) for axis in np.argmax(np.abs(matrix), axis=0))
    if sorted(world) != [0, 1, 2]:
        return None
    steps = matrix[list(world), [0, 1, 2]]
    off_axis = matrix.copy()
    off_axis[list(world), [0, 1, 2]] = 0.0
    if np.abs(off_axis).max() > AXIS_ALIGNMENT_TOLERANCE * np.abs(steps).max():
        return None
    return world, steps  # type: ignore[return-value]


def axis_indices(
    coordinates: Sequence[torch.Tensor], affine: np.ndarray, world: Sequence[int], steps: np.ndarray
) -> list[torch.Tensor]:
    """Map 1-D LPS coordinates ``(x, y, z)`` to continuous indices along each voxel axis."""
    origin = np.asarray(affine, dtype=np.float64)[:3, 3]
    return [
        (coordinates[world[axis]] - float(origin[world[axis]])) / float(steps[axis]) for axis in range(3)
    ]


def to_crop_order(block: torch.Tensor, world: Sequence[int]) -> torch.Tensor:
    """Permute a block indexed by voxel axes into crop order ``(z, y, x)``."""
    return block.permute([list(world).index(axis) for axis in (2, 1, 0)])


def interpolation_matrix(index: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    """Return the ``(len(index), size)`` matrix of 1-D linear interpolation weights at ``index``.

    Indices past the outer voxel centres take the border value, as in :func:`sample_linear`.
    """
    clamped = index.clamp(0, size - 1)
    lower = clamped.floor().long().clamp(max=max(size - 2, 0))
    upper = (lower + 1).clamp(max=size - 1)
    weight = (clamped - lower).to(dtype)
    rows = torch.arange(len(index), device=index.device)
    matrix = torch.zeros((len(index), size), dtype=dtype, device=index.device)
    matrix.index_put_((rows, lower), 1 - weight, accumulate=True)
    matrix.index_put_((rows, upper), weight, accumulate=True)
    return matrix


def interpolate_separable(data: torch.Tensor, indices: Sequence[torch.Tensor]) -> torch.Tensor:
    """Trilinearly sample ``data`` on the outer product of 1-D continuous indices.

    Each axis is one matrix product with its interpolation weights, applied to the
    block of voxels that the indices reach.
    """
    block = data
    matrices = []
    for axis, index in enumerate(indices):
        size = data.shape[axis]
        clamped = index.clamp(0, size - 1)
        start = int(clamped.min().floor())
        stop = min(int(clamped.max().floor()) + 2, size)
        block = block.narrow(axis, start, stop - start)
        matrices.append(interpolation_matrix(index - start, stop - start, data.dtype))

    slices, rows, columns = block.shape
    block = block.reshape(slices * rows, columns) @ matrices[2].T
    block = matrices[1] @ block.reshape(slices, rows, -1)
    return (matrices[0] @ block.reshape(slices, -1)).reshape(len(indices[0]), len(indices[1]), len(indices[2]))


def outer_inside(indices: Sequence[torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
    """Return the 3-D mask of index triplets within the volume's extent, from 1-D indices."""
    inside = [(index >= -0.5) & (index <= size - 0.5) for index, size in zip(indices, shape, strict=True)]
    return inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]


def nearest_separable(mask: torch.Tensor, indices: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sample a boolean ``mask`` by nearest neighbour on the outer product of 1-D indices; outside is 0."""
    nearest = [torch.round(index).long() for index in indices]
    valid = [(index >= 0) & (index < size) for index, size in zip(nearest, mask.shape, strict=True)]
    block = mask
    for axis in range(3):
        block = block.index_select(axis, nearest[axis].clamp(0, mask.shape[axis] - 1))
    inside = valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]
    return (block & inside).to(torch.float32)


def box_channel(
    centre: Sequence[float], size_mm: Sequence[float], coordinates: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Return the box-mode mask channel: 1 inside the box, on the grid with 1-D LPS coordinates ``(x, y, z)``."""
    inside = [
        ((coordinates[axis] - float(centre[axis])).abs() <= float(size_mm[axis]) / 2).to(torch.float32)
        for axis in range(3)
    ]
    return inside[2][:, None, None] * inside[1][None, :, None] * inside[0][None, None, :]


def lesion_box_centre(lesion: LesionMeasurement) -> tuple[float, float, float]:
    """Return the centre of the lesion's bounding box in LPS mm, the centre of its crop."""
    box = lesion.bbox_mm
    return ((box[0] + box[3]) / 2, (box[1] + box[4]) / 2, (box[2] + box[5]) / 2)


def lesion_box_size(lesion: LesionMeasurement) -> tuple[float, float, float]:
    """Return the side lengths in mm of the lesion's bounding box of voxel centres."""
    box = lesion.bbox_mm
    return (box[3] - box[0], box[4] - box[1], box[5] - box[2])


class StudyCropper:
    """Crop many lesions of one study, keeping the volumes on the device between calls.

    Parameters
    ----------
    ct
        CT volume in HU.
    pet
        PET volume in SUV, or ``None``; without it the PET channel is 0.
    device
        Torch device on which sampling runs.
    """

    def __init__(self, ct: Volume, pet: Volume | None, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.volumes = {"ct": ct} if pet is None else {"ct": ct, "pet": pet}
        self._data = {name: self._to_device(volume) for name, volume in self.volumes.items()}
        self._alignment = {name: axis_alignment(volume.affine) for name, volume in self.volumes.items()}

    def _to_device(self, volume: Volume) -> torch.Tensor:
        array = np.asarray(volume.array)
        if array.ndim != 3:
            raise CropError(f"volume {volume.series_instance_uid} has {array.ndim} dimensions, expected 3")
        affine = np.asarray(volume.affine, dtype=np.float64)
        if affine.shape != (4, 4) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
            raise CropError(f"volume {volume.series_instance_uid} has a singular or malformed affine")
        return torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32), device=self.device)

    def crop(
        self,
        spec: CropSpec,
        centres: Sequence[Sequence[float]],
        masks: Sequence[LesionMeasurement | tuple[Sequence[float], Sequence[float]]],
    ) -> torch.Tensor:
        """Return ``(len(centres), channels * scales, z, y, x)`` float32 crops.

        Parameters
        ----------
        spec
            Grid and normalisers of the model.
        centres
            LPS crop centres in mm, one per lesion.
        masks
            Per lesion, the :class:`LesionMeasurement` whose own mask fills the mask
            channel, or a ``(centre, size)`` box in mm whose inside is 1 (box mode).
        """
        if len(centres) != len(masks):
            raise CropError(f"{len(centres)} centres for {len(masks)} masks")
        unknown = set(spec.channels) - {"ct", "pet", "mask"}
        if unknown:
            raise CropError(f"unknown channels {sorted(unknown)}")
        if len(spec.scales) > 1:
            return torch.cat([self.crop(spec.at_scale(scale), centres, masks) for scale in spec.scales], dim=1)
        if spec.scales != (1.0,):
            spec = spec.at_scale(spec.scales[0])

        out = torch.zeros((len(centres), len(spec.channels), *spec.shape), dtype=torch.float32, device=self.device)
        axes = crop_axes(spec, self.device)
        for row, (centre, mask) in enumerate(zip(centres, masks, strict=True)):
            coordinates = [float(centre[axis]) + axes[axis] for axis in range(3)]
            for index, channel in enumerate(spec.channels):
                if channel == "mask":
                    out[row, index] = self._mask_channel(mask, coordinates)
                elif channel in self._data:
                    out[row, index] = self._volume_channel(channel, coordinates, spec.normalizer(channel))
        return out

    def _volume_channel(
        self, channel: str, coordinates: Sequence[torch.Tensor], normalizer: Normalizer | None
    ) -> torch.Tensor:
        """Sample one volume on the crop grid given by its 1-D LPS coordinates ``(x, y, z)``."""
        volume, data = self.volumes[channel], self._data[channel]
        alignment = self._alignment[channel]
        if alignment is None:
            return volume_channel(volume, grid_points(coordinates), normalizer, data)

        world, steps = alignment
        indices = axis_indices(coordinates, volume.affine, world, steps)
        values = normalise(interpolate_separable(data, indices), normalizer)
        values = torch.where(outer_inside(indices, data.shape), values, torch.zeros_like(values))
        return to_crop_order(values, world)

    def _mask_channel(
        self,
        lesion: LesionMeasurement | tuple[Sequence[float], Sequence[float]],
        coordinates: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """Return the lesion's own mask, or the box of box mode, on the crop grid."""
        if isinstance(lesion, tuple):
            return box_channel(lesion[0], lesion[1], coordinates)
        ct = self.volumes["ct"]
        alignment = self._alignment["ct"]
        if alignment is None:
            return mask_channel(lesion, ct, grid_points(coordinates))

        world, steps = alignment
        indices = axis_indices(coordinates, ct.affine, world, steps)
        local = [index - origin for index, origin in zip(indices, lesion.mask_origin, strict=True)]
        mask = torch.as_tensor(np.ascontiguousarray(lesion.mask, dtype=bool), device=self.device)
        return to_crop_order(nearest_separable(mask, local), world)

    def crop_lesions(self, spec: CropSpec, lesions: Sequence[LesionMeasurement]) -> torch.Tensor:
        """Crop each lesion centred on its bounding box, with its own mask as the mask channel."""
        centres = [lesion_box_centre(lesion) for lesion in lesions]
        return self.crop(spec, centres, list(lesions))

    def crop_boxes(
        self,
        spec: CropSpec,
        centres: Sequence[Sequence[float]],
        sizes: Sequence[Sequence[float]],
    ) -> torch.Tensor:
        """Crop boxes given by LPS centre and size in mm; the mask channel is 1 inside each box."""
        if len(centres) != len(sizes):
            raise CropError(f"{len(centres)} box centres for {len(sizes)} box sizes")
        boxes = [(tuple(c), tuple(s)) for c, s in zip(centres, sizes, strict=True)]
        return self.crop(spec, centres, boxes)


def grid_points(coordinates: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return the ``(z, y, x, 3)`` LPS points of the grid with 1-D coordinates ``(x, y, z)``."""
    grid_z, grid_y, grid_x = torch.meshgrid(coordinates[2], coordinates[1], coordinates[0], indexing="ij")
    return torch.stack([grid_x, grid_y, grid_z], dim=-1)


def crop_lesions(
    ct: Volume,
    pet: Volume | None,
    lesions: Sequence[LesionMeasurement],
    spec: CropSpec,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Return the ``(lesions, channels, z, y, x)`` crops of every lesion of a study."""
    return StudyCropper(ct, pet, device).crop_lesions(spec, lesions)
