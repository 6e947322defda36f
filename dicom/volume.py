"""Assemble a CT or PET series into a 3-D :class:`Volume` in LPS patient coordinates.

Classic single-frame series (one instance per slice) and Enhanced multi-frame
instances (PS3.3 C.7.6.16, Multi-frame Functional Groups) share one path. Each
frame becomes a :class:`FrameRecord` with its position, orientation, spacing
and rescale values. The records are sorted by their position along the slice
normal, never by file name, Instance Number or order of arrival.

Headers are read without pixel data first. Pixel data is then read one
instance at a time into a preallocated float32 array, so the peak memory is
about the size of the output volume plus one instance.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

#: Positions or directions closer than this (mm, or cosine units) are equal.
POSITION_TOLERANCE_MM = 0.01
#: Relative slice spacing deviation accepted as uniform.
SPACING_RELATIVE_TOLERANCE = 0.01
#: Largest gap, in multiples of the typical slice spacing, that is filled by interpolation.
MAX_GAP_FACTOR = 3.0


class SeriesError(ValueError):
    """A series cannot be assembled into a volume; the message names the series and the reason."""


@dataclass(frozen=True)
class Volume:
    """A 3-D image on a regular grid in LPS patient coordinates.

    Attributes
    ----------
    array
        Voxel values, shape ``(slices, rows, columns)``, float32: HU for CT,
        SUV or Bq/ml for PET.
    affine
        4x4 float64 matrix; ``affine @ [slice, row, column, 1]`` is the voxel
        centre in LPS millimetres. Column 0 is the slice step (sheared when the
        gantry was tilted), column 1 the row step along the column direction
        cosine and column 2 the column step along the row direction cosine.
    series_instance_uid, frame_of_reference_uid, modality
        Copied from the series.
    sop_instance_uids
        SOP Instance UID of the instance each slice came from, one per slice,
        empty when the volume was resampled along the slice axis.
    """

    array: np.ndarray
    affine: np.ndarray
    series_instance_uid: str
    frame_of_reference_uid: str
    modality: str
    sop_instance_uids: tuple[str, ...] = field(default=(), repr=False)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Length in mm of the slice, row and column steps."""
        lengths = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(lengths[0]), float(lengths[1]), float(lengths[2]))

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (exact for sheared grids too)."""
        return abs(float(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def index_to_lps(self, indices: np.ndarray) -> np.ndarray:
        """Map ``(n, 3)`` voxel indices (slice, row, column) to ``(n, 3)`` LPS points in mm."""
        indices = np.asarray(indices, dtype=np.float64).reshape(-1, 3)
        return indices @ self.affine[:3, :3].T + self.affine[:3, 3]

    def lps_to_index(self, points: np.ndarray) -> np.ndarray:
        """Map ``(n, 3)`` LPS points in mm to fractional ``(n, 3)`` voxel indices."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        inverse = np.linalg.inv(self.affine)
        return points @ inverse[:3, :3].T + inverse[:3, 3]


@dataclass(frozen=True)
class FrameRecord:
    """Geometry and rescale values of one frame, read from the header alone."""

    source: Path | Dataset
    frame_index: int | None
    sop_instance_uid: str
    position: np.ndarray
    row_cosine: np.ndarray
    column_cosine: np.ndarray
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    slope: float
    intercept: float


def read_header(path: Path) -> Dataset:
    """Read a DICOM file without its pixel data (PS3.10 file format)."""
    return pydicom.dcmread(path, stop_before_pixels=True)


def load_series(
    sources: Sequence[Dataset | str | Path],
    *,
    max_gap_factor: float = MAX_GAP_FACTOR,
) -> Volume:
    """Assemble one series of CT or PET instances into a :class:`Volume`.

    Parameters
    ----------
    sources
        The instances of one series: file paths, or datasets (with pixel data,
        or headers read from a file, whose pixel data is read from
        ``dataset.filename``).
    max_gap_factor
        A gap between neighbouring slices up to this many typical slice
        spacings is filled by linear interpolation; a larger gap rejects the
        series.

    Returns
    -------
    Volume
        Rescaled values (Rescale Slope and Intercept applied per frame) as
        float32, sorted along the slice normal.

    Raises
    ------
    SeriesError
        If the instances mix series, orientations or matrix sizes (localizer
        images are skipped first), two frames
        share a position, the positions do not lie on a line, or a gap is too
        large.
    """
    if not sources:
        raise SeriesError("no instances were given to assemble a volume")
    headers = [_as_header(source) for source in sources]
    series_uid = str(headers[0].get("SeriesInstanceUID", ""))
    _check_single_series(headers, series_uid)
    headers = _without_localizers(headers, series_uid)

    records = [record for header in headers for record in frame_records(header)]
    normal = _normal(records[0])
    records.sort(key=lambda record: float(np.dot(record.position, normal)))
    _check_common_grid(records, series_uid)

    step, positions_along = _slice_step(records, series_uid)
    array = _read_pixels(records, series_uid)
    first = records[0]
    affine = _affine(first, step)
    uids = tuple(record.sop_instance_uid for record in records)

    if not _is_uniform(positions_along):
        array, affine = _resample_slices(array, affine, positions_along, series_uid, max_gap_factor)
        uids = ()

    logger.info(
        "assembled series %s: %d slices of %dx%d, spacing %s mm",
        series_uid,
        array.shape[0],
        array.shape[1],
        array.shape[2],
        ", ".join(f"{value:.3f}" for value in np.linalg.norm(affine[:3, :3], axis=0)),
    )
    return Volume(
        array=array,
        affine=affine,
        series_instance_uid=series_uid,
        frame_of_reference_uid=str(headers[0].get("FrameOfReferenceUID", "")),
        modality=str(headers[0].get("Modality", "")),
        sop_instance_uids=uids,
    )


def frame_records(header: Dataset) -> list[FrameRecord]:
    """Return one :class:`FrameRecord` per frame of a single- or multi-frame instance.

    Multi-frame values come from the Per-frame Functional Groups Sequence,
    falling back to the Shared Functional Groups Sequence (PS3.3 C.7.6.16):
    Plane Position, Plane Orientation, Pixel Measures and Pixel Value
    Transformation.
    """
    source: Path | Dataset = Path(header.filename) if _has_file(header) else header
    uid = str(header.SOPInstanceUID)
    if "PerFrameFunctionalGroupsSequence" not in header:
        return [_classic_record(header, source, uid)]

    shared = header.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    records = []
    for index, per_frame in enumerate(header.PerFrameFunctionalGroupsSequence):
        position = functional_group_value(per_frame, shared, "PlanePositionSequence", "ImagePositionPatient")
        orientation = functional_group_value(
            per_frame, shared, "PlaneOrientationSequence", "ImageOrientationPatient"
        )
        spacing = functional_group_value(per_frame, shared, "PixelMeasuresSequence", "PixelSpacing")
        slope = functional_group_value(per_frame, shared, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = functional_group_value(
            per_frame, shared, "PixelValueTransformationSequence", "RescaleIntercept"
        )
        if position is None or orientation is None or spacing is None:
            raise SeriesError(
                f"frame {index + 1} of instance {uid} lacks Plane Position, Plane Orientation "
                "or Pixel Measures; the volume geometry is unknown"
            )
        records.append(
            FrameRecord(
                source=source,
                frame_index=index,
                sop_instance_uid=uid,
                position=np.asarray(position, dtype=np.float64),
                row_cosine=np.asarray(orientation[:3], dtype=np.float64),
                column_cosine=np.asarray(orientation[3:], dtype=np.float64),
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                rows=int(header.Rows),
                columns=int(header.Columns),
                slope=float(slope if slope is not None else header.get("RescaleSlope", 1.0)),
                intercept=float(intercept if intercept is not None else header.get("RescaleIntercept", 0.0)),
            )
        )
    return records


def _classic_record(header: Dataset, source: Path | Dataset, uid: str) -> FrameRecord:
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if keyword not in header:
            raise SeriesError(
                f"instance {uid} of series {header.get('SeriesInstanceUID', '?')} lacks {keyword}; "
                "the volume geometry is unknown"
            )
    orientation = [float(value) for value in header.ImageOrientationPatient]
    return FrameRecord(
        source=source,
        frame_index=None,
        sop_instance_uid=uid,
        position=np.asarray([float(value) for value in header.ImagePositionPatient]),
        row_cosine=np.asarray(orientation[:3]),
        column_cosine=np.asarray(orientation[3:]),
        pixel_spacing=(float(header.PixelSpacing[0]), float(header.PixelSpacing[1])),
        rows=int(header.Rows),
        columns=int(header.Columns),
        slope=float(header.get("RescaleSlope", 1.0)),
        intercept=float(header.get("RescaleIntercept", 0.0)),
    )


def functional_group_value(per_frame: Dataset, shared: Dataset, sequence: str, keyword: str) -> object:
    """Return ``keyword`` from a functional group, per-frame first, then shared, else ``None``."""
    for group in (per_frame, shared):
        items = group.get(sequence)
        if items and keyword in items[0]:
            return items[0][keyword].value
    return None


def _as_header(source: Dataset | str | Path) -> Dataset:
    if isinstance(source, Dataset):
        return source
    return read_header(Path(source))


def _without_localizers(headers: Sequence[Dataset], series_uid: str) -> list[Dataset]:
    """Drop scout images, which some scanners store in the axial series (Image Type value 3 LOCALIZER)."""
    kept = [header for header in headers if not _is_localizer(header)]
    if len(kept) < len(headers):
        logger.info("series %s: skipped %d localizer images", series_uid, len(headers) - len(kept))
    if not kept:
        raise SeriesError(f"series {series_uid} contains only localizer images; it is not a volume")
    return kept


def _is_localizer(header: Dataset) -> bool:
    image_type = header.get("ImageType")
    if image_type is None or isinstance(image_type, str):
        return False
    values = [str(value).upper() for value in image_type]
    return len(values) > 2 and values[2] == "LOCALIZER"


def _has_file(dataset: Dataset) -> bool:
    filename = getattr(dataset, "filename", None)
    return isinstance(filename, str | Path) and bool(filename) and "PixelData" not in dataset


def _check_single_series(headers: Sequence[Dataset], series_uid: str) -> None:
    others = {str(header.get("SeriesInstanceUID", "")) for header in headers} - {series_uid}
    if others:
        raise SeriesError(
            f"instances of several series were given together: {series_uid} and {sorted(others)}; "
            "pass one series at a time"
        )


def _normal(record: FrameRecord) -> np.ndarray:
    return np.cross(record.row_cosine, record.column_cosine)


def _check_common_grid(records: Sequence[FrameRecord], series_uid: str) -> None:
    first = records[0]
    for record in records[1:]:
        same_orientation = np.allclose(record.row_cosine, first.row_cosine, atol=1e-4) and np.allclose(
            record.column_cosine, first.column_cosine, atol=1e-4
        )
        if not same_orientation:
            raise SeriesError(
                f"series {series_uid} mixes image orientations (instance {record.sop_instance_uid}); "
                "it is not one volume"
            )
        if (record.rows, record.columns) != (first.rows, first.columns) or not np.allclose(
            record.pixel_spacing, first.pixel_spacing, rtol=SPACING_RELATIVE_TOLERANCE
        ):
            raise SeriesError(
                f"series {series_uid} mixes matrix sizes or pixel spacings "
                f"(instance {record.sop_instance_uid}); it is not one volume"
            )


def _slice_step(records: Sequence[FrameRecord], series_uid: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean step vector between slices and each slice's distance from the first.

    The step need not be parallel to the slice normal: with gantry tilt the
    positions advance along the table axis while the image plane is tilted,
    and the affine then carries that shear.
    """
    positions = np.stack([record.position for record in records])
    if len(records) == 1:
        thickness = _single_slice_thickness(records[0])
        return _normal(records[0]) * thickness, np.zeros(1)

    offsets = positions - positions[0]
    direction = offsets[-1] / np.linalg.norm(offsets[-1])
    along = offsets @ direction
    if np.any(np.diff(along) < POSITION_TOLERANCE_MM):
        duplicate = int(np.argmin(np.diff(along)))
        raise SeriesError(
            f"series {series_uid} has two frames at the same position "
            f"(instances {records[duplicate].sop_instance_uid} and "
            f"{records[duplicate + 1].sop_instance_uid}); it holds more than one volume"
        )
    off_line = np.linalg.norm(offsets - np.outer(along, direction), axis=1)
    if np.max(off_line) > max(POSITION_TOLERANCE_MM, 0.01 * float(np.median(np.diff(along)))):
        raise SeriesError(
            f"slice positions of series {series_uid} do not lie on a line "
            f"(largest deviation {np.max(off_line):.3f} mm); it is not one volume"
        )

    _log_tilt(records[0], direction, series_uid)
    step = direction * float(np.median(np.diff(along)))
    return step, along


def _single_slice_thickness(record: FrameRecord) -> float:
    if isinstance(record.source, Dataset):
        return float(record.source.get("SliceThickness", 1.0) or 1.0)
    return 1.0


def _log_tilt(record: FrameRecord, direction: np.ndarray, series_uid: str) -> None:
    cosine = abs(float(np.dot(direction, _normal(record))))
    angle = float(np.degrees(np.arccos(min(1.0, cosine))))
    if angle > 0.1:
        logger.info(
            "series %s: slices step %.2f degrees off the slice normal (gantry tilt); "
            "the affine is sheared",
            series_uid,
            angle,
        )


def _is_uniform(along: np.ndarray) -> bool:
    if along.size < 3:
        return True
    steps = np.diff(along)
    typical = float(np.median(steps))
    return bool(np.all(np.abs(steps - typical) <= SPACING_RELATIVE_TOLERANCE * typical + POSITION_TOLERANCE_MM))


def _affine(first: FrameRecord, step: np.ndarray) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = first.column_cosine * first.pixel_spacing[0]
    affine[:3, 2] = first.row_cosine * first.pixel_spacing[1]
    affine[:3, 3] = first.position
    return affine


def _read_pixels(records: Sequence[FrameRecord], series_uid: str) -> np.ndarray:
    """Read every frame into one float32 array, rescaling each frame with its own values."""
    first = records[0]
    array = np.empty((len(records), first.rows, first.columns), dtype=np.float32)
    slots: dict[object, list[tuple[int, FrameRecord]]] = {}
    for slot, record in enumerate(records):
        slots.setdefault(_source_key(record.source), []).append((slot, record))

    for entries in slots.values():
        pixels = _source_pixels(entries[0][1].source, series_uid)
        for slot, record in entries:
            frame = pixels if record.frame_index is None else pixels[record.frame_index]
            target = array[slot]
            target[...] = frame
            if record.slope != 1.0:
                target *= np.float32(record.slope)
            if record.intercept != 0.0:
                target += np.float32(record.intercept)
        del pixels
    return array


def _source_key(source: Path | Dataset) -> object:
    return source if isinstance(source, Path) else id(source)


def _source_pixels(source: Path | Dataset, series_uid: str) -> np.ndarray:
    try:
        if isinstance(source, Path):
            return pydicom.dcmread(source).pixel_array
        return source.pixel_array
    except (AttributeError, ValueError, OSError) as exc:
        raise SeriesError(f"cannot read the pixel data of series {series_uid}: {exc}") from exc


def _resample_slices(
    array: np.ndarray,
    affine: np.ndarray,
    along: np.ndarray,
    series_uid: str,
    max_gap_factor: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample non-uniformly spaced slices onto the typical spacing by linear interpolation."""
    steps = np.diff(along)
    typical = float(np.median(steps))
    if np.max(steps) > max_gap_factor * typical:
        at = int(np.argmax(steps))
        raise SeriesError(
            f"series {series_uid} has a gap of {steps[at]:.2f} mm after slice {at + 1} "
            f"(typical spacing {typical:.2f} mm, at most {max_gap_factor:g} spacings are filled); "
            "resend the complete series"
        )

    count = int(round(along[-1] / typical)) + 1
    targets = np.arange(count) * typical
    upper = np.clip(np.searchsorted(along, targets, side="right"), 1, len(along) - 1)
    lower = upper - 1
    weight = ((targets - along[lower]) / (along[upper] - along[lower])).astype(np.float32)
    weight = np.clip(weight, 0.0, 1.0)
    resampled = np.empty((count,) + array.shape[1:], dtype=np.float32)
    for index in range(count):
        resampled[index] = (1 - weight[index]) * array[lower[index]] + weight[index] * array[upper[index]]

    logger.warning(
        "series %s: %d slices spaced non-uniformly, resampled to %d slices at %.3f mm",
        series_uid,
        len(along),
        count,
        typical,
    )
    return resampled, affine


def group_by_series(headers: Iterable[Dataset]) -> dict[str, list[Dataset]]:
    """Group headers by Series Instance UID, keeping their order."""
    groups: dict[str, list[Dataset]] = {}
    for header in headers:
        groups.setdefault(str(header.get("SeriesInstanceUID", "")), []).append(header)
    return groups
