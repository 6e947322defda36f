"""Outline of a lesion on one CT image, for the planar ROI groups of the report.

Web viewers such as OHIF 3 draw TID 1410 groups with a 2-D SCOORD on an image,
so every lesion gets a closed polyline on the CT slice nearest to its centroid.
The outline follows the lesion mask with marching squares (contourpy, the
contour engine of matplotlib) at the 0.5 level between mask voxel centres.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import contourpy
import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

logger = logging.getLogger(__name__)

# A CT image counts as the lesion's slice when its plane is closer to the
# mask slice than this fraction of the slice spacing.
_PLANE_TOLERANCE = 0.25


class ContourError(ValueError):
    """The lesion mask cannot be outlined on any of the CT images."""


@dataclass(frozen=True)
class PlanarOutline:
    """Closed outline of a lesion's cross-section on one CT image.

    Attributes
    ----------
    image : pydicom.dataset.Dataset
        Header of the CT image the outline lies on.
    points : numpy.ndarray
        ``(n, 2)`` float array of ``(column, row)`` image coordinates as SCOORD
        Graphic Data uses them: ``(0, 0)`` is the top left corner of the top left
        pixel, so a pixel centre is at ``(c + 0.5, r + 0.5)`` (PS3.3 C.18.6.1.1).
        The first and last points are equal.
    area_mm2 : float
        Area enclosed by ``points`` in mm².
    slice_index : int
        Index of the image's slice in the CT volume.
    """

    image: Dataset
    points: np.ndarray
    area_mm2: float
    slice_index: int


def polygon_area(points: np.ndarray) -> float:
    """Return the unsigned area of a closed polygon by the shoelace formula.

    Parameters
    ----------
    points : numpy.ndarray
        ``(n, 2)`` vertices; the polygon is closed whether or not the last
        vertex repeats the first.
    """
    x = points[:, 0]
    y = points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def choose_slice(mask: np.ndarray, mask_origin: Sequence[int], centroid_index: float) -> int:
    """Return the volume slice index of the mask slice nearest to the centroid.

    Slices without mask voxels are skipped, so a lesion shaped like a ring
    still gets the slice through its body rather than its empty centre.

    Parameters
    ----------
    mask : numpy.ndarray
        Boolean lesion mask ``(slices, rows, columns)`` cropped to the lesion.
    mask_origin : Sequence[int]
        ``(slice, row, column)`` index of the mask's first voxel in the volume.
    centroid_index : float
        Centroid position along the slice axis, in volume index units.
    """
    occupied = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if occupied.size == 0:
        raise ContourError("the lesion mask is empty; there is no slice to outline")
    slice_indices = occupied + int(mask_origin[0])
    return int(slice_indices[np.argmin(np.abs(slice_indices - centroid_index))])


def _largest_filled_component(section: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(section)
    if count > 1:
        sizes = ndimage.sum_labels(section, labels, index=np.arange(1, count + 1))
        section = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(section)


def _outline_indices(section: np.ndarray) -> np.ndarray:
    """Return the closed outline of a 2-D mask as ``(row, column)`` indices."""
    padded = np.pad(section.astype(np.float64), 1)
    generator = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate)
    loops = [loop for loop in generator.lines(0.5) if len(loop) >= 4]
    if not loops:
        raise ContourError("the lesion cross-section has no closed outline")
    loop = max(loops, key=polygon_area)
    if not np.array_equal(loop[0], loop[-1]):
        loop = np.vstack([loop, loop[:1]])

    # contourpy returns (x, y) = (column, row) of the padded array.
    return np.column_stack([loop[:, 1] - 1.0, loop[:, 0] - 1.0])


def _image_normal(image: Dataset) -> np.ndarray:
    orientation = np.asarray(image.ImageOrientationPatient, dtype=np.float64)
    return np.cross(orientation[:3], orientation[3:])


def find_image_for_slice(
    images: Sequence[Dataset], affine: np.ndarray, slice_index: int
) -> Dataset:
    """Return the CT image whose plane contains the volume slice ``slice_index``.

    Parameters
    ----------
    images : Sequence[pydicom.dataset.Dataset]
        Headers of the CT series (single-frame images).
    affine : numpy.ndarray
        4x4 index-to-LPS matrix of the CT volume; column 0 is the slice step.
    slice_index : int
        Slice index in the CT volume.

    Raises
    ------
    ContourError
        If no image lies in that plane.
    """
    point = affine @ np.array([slice_index, 0.0, 0.0, 1.0])
    spacing = float(np.linalg.norm(affine[:3, 0])) or 1.0
    best: Dataset | None = None
    best_distance = np.inf
    for image in images:
        offset = point[:3] - np.asarray(image.ImagePositionPatient, dtype=np.float64)
        distance = abs(float(np.dot(offset, _image_normal(image))))
        if distance < best_distance:
            best, best_distance = image, distance
    if best is None or best_distance > _PLANE_TOLERANCE * spacing:
        raise ContourError(
            f"no CT image lies in the plane of volume slice {slice_index} "
            f"(nearest is {best_distance:.2f} mm away); the CT headers do not match the CT volume"
        )
    return best


def volume_to_image_coordinates(
    indices: np.ndarray, slice_index: int, affine: np.ndarray, image: Dataset
) -> np.ndarray:
    """Map ``(row, column)`` volume indices on one slice to SCOORD image coordinates.

    The mapping goes through patient coordinates, so it stays correct when the
    volume's row or column axes run opposite to the image's.

    Returns
    -------
    numpy.ndarray
        ``(n, 2)`` array of ``(column, row)`` with the pixel-corner origin of
        PS3.3 C.18.6.1.1.
    """
    homogeneous = np.column_stack(
        [np.full(len(indices), float(slice_index)), indices, np.ones(len(indices))]
    )
    patient = (affine @ homogeneous.T).T[:, :3]
    orientation = np.asarray(image.ImageOrientationPatient, dtype=np.float64)
    row_spacing, column_spacing = (float(v) for v in image.PixelSpacing)
    offset = patient - np.asarray(image.ImagePositionPatient, dtype=np.float64)
    columns = offset @ orientation[:3] / column_spacing
    rows = offset @ orientation[3:] / row_spacing
    return np.column_stack([columns + 0.5, rows + 0.5])


def outline_lesion(
    mask: np.ndarray,
    mask_origin: Sequence[int],
    centroid_mm: Sequence[float],
    affine: np.ndarray,
    images: Sequence[Dataset],
) -> PlanarOutline:
    """Outline a lesion on the CT image nearest to its centroid.

    On that slice the largest connected part of the mask is outlined with its
    holes filled. Smaller parts are left out because one planar group carries
    one polyline.

    Parameters
    ----------
    mask : numpy.ndarray
        Boolean lesion mask ``(slices, rows, columns)`` on the CT grid.
    mask_origin : Sequence[int]
        ``(slice, row, column)`` index of the mask's first voxel in the volume.
    centroid_mm : Sequence[float]
        Lesion centroid in LPS patient coordinates (mm).
    affine : numpy.ndarray
        4x4 index-to-LPS matrix of the CT volume.
    images : Sequence[pydicom.dataset.Dataset]
        Headers of the CT images: ImagePositionPatient, ImageOrientationPatient,
        PixelSpacing, SOPClassUID and SOPInstanceUID are used.

    Raises
    ------
    ContourError
        If the mask is empty or no CT image lies in the plane of its slice.
    """
    centroid_index = np.linalg.solve(affine, np.append(np.asarray(centroid_mm, float), 1.0))[0]
    slice_index = choose_slice(mask, mask_origin, float(centroid_index))
    section = np.asarray(mask[slice_index - int(mask_origin[0])], dtype=bool)
    section = _largest_filled_component(section)

    local = _outline_indices(section)
    volume_indices = local + np.array([mask_origin[1], mask_origin[2]], dtype=np.float64)
    image = find_image_for_slice(images, affine, slice_index)
    points = volume_to_image_coordinates(volume_indices, slice_index, affine, image)

    row_spacing, column_spacing = (float(v) for v in image.PixelSpacing)
    area = polygon_area(points) * row_spacing * column_spacing
    logger.debug(
        "outlined lesion on CT image %s (slice %d) with %d points, %.1f mm2",
        image.SOPInstanceUID, slice_index, len(points), area,
    )
    return PlanarOutline(image=image, points=points, area_mm2=area, slice_index=slice_index)
