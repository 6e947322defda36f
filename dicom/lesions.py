"""One :class:`LesionMeasurement` per lesion of a SEG, with volume, HU and SUV statistics.

A lesion is a 26-connected component of one segment on the CT grid, or the
whole segment when ``one_lesion_per_segment`` is set. PET statistics use the
PET voxels whose centres fall inside the lesion (looked up on the CT grid by
patient coordinates). A lesion smaller than one PET voxel uses the PET voxel
that contains its centroid.

SUVpeak is the largest mean SUV of a sphere of 1 ml (radius 6.20 mm) centred
on a PET voxel of the lesion. The sphere contains every PET voxel whose centre
lies within the radius, whether inside the lesion or not, and is cut at the
edges of the PET volume.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from dicom.seg import SegmentMask
from dicom.volume import Volume

logger = logging.getLogger(__name__)

#: Radius in mm of a sphere of 1 ml.
PEAK_SPHERE_RADIUS_MM = (3.0 * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
#: 26-connectivity: voxels touching by a face, an edge or a corner belong to one component.
CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


@dataclass
class LesionMeasurement:
    """Measurements of one lesion; coordinates are LPS millimetres.

    Attributes
    ----------
    segment_number, segment_label
        The SEG segment the lesion belongs to.
    component
        1-based index of the connected component within the segment, in
        label order, or 1 when each segment is one lesion.
    centroid_mm
        Mean of the lesion's CT voxel centres.
    bbox_mm
        ``[xmin, ymin, zmin, xmax, ymax, zmax]`` of the CT voxel centres.
    volume_ml, voxels
        Volume and CT voxel count.
    suv_max, suv_mean, suv_peak
        On the PET grid; ``None`` without PET or SUV factor.
    hu_mean
        Mean CT value.
    mask, mask_origin
        Boolean crop of the CT grid and the ``(slice, row, column)`` index of its first voxel.
    suv_max_index_mm
        LPS point of the SUVmax voxel, or the centroid without PET.
    """

    segment_number: int
    segment_label: str
    component: int
    centroid_mm: tuple[float, float, float]
    bbox_mm: tuple[float, float, float, float, float, float]
    volume_ml: float
    voxels: int
    suv_max: float | None
    suv_mean: float | None
    suv_peak: float | None
    hu_mean: float | None
    mask: np.ndarray = field(repr=False)
    mask_origin: tuple[int, int, int]
    suv_max_index_mm: tuple[float, float, float]


@dataclass(frozen=True)
class _PetStatistics:
    suv_max: float
    suv_mean: float
    suv_peak: float
    max_point: tuple[float, float, float]


def measure_lesions(
    segments: Sequence[SegmentMask],
    ct: Volume,
    pet: Volume | None,
    *,
    pet_in_suv: bool = True,
    one_lesion_per_segment: bool = False,
) -> list[LesionMeasurement]:
    """Split segments into lesions and measure each.

    Parameters
    ----------
    segments
        Segment masks on the CT grid.
    ct
        CT volume in HU.
    pet
        PET volume on its own grid, or ``None``.
    pet_in_suv
        Whether ``pet`` holds SUV; when false, SUV statistics are ``None``.
    one_lesion_per_segment
        Treat each segment as one lesion instead of splitting it into
        26-connected components.
    """
    lesions = []
    for segment in segments:
        for component, mask, origin in _components(segment, one_lesion_per_segment):
            lesions.append(_measure(segment, component, mask, origin, ct, pet if pet_in_suv else None))
    logger.info("measured %d lesions in %d segments", len(lesions), len(segments))
    return lesions


def _components(
    segment: SegmentMask, one_per_segment: bool
) -> list[tuple[int, np.ndarray, tuple[int, int, int]]]:
    if one_per_segment:
        return [(1, segment.mask, segment.origin)]
    labels, count = ndimage.label(segment.mask, structure=CONNECTIVITY_26)
    components = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        mask = labels[box] == index
        origin = tuple(int(start + part.start) for start, part in zip(segment.origin, box, strict=True))
        components.append((index, mask, origin))
    return components


def _measure(
    segment: SegmentMask,
    component: int,
    mask: np.ndarray,
    origin: tuple[int, int, int],
    ct: Volume,
    pet: Volume | None,
) -> LesionMeasurement:
    indices = np.argwhere(mask) + np.asarray(origin)
    points = ct.index_to_lps(indices)
    centroid = points.mean(axis=0)
    box_corners = ct.index_to_lps(_box_corners(indices.min(axis=0), indices.max(axis=0)))
    bbox = np.concatenate([box_corners.min(axis=0), box_corners.max(axis=0)])

    crop = tuple(slice(o, o + n) for o, n in zip(origin, mask.shape, strict=True))
    hu_mean = float(ct.array[crop][mask].mean())

    statistics = _pet_statistics(mask, origin, ct, pet, centroid) if pet is not None else None
    return LesionMeasurement(
        segment_number=segment.segment_number,
        segment_label=segment.segment_label,
        component=component,
        centroid_mm=_triple(centroid),
        bbox_mm=tuple(float(value) for value in bbox),  # type: ignore[arg-type]
        volume_ml=float(indices.shape[0] * ct.voxel_volume_ml),
        voxels=int(indices.shape[0]),
        suv_max=statistics.suv_max if statistics else None,
        suv_mean=statistics.suv_mean if statistics else None,
        suv_peak=statistics.suv_peak if statistics else None,
        hu_mean=hu_mean,
        mask=mask,
        mask_origin=origin,
        suv_max_index_mm=statistics.max_point if statistics else _triple(centroid),
    )


def _pet_statistics(
    mask: np.ndarray,
    origin: tuple[int, int, int],
    ct: Volume,
    pet: Volume,
    centroid: np.ndarray,
) -> _PetStatistics | None:
    """Measure SUV over the PET voxels whose centres fall inside the CT-grid mask."""
    pet_indices = _pet_voxels_in_mask(mask, origin, ct, pet)
    if pet_indices.shape[0] == 0:
        pet_indices = np.rint(pet.lps_to_index(centroid[np.newaxis])).astype(int)
        if np.any(pet_indices < 0) or np.any(pet_indices >= np.asarray(pet.array.shape)):
            logger.warning("a lesion at %s mm lies outside the PET field of view", _triple(centroid))
            return None

    values = pet.array[pet_indices[:, 0], pet_indices[:, 1], pet_indices[:, 2]]
    hottest = int(np.argmax(values))
    peak = _suv_peak(pet, pet_indices)
    return _PetStatistics(
        suv_max=float(values[hottest]),
        suv_mean=float(values.mean()),
        suv_peak=peak,
        max_point=_triple(pet.index_to_lps(pet_indices[hottest][np.newaxis])[0]),
    )


def _pet_voxels_in_mask(
    mask: np.ndarray, origin: tuple[int, int, int], ct: Volume, pet: Volume
) -> np.ndarray:
    """Return the ``(n, 3)`` PET indices whose centres lie in a CT voxel of the mask."""
    low = np.asarray(origin)
    corners = ct.index_to_lps(_box_corners(low - 0.5, low + np.asarray(mask.shape) - 0.5))
    pet_corners = pet.lps_to_index(corners)
    shape = np.asarray(pet.array.shape)
    start = np.clip(np.floor(pet_corners.min(axis=0)).astype(int), 0, shape)
    stop = np.clip(np.ceil(pet_corners.max(axis=0)).astype(int) + 1, 0, shape)
    if np.any(stop <= start):
        return np.empty((0, 3), dtype=int)

    grid = np.stack(
        np.meshgrid(*(np.arange(a, b) for a, b in zip(start, stop, strict=True)), indexing="ij"), axis=-1
    ).reshape(-1, 3)
    ct_indices = np.rint(ct.lps_to_index(pet.index_to_lps(grid))).astype(int) - low
    inside = np.all((ct_indices >= 0) & (ct_indices < np.asarray(mask.shape)), axis=1)
    hits = np.zeros(grid.shape[0], dtype=bool)
    hits[inside] = mask[ct_indices[inside, 0], ct_indices[inside, 1], ct_indices[inside, 2]]
    return grid[hits]


def _suv_peak(pet: Volume, lesion_indices: np.ndarray, chunk: int = 4096) -> float:
    """Return the largest mean SUV of a 1 ml sphere centred on one of ``lesion_indices``."""
    offsets = sphere_offsets(pet.affine, PEAK_SPHERE_RADIUS_MM)
    shape = np.asarray(pet.array.shape)
    best = -math.inf
    for begin in range(0, lesion_indices.shape[0], chunk):
        points = lesion_indices[begin : begin + chunk, np.newaxis, :] + offsets[np.newaxis]
        inside = np.all((points >= 0) & (points < shape), axis=2)
        clipped = np.clip(points, 0, shape - 1)
        values = pet.array[clipped[..., 0], clipped[..., 1], clipped[..., 2]]
        means = np.where(inside, values, 0.0).sum(axis=1) / inside.sum(axis=1)
        best = max(best, float(means.max()))
    return best


def sphere_offsets(affine: np.ndarray, radius_mm: float) -> np.ndarray:
    """Return the ``(n, 3)`` index offsets whose voxel centres lie within ``radius_mm`` of a centre."""
    steps = affine[:3, :3]
    reach = np.ceil(radius_mm / np.linalg.norm(steps, axis=0) + 1).astype(int)
    grid = np.stack(
        np.meshgrid(*(np.arange(-r, r + 1) for r in reach), indexing="ij"), axis=-1
    ).reshape(-1, 3)
    distance = np.linalg.norm(grid @ steps.T, axis=1)
    return grid[distance <= radius_mm + 1e-9]


def _box_corners(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return np.array(
        [[a, b, c] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])],
        dtype=np.float64,
    )


def _triple(values: np.ndarray) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))
