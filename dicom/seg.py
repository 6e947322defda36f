"""Segment masks of a DICOM Segmentation placed on a CT or PET grid (PS3.3 A.51, C.8.20).

The SEG is read with highdicom. Each frame belongs to one segment (Segment
Identification Sequence). A frame lies at its Plane Position (Patient) in the
SEG's frame of reference. A SEG without a frame of reference has no positions,
so its frames lie on the source images they were derived from (Source Image
Sequence, by SOP Instance UID).

A segment is placed on a target :class:`~dicom.volume.Volume` by patient
coordinates: each target voxel centre near the segment is mapped to the
nearest SEG frame (within half the SEG slice spacing) and to the nearest
pixel of that frame. The SEG and target grids may therefore differ in
spacing, extent and slice order. Frames absent from the SEG (sparse
encoding) read as empty.

FRACTIONAL segments are binarised at :data:`FRACTIONAL_THRESHOLD` of the
Maximum Fractional Value, so a voxel is inside when its probability or
occupancy is at least 0.5.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicom.volume import Volume, functional_group_value

logger = logging.getLogger(__name__)

#: Fraction of the Maximum Fractional Value (0062,000E) at and above which a voxel is inside.
FRACTIONAL_THRESHOLD = 0.5

SEGMENTATION_BINARY = "BINARY"
SEGMENTATION_FRACTIONAL = "FRACTIONAL"
SEGMENTATION_LABELMAP = "LABELMAP"
#: Segment Number of the background in a LABELMAP SEG.
BACKGROUND_SEGMENT_NUMBER = 0

#: Extra distance, in mm, accepted when matching a voxel centre to a SEG frame.
MATCH_TOLERANCE_MM = 0.01


class SegmentationError(ValueError):
    """A SEG cannot be read or placed on the image grid; the message names the SEG and the reason."""


@dataclass(frozen=True)
class SegmentMask:
    """One segment's mask on a target grid, cropped to the voxels the segment can touch.

    Attributes
    ----------
    segment_number, segment_label
        Segment Number (0062,0004) and Segment Label (0062,0005).
    mask
        Boolean crop of the target grid.
    origin
        ``(slice, row, column)`` index of the crop's first voxel in the target grid.
    """

    segment_number: int
    segment_label: str
    mask: np.ndarray
    origin: tuple[int, int, int]


@dataclass(frozen=True)
class _Plane:
    """Geometry shared by the frames of a SEG."""

    row_cosine: np.ndarray
    column_cosine: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_spacing: float

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_cosine, self.column_cosine)


def read_segmentation(source: Dataset | str | Path) -> hd.seg.Segmentation:
    """Read a SEG instance with highdicom.

    Raises
    ------
    SegmentationError
        If the instance is not a Segmentation or highdicom rejects it.
    """
    dataset = source if isinstance(source, Dataset) else pydicom.dcmread(source)
    if isinstance(dataset, hd.seg.Segmentation):
        return dataset
    if str(dataset.get("Modality", "")) != "SEG":
        raise SegmentationError(
            f"instance {dataset.get('SOPInstanceUID', '?')} is not a Segmentation (Modality "
            f"{dataset.get('Modality', 'missing')})"
        )
    try:
        return hd.seg.Segmentation.from_dataset(dataset, copy=False)
    except (AttributeError, KeyError, ValueError) as exc:
        raise SegmentationError(f"SEG {dataset.get('SOPInstanceUID', '?')} is invalid: {exc}") from exc


def segment_labels(seg: Dataset) -> dict[int, str]:
    """Return Segment Label by Segment Number, in the SEG's order.

    Segment 0 is left out because a LABELMAP SEG (as dcmqi writes it)
    uses it for the background, pixel value 0, which is not a finding.
    """
    return {
        int(item.SegmentNumber): str(item.get("SegmentLabel", ""))
        for item in seg.SegmentSequence
        if int(item.SegmentNumber) != BACKGROUND_SEGMENT_NUMBER
    }


def referenced_series_uids(seg: Dataset) -> list[str]:
    """Return the Series Instance UIDs in the SEG's Referenced Series Sequence (PS3.3 C.7.6.16)."""
    return [str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])]


def segment_masks(seg: Dataset, target: Volume) -> list[SegmentMask]:
    """Place every segment of ``seg`` on the grid of ``target``.

    Parameters
    ----------
    seg
        The Segmentation, as read by :func:`read_segmentation` or pydicom.
    target
        The grid to place the masks on (normally the CT).

    Returns
    -------
    list of SegmentMask
        One entry per segment with at least one voxel on the grid, in the
        order of the Segment Sequence. Overlapping segments each keep their
        own voxels.

    Raises
    ------
    SegmentationError
        If the SEG's frame of reference differs from the target's, a frame
        has neither a position nor a source image of the target series, or
        the SEG type is unknown.
    """
    seg = read_segmentation(seg)
    seg_uid = str(seg.get("SOPInstanceUID", "?"))
    check_frame_of_reference(seg, target)
    _check_segmentation_type(seg, seg_uid)

    per_frame = seg.get("PerFrameFunctionalGroupsSequence", [])
    if len(per_frame) != int(seg.get("NumberOfFrames", 1)):
        raise SegmentationError(
            f"SEG {seg_uid} has {seg.get('NumberOfFrames', 1)} frames but {len(per_frame)} "
            "per-frame functional groups"
        )
    positions = np.stack([_frame_position(item, index, seg_uid, target) for index, item in enumerate(per_frame)])
    plane = _plane(seg, target, positions)
    labels = segment_labels(seg)
    frame_segments = _frame_segments(seg, per_frame, labels)

    masks = []
    for number, label in labels.items():
        selected = [index for index, segments in enumerate(frame_segments) if number in segments]
        stack = _segment_frames(seg, selected, number)
        placed = place_frames(stack, positions[selected], plane, target)
        if placed is None:
            logger.warning(
                "SEG %s: segment %d has no voxel on the grid of series %s",
                seg_uid,
                number,
                target.series_instance_uid,
            )
            continue
        mask, origin = placed
        masks.append(SegmentMask(number, label, mask, origin))
    logger.info(
        "SEG %s: %d of %d segments placed on series %s",
        seg_uid,
        len(masks),
        len(labels),
        target.series_instance_uid,
    )
    return masks


def check_frame_of_reference(seg: Dataset, target: Volume) -> None:
    """Raise :class:`SegmentationError` when the SEG and the target use different frames of reference."""
    seg_frame = str(seg.get("FrameOfReferenceUID", ""))
    if seg_frame and seg_frame != target.frame_of_reference_uid:
        raise SegmentationError(
            f"SEG {seg.get('SOPInstanceUID', '?')} uses frame of reference {seg_frame} but series "
            f"{target.series_instance_uid} uses {target.frame_of_reference_uid}; registered SEGs "
            "are not supported, so segment the images of this frame of reference"
        )


def place_frames(
    stack: np.ndarray,
    positions: np.ndarray,
    plane: _Plane,
    target: Volume,
) -> tuple[np.ndarray, tuple[int, int, int]] | None:
    """Sample binary frames at the voxel centres of ``target`` near them.

    Parameters
    ----------
    stack
        Boolean frames ``(frames, rows, columns)`` of one segment.
    positions
        Image Position (Patient) of each frame, ``(frames, 3)``.
    plane
        Orientation and spacing shared by the frames.
    target
        Grid to sample on.

    Returns
    -------
    tuple or None
        The boolean crop and the index of its first voxel, or ``None`` when
        no voxel of the segment falls on the grid.
    """
    keep = stack.reshape(stack.shape[0], -1).any(axis=1)
    stack, positions = stack[keep], positions[keep]
    if stack.shape[0] == 0:
        return None

    order = np.argsort(positions @ plane.normal)
    stack, positions = stack[order], positions[order]
    along = positions @ plane.normal
    box = _target_box(stack, positions, plane, target)
    if box is None:
        return None
    start, stop = box

    mask = np.zeros(tuple(stop - start), dtype=bool)
    rows, columns = np.meshgrid(
        np.arange(start[1], stop[1]), np.arange(start[2], stop[2]), indexing="ij"
    )
    for offset, slice_index in enumerate(range(start[0], stop[0])):
        indices = np.stack([np.full(rows.size, slice_index), rows.ravel(), columns.ravel()], axis=1)
        points = target.index_to_lps(indices)
        mask[offset] = _sample(stack, positions, along, plane, points).reshape(rows.shape)

    if not mask.any():
        return None
    return _trim(mask, start)


def _sample(
    stack: np.ndarray,
    positions: np.ndarray,
    along: np.ndarray,
    plane: _Plane,
    points: np.ndarray,
) -> np.ndarray:
    """Return the value of the nearest frame pixel at each point, False off the frames."""
    point_along = points @ plane.normal
    upper = np.clip(np.searchsorted(along, point_along), 0, len(along) - 1)
    lower = np.clip(upper - 1, 0, len(along) - 1)
    nearest = np.where(
        np.abs(along[lower] - point_along) <= np.abs(along[upper] - point_along), lower, upper
    )
    near_enough = np.abs(along[nearest] - point_along) <= plane.slice_spacing / 2 + MATCH_TOLERANCE_MM

    relative = points - positions[nearest]
    row = np.rint(relative @ plane.column_cosine / plane.pixel_spacing[0]).astype(np.int64)
    column = np.rint(relative @ plane.row_cosine / plane.pixel_spacing[1]).astype(np.int64)
    inside = near_enough & (row >= 0) & (row < stack.shape[1]) & (column >= 0) & (column < stack.shape[2])

    values = np.zeros(points.shape[0], dtype=bool)
    values[inside] = stack[nearest[inside], row[inside], column[inside]]
    return values


def _target_box(
    stack: np.ndarray, positions: np.ndarray, plane: _Plane, target: Volume
) -> tuple[np.ndarray, np.ndarray] | None:
    """Return the index range of target voxels that the segment's pixels can reach."""
    corners = []
    for frame, position in zip(stack, positions, strict=True):
        rows = np.flatnonzero(frame.any(axis=1))
        columns = np.flatnonzero(frame.any(axis=0))
        for row in (rows[0] - 0.5, rows[-1] + 0.5):
            for column in (columns[0] - 0.5, columns[-1] + 0.5):
                for depth in (-0.5, 0.5):
                    corners.append(
                        position
                        + row * plane.pixel_spacing[0] * plane.column_cosine
                        + column * plane.pixel_spacing[1] * plane.row_cosine
                        + depth * plane.slice_spacing * plane.normal
                    )
    indices = target.lps_to_index(np.asarray(corners))
    shape = np.asarray(target.array.shape)
    start = np.clip(np.floor(indices.min(axis=0)).astype(int), 0, shape)
    stop = np.clip(np.ceil(indices.max(axis=0)).astype(int) + 1, 0, shape)
    if np.any(stop <= start):
        return None
    return start, stop


def _trim(mask: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    nonzero = np.argwhere(mask)
    low = nonzero.min(axis=0)
    high = nonzero.max(axis=0) + 1
    cropped = mask[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    origin = start + low
    return np.ascontiguousarray(cropped), (int(origin[0]), int(origin[1]), int(origin[2]))


def _check_segmentation_type(seg: Dataset, seg_uid: str) -> None:
    seg_type = str(seg.get("SegmentationType", ""))
    if seg_type not in (SEGMENTATION_BINARY, SEGMENTATION_FRACTIONAL, SEGMENTATION_LABELMAP):
        raise SegmentationError(
            f"SEG {seg_uid} has Segmentation Type {seg_type or '(missing)'}; "
            "BINARY, FRACTIONAL or LABELMAP is required"
        )


def _segment_frames(seg: hd.seg.Segmentation, frame_indices: Sequence[int], number: int) -> np.ndarray:
    """Decode the frames of one segment as booleans, one frame at a time.

    Decoding only the segment's frames keeps memory at the size of the
    largest segment instead of the whole SEG.
    """
    stack = np.zeros((len(frame_indices), int(seg.Rows), int(seg.Columns)), dtype=bool)
    seg_type = str(seg.SegmentationType)
    maximum = float(seg.get("MaximumFractionalValue", 255))
    for slot, index in enumerate(frame_indices):
        frame = seg.get_stored_frame(index + 1)
        if seg_type == SEGMENTATION_LABELMAP:
            stack[slot] = frame == number
        elif seg_type == SEGMENTATION_FRACTIONAL:
            stack[slot] = frame >= FRACTIONAL_THRESHOLD * maximum
        else:
            stack[slot] = frame > 0
    return stack


def _frame_segments(seg: Dataset, per_frame: Sequence[Dataset], labels: dict[int, str]) -> list[set[int]]:
    """Return the segment numbers each frame can contain."""
    if seg.SegmentationType == SEGMENTATION_LABELMAP:
        return [set(labels)] * len(per_frame)
    shared = seg.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    numbers = []
    for index, item in enumerate(per_frame):
        identification = item.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        if not identification:
            raise SegmentationError(
                f"frame {index + 1} of SEG {seg.get('SOPInstanceUID', '?')} lacks the "
                "Segment Identification Sequence"
            )
        numbers.append({int(identification[0].ReferencedSegmentNumber)})
    return numbers


def _plane(seg: Dataset, target: Volume, positions: np.ndarray) -> _Plane:
    """Read the orientation and spacing shared by the SEG's frames, defaulting to the target's.

    The slice spacing is Spacing Between Slices when present, else the
    smallest distance between two frame positions along the normal, else
    Slice Thickness. Slice Thickness comes last because it can be smaller
    than the spacing, which would leave gaps between the frames.
    """
    shared = seg.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    first = seg.get("PerFrameFunctionalGroupsSequence", [Dataset()])[0]
    orientation = functional_group_value(first, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
    measures = (first.get("PixelMeasuresSequence") or shared.get("PixelMeasuresSequence") or [Dataset()])[0]

    if orientation is None:
        row_cosine = target.affine[:3, 2] / np.linalg.norm(target.affine[:3, 2])
        column_cosine = target.affine[:3, 1] / np.linalg.norm(target.affine[:3, 1])
    else:
        row_cosine = np.asarray(orientation[:3], dtype=np.float64)
        column_cosine = np.asarray(orientation[3:], dtype=np.float64)

    target_spacing = target.spacing
    if "PixelSpacing" in measures:
        pixel_spacing = (float(measures.PixelSpacing[0]), float(measures.PixelSpacing[1]))
    else:
        pixel_spacing = (target_spacing[1], target_spacing[2])
    normal = np.cross(row_cosine, column_cosine)
    steps = np.diff(np.unique(np.round(positions @ normal, 3)))
    if measures.get("SpacingBetweenSlices"):
        slice_spacing = float(measures.SpacingBetweenSlices)
    elif steps.size:
        slice_spacing = float(steps.min())
    else:
        slice_spacing = float(measures.get("SliceThickness") or target_spacing[0])
    return _Plane(row_cosine, column_cosine, pixel_spacing, slice_spacing)


def _frame_position(item: Dataset, index: int, seg_uid: str, target: Volume) -> np.ndarray:
    """Return a frame's Image Position (Patient), or that of the target slice it was derived from."""
    planes = item.get("PlanePositionSequence")
    if planes and "ImagePositionPatient" in planes[0]:
        return np.asarray([float(value) for value in planes[0].ImagePositionPatient])

    source_uids = [
        str(source.ReferencedSOPInstanceUID)
        for derivation in item.get("DerivationImageSequence", [])
        for source in derivation.get("SourceImageSequence", [])
    ]
    for uid in source_uids:
        if uid in target.sop_instance_uids:
            slice_index = target.sop_instance_uids.index(uid)
            return target.index_to_lps(np.array([[slice_index, 0, 0]]))[0]
    raise SegmentationError(
        f"frame {index + 1} of SEG {seg_uid} has no Plane Position and none of its source images "
        f"({', '.join(source_uids) or 'none'}) is in series {target.series_instance_uid}"
    )
