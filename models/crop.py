"""Lesion crops on a model's grid: CT, PET-SUV and lesion-mask channels in one pass.

Each crop is an axis-aligned grid in LPS patient coordinates (DICOM PS3.3 C.7.6.2.1.1).
Its array index ``[z, y, x]`` increases towards the patient's left (+x), posterior (+y)
and head (+z) whatever the acquisition orientation, so left and right in a crop are
the patient's. Voxel centres are symmetric about the lesion centre. Every grid point is
mapped through the inverse of each volume's affine, and all lesions of a study are
sampled together with :func:`torch.nn.functional.grid_sample`.

Channels, as the published HCL-AL models expect them:

1. CT in HU, trilinear, ``(v - 40) / 200`` clipped to [-1, 1];
2. PET in SUV, trilinear, ``(v - 3) / 3``;
3. the lesion's own mask, nearest neighbour, 0 or 1.

The normalisers come from the checkpoint. Grid points outside a volume are 0 in that
volume's channel after normalisation.

NOTE: whether the reference implementation fills outside voxels with 0 before or after
normalisation is not documented. Here the network input is 0 there, which only
matters for crops that reach past the image.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from models.checkpoint import CheckpointMetadata, Normalizer

if TYPE_CHECKING:
    from dicom.lesions import LesionMeasurement
    from dicom.volume import Volume

LOGGER = logging.getLogger(__name__)

# Lesions sampled per grid_sample call; a coarse crop is 1.2 M points, 14 MB of grid each.
DEFAULT_CHUNK = 8


class CropError(ValueError):
    """The volumes or lesions cannot be cropped as requested; the message gives the reason."""


@dataclass(frozen=True)
class CropSpec:
    """The grid and intensity handling of one model's input.

    ``size`` (voxels) and ``spacing`` (mm) are in ``(x, y, z)`` order; the crop array
    is ``(channels, z, y, x)``.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    channels: tuple[str, ...] = ("ct", "pet", "mask")
    normalizers: tuple[Normalizer | None, ...] = ()

    @classmethod
    def from_metadata(cls, metadata: CheckpointMetadata) -> CropSpec:
        """Return the crop specification stored in a checkpoint's metadata."""
        return cls(
            size=metadata.crop_size,
            spacing=metadata.spacing,
            channels=tuple(metadata.channels),
            normalizers=tuple(metadata.normalizers),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Crop array shape ``(z, y, x)``."""
        x, y, z = self.size
        return (z, y, x)

    def normalizer(self, channel: str) -> Normalizer | None:
        """Return the normaliser of ``channel``, or ``None`` for none."""
        index = self.channels.index(channel)
        return self.normalizers[index] if index < len(self.normalizers) else None


def grid_offsets(spec: CropSpec, device: torch.device) -> torch.Tensor:
    """Return the ``(z, y, x, 3)`` LPS offsets in mm of the crop's voxel centres from its centre."""
    axes = [
        (torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2.0) * spacing
        for size, spacing in zip(spec.size, spec.spacing, strict=True)
    ]
    z_axis, y_axis, x_axis = axes[2], axes[1], axes[0]
    grid_z, grid_y, grid_x = torch.meshgrid(z_axis, y_axis, x_axis, indexing="ij")
    return torch.stack([grid_x, grid_y, grid_z], dim=-1).to(torch.float32)


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


def box_channel(centre: Sequence[float], size_mm: Sequence[float], points: torch.Tensor) -> torch.Tensor:
    """Return 1 at ``points`` inside the axis-aligned box, 0 elsewhere (the mask of box mode)."""
    centre_t = torch.tensor(centre, dtype=points.dtype, device=points.device)
    half = torch.tensor(size_mm, dtype=points.dtype, device=points.device) / 2
    return ((points - centre_t).abs() <= half).all(dim=-1).to(torch.float32)


def lesion_box_centre(lesion: LesionMeasurement) -> tuple[float, float, float]:
    """Return the centre of the lesion's bounding box in LPS mm, the centre of its crop."""
    box = lesion.bbox_mm
    return ((box[0] + box[3]) / 2, (box[1] + box[4]) / 2, (box[2] + box[5]) / 2)


def lesion_box_size(lesion: LesionMeasurement) -> tuple[float, float, float]:
    """Return the side lengths in mm of the lesion's bounding box of voxel centres."""
    box = lesion.bbox_mm
    return (box[3] - box[0], box[4] - box[1], box[5] - box[2])


def chunks(count: int, size: int) -> Iterator[range]:
    """Yield consecutive index ranges of at most ``size`` covering ``range(count)``."""
    for start in range(0, count, size):
        yield range(start, min(count, start + size))


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
        self.ct = ct
        self.pet = pet
        self._data = {"ct": self._to_device(ct)}
        if pet is not None:
            self._data["pet"] = self._to_device(pet)

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
        chunk: int = DEFAULT_CHUNK,
    ) -> torch.Tensor:
        """Return ``(len(centres), channels, z, y, x)`` float32 crops.

        Parameters
        ----------
        spec
            Grid and normalisers of the model.
        centres
            LPS crop centres in mm, one per lesion.
        masks
            Per lesion, the :class:`LesionMeasurement` whose own mask fills the mask
            channel, or a ``(centre, size)`` box in mm whose inside is 1 (box mode).
        chunk
            Lesions sampled per call, which bounds the memory of the sampling grid.
        """
        if len(centres) != len(masks):
            raise CropError(f"{len(centres)} centres for {len(masks)} masks")
        unknown = set(spec.channels) - {"ct", "pet", "mask"}
        if unknown:
            raise CropError(f"unknown channels {sorted(unknown)}")

        out = torch.zeros((len(centres), len(spec.channels), *spec.shape), dtype=torch.float32, device=self.device)
        offsets = grid_offsets(spec, self.device)
        centre_tensor = torch.as_tensor(np.asarray(centres, dtype=np.float32).reshape(-1, 3), device=self.device)
        for batch in chunks(len(centres), max(1, chunk)):
            points = centre_tensor[batch.start : batch.stop, None, None, None, :] + offsets
            for index, channel in enumerate(spec.channels):
                if channel == "mask":
                    for row, lesion in zip(batch, (masks[i] for i in batch), strict=True):
                        out[row, index] = self._mask(lesion, points[row - batch.start])
                elif channel in self._data:
                    volume = self.ct if channel == "ct" else self.pet
                    out[batch.start : batch.stop, index] = volume_channel(
                        volume, points, spec.normalizer(channel), self._data[channel]
                    )
        return out

    def _mask(
        self, lesion: LesionMeasurement | tuple[Sequence[float], Sequence[float]], points: torch.Tensor
    ) -> torch.Tensor:
        if isinstance(lesion, tuple):
            return box_channel(lesion[0], lesion[1], points)
        return mask_channel(lesion, self.ct, points)

    def crop_lesions(self, spec: CropSpec, lesions: Sequence[LesionMeasurement], chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
        """Crop each lesion centred on its bounding box, with its own mask as the mask channel."""
        centres = [lesion_box_centre(lesion) for lesion in lesions]
        return self.crop(spec, centres, list(lesions), chunk)

    def crop_boxes(
        self,
        spec: CropSpec,
        centres: Sequence[Sequence[float]],
        sizes: Sequence[Sequence[float]],
        chunk: int = DEFAULT_CHUNK,
    ) -> torch.Tensor:
        """Crop boxes given by LPS centre and size in mm; the mask channel is 1 inside each box."""
        if len(centres) != len(sizes):
            raise CropError(f"{len(centres)} box centres for {len(sizes)} box sizes")
        boxes = [(tuple(c), tuple(s)) for c, s in zip(centres, sizes, strict=True)]
        return self.crop(spec, centres, boxes, chunk)


def crop_lesions(
    ct: Volume,
    pet: Volume | None,
    lesions: Sequence[LesionMeasurement],
    spec: CropSpec,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Return the ``(lesions, channels, z, y, x)`` crops of every lesion of a study."""
    return StudyCropper(ct, pet, device).crop_lesions(spec, lesions)
