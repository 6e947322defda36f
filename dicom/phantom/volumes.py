"""CT and PET voxel arrays of the phantom, built in memory without writing DICOM."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage

from dicom.phantom.anatomy import TISSUES, BodyShape, Canvas, Grid, ct_grid
from dicom.phantom.lesions import LesionSpec, SiteSampler, sample_lesions, sphere_mask
from dicom.phantom.regions import paint_anatomy

F18_HALF_LIFE_S = 6586.2
INJECTED_ACTIVITY_BQ_PER_KG = 3.7e6
PET_PIXEL_MM = 4.0
PET_SLICE_MM = 4.0
PET_MATRIX = 128
PET_NOISE_FRACTION = 0.12
PET_RESOLUTION_SIGMA_VOXELS = 0.8
SCAN_START = dt.datetime(2026, 3, 2, 9, 30, 0)

# Independent random streams derived from the seed.
STREAM_BODY, STREAM_LESIONS, STREAM_CT_NOISE, STREAM_PET_NOISE, STREAM_ACQUISITION = range(5)


def stream(seed: int, stream_id: int) -> np.random.Generator:
    """Return the random generator of one stream of a seed."""
    return np.random.default_rng([seed, stream_id])


@dataclass(frozen=True)
class PhantomAnatomy:
    """Label map of one seed: grid, body proportions, labels and site table."""

    seed: int
    body: BodyShape
    grid: Grid
    labels: np.ndarray
    site_ids: tuple[str | None, ...]
    tissues: tuple[str, ...]
    sampler: SiteSampler

    def site_at(self, point_mm: tuple[float, float, float]) -> str | None:
        """Return the site id at an LPS point (nearest CT voxel); ``None`` for unassigned tissue."""
        index = np.rint(np.linalg.solve(self.grid.affine, np.array([*point_mm, 1.0]))[:3]).astype(int)
        if np.any(index < 0) or np.any(index >= np.array(self.grid.shape)):
            return "outside_body_external"
        return self.site_ids[int(self.labels[tuple(index)])]


@dataclass(frozen=True)
class Acquisition:
    """PET acquisition facts needed for SUV: patient size, injected activity and timing."""

    weight_kg: float
    height_m: float
    injected_activity_bq: float
    injection_time: dt.datetime
    series_time: dt.datetime
    male: bool

    @property
    def decayed_activity_bq(self) -> float:
        """Injected activity decayed to the series start (decay correction START)."""
        elapsed = (self.series_time - self.injection_time).total_seconds()
        return self.injected_activity_bq * 2.0 ** (-elapsed / F18_HALF_LIFE_S)

    @property
    def suv_factor(self) -> float:
        """Body-weight SUV per Bq/ml: weight in g over decayed activity in Bq."""
        return self.weight_kg * 1000.0 / self.decayed_activity_bq


@dataclass(frozen=True)
class PhantomVolumes:
    """CT and PET arrays of one study and the truth behind them.

    ``ct_hu`` is on ``anatomy.grid``; ``pet_bqml`` and ``pet_suv`` are on ``pet_grid``.
    Arrays are ``(slices, rows, columns)`` with slice 0 the most superior; affines map
    ``(slice, row, column, 1)`` to LPS millimetres. ``pet_bqml`` contains exactly the values
    that the PET files encode, and ``suv_max`` of each lesion is the largest of them
    inside the lesion, converted to SUV.
    """

    anatomy: PhantomAnatomy
    acquisition: Acquisition
    ct_hu: np.ndarray
    pet_grid: Grid
    pet_bqml: np.ndarray
    pet_slopes: np.ndarray
    lesions: tuple[LesionSpec, ...]
    lesion_masks: tuple[tuple[tuple[slice, slice, slice], np.ndarray], ...]

    @property
    def ct_affine(self) -> np.ndarray:
        """Index-to-LPS matrix of the CT grid."""
        return self.anatomy.grid.affine

    @property
    def pet_affine(self) -> np.ndarray:
        """Index-to-LPS matrix of the PET grid."""
        return self.pet_grid.affine

    @property
    def pet_suv(self) -> np.ndarray:
        """PET in SUV (body weight)."""
        return (self.pet_bqml * self.acquisition.suv_factor).astype(np.float32)

    def as_volumes(self, uids: Any = None) -> tuple[Any, Any]:
        """Return ``(ct, pet)`` as ``dicom.volume.Volume`` objects, PET in SUV.

        ``uids`` is a :class:`dicom.phantom.writer.StudyUids` and defaults to the UIDs that
        :func:`dicom.phantom.generate_study` writes for this seed.
        """
        from dicom.phantom.writer import StudyUids
        from dicom.volume import Volume

        if uids is None:
            uids = StudyUids.for_seed(self.anatomy.seed)

        ct = Volume(self.ct_hu.astype(np.float32), self.ct_affine, uids.ct_series, uids.frame_of_reference, "CT")
        pet = Volume(self.pet_suv, self.pet_affine, uids.pet_series, uids.frame_of_reference, "PT")
        return ct, pet


def build_anatomy(seed: int) -> PhantomAnatomy:
    """Paint the label map of ``seed``."""
    body = BodyShape.sample(stream(seed, STREAM_BODY))
    canvas = Canvas(ct_grid(body), body)
    paint_anatomy(canvas)
    site_ids = tuple(canvas.table.site_ids)
    tissues = tuple(canvas.table.tissues)
    sampler = SiteSampler(canvas.labels, list(site_ids), list(tissues), canvas.grid)
    return PhantomAnatomy(seed, body, canvas.grid, canvas.labels, site_ids, tissues, sampler)


@lru_cache(maxsize=1)
def default_anatomy() -> PhantomAnatomy:
    """Return the anatomy of seed 0, built once per process."""
    return build_anatomy(0)


def pet_grid_for(ct: Grid) -> Grid:
    """Return a coarser PET grid over the CT extent, offset so that no voxel centres coincide."""
    length = ct.spacing[0] * (ct.shape[0] - 1)
    first_offset = 1.5
    slices = int((length - first_offset) // PET_SLICE_MM) + 1
    half = (PET_MATRIX - 1) * PET_PIXEL_MM / 2.0
    origin = (-half + 1.0, -half + 1.0, ct.origin[2] - first_offset)
    return Grid((slices, PET_MATRIX, PET_MATRIX), (PET_SLICE_MM, PET_PIXEL_MM, PET_PIXEL_MM), origin)


def acquisition_for(seed: int, body: BodyShape) -> Acquisition:
    """Draw the patient's weight and height and the injected activity and uptake time."""
    rng = stream(seed, STREAM_ACQUISITION)
    height_m = round(1.75 * body.height, 2)
    weight_kg = round(float(72.0 * body.width * body.depth * body.height * rng.uniform(0.9, 1.1)), 1)
    uptake = dt.timedelta(seconds=int(rng.integers(55 * 60, 75 * 60)))
    activity = round(INJECTED_ACTIVITY_BQ_PER_KG * weight_kg, -5)
    return Acquisition(weight_kg, height_m, activity, SCAN_START - uptake, SCAN_START, body.male)


def build_phantom_volumes(seed: int, lesions: int | list[LesionSpec] = 0) -> PhantomVolumes:
    """Build the CT (HU) and PET (Bq/ml, and SUV) arrays of ``seed`` in memory.

    ``lesions`` is a number of lesions to draw (each in a different site) or a list of
    lesions, for example from :func:`dicom.phantom.sample_lesion`.
    """
    anatomy = build_anatomy(seed) if seed != 0 else default_anatomy()
    if isinstance(lesions, int):
        specs = tuple(sample_lesions(lesions, stream(seed, STREAM_LESIONS), anatomy.sampler))
    else:
        specs = tuple(lesions)
    acquisition = acquisition_for(seed, anatomy.body)

    ct_hu = _ct_array(anatomy, specs, stream(seed, STREAM_CT_NOISE))
    pet_grid = pet_grid_for(anatomy.grid)
    pet_suv = _pet_suv_array(anatomy, pet_grid, specs, stream(seed, STREAM_PET_NOISE))
    pet_bqml, slopes = _quantise_pet(pet_suv / acquisition.suv_factor)

    masks = tuple(sphere_mask(anatomy.grid, lesion.centre_mm, lesion.diameter_mm) for lesion in specs)
    final = []
    for lesion in specs:
        block, mask = sphere_mask(pet_grid, lesion.centre_mm, lesion.diameter_mm)
        suv_max = float(pet_bqml[block][mask].max()) * acquisition.suv_factor
        final.append(LesionSpec(lesion.site_id, lesion.centre_mm, lesion.diameter_mm, suv_max, lesion.hu))
    return PhantomVolumes(anatomy, acquisition, ct_hu, pet_grid, pet_bqml, slopes, tuple(final), masks)


def _ct_array(anatomy: PhantomAnatomy, lesions: tuple[LesionSpec, ...], rng: np.random.Generator) -> np.ndarray:
    """Return CT numbers (int16 HU) with Gaussian noise and the lesions painted in."""
    hu_lut = np.array([TISSUES[t][0] for t in anatomy.tissues], dtype=np.float32)
    sd_lut = np.array([TISSUES[t][1] for t in anatomy.tissues], dtype=np.float32)
    noise = rng.standard_normal(anatomy.labels.shape, dtype=np.float32)
    hu = hu_lut[anatomy.labels] + sd_lut[anatomy.labels] * noise
    for lesion in lesions:
        block, mask = sphere_mask(anatomy.grid, lesion.centre_mm, lesion.diameter_mm)
        hu[block][mask] = lesion.hu + 12.0 * noise[block][mask]
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def _pet_suv_array(
    anatomy: PhantomAnatomy, pet_grid: Grid, lesions: tuple[LesionSpec, ...], rng: np.random.Generator
) -> np.ndarray:
    """Return PET in SUV: tissue uptake sampled from the labels, blurred and noisy, plus flat lesions."""
    z, y, x = pet_grid.axes()
    ct = anatomy.grid
    k = np.clip(np.rint((ct.origin[2] - z) / ct.spacing[0]).astype(int), 0, ct.shape[0] - 1)
    j = np.clip(np.rint((y - ct.origin[1]) / ct.spacing[1]).astype(int), 0, ct.shape[1] - 1)
    i = np.clip(np.rint((x - ct.origin[0]) / ct.spacing[2]).astype(int), 0, ct.shape[2] - 1)
    labels = anatomy.labels[np.ix_(k, j, i)]

    suv_lut = np.array([TISSUES[t][2] for t in anatomy.tissues], dtype=np.float32)
    suv = ndimage.gaussian_filter(suv_lut[labels], PET_RESOLUTION_SIGMA_VOXELS)
    suv *= 1.0 + PET_NOISE_FRACTION * rng.standard_normal(suv.shape, dtype=np.float32)
    np.clip(suv, 0.0, None, out=suv)
    for lesion in lesions:
        block, mask = sphere_mask(pet_grid, lesion.centre_mm, lesion.diameter_mm)
        suv[block][mask] = lesion.suv_max
    return suv


def _quantise_pet(bqml: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantise each slice to unsigned 16 bits; return the decoded values and the slopes."""
    maxima = bqml.reshape(bqml.shape[0], -1).max(axis=1)
    slopes = np.where(maxima > 0, maxima / 65535.0, 1.0)
    # Round the slope to what a DS value (16 characters) can carry, so decoding the file
    # gives exactly the values returned here.
    slopes = np.array([float(f"{s:.10g}") for s in slopes])
    stored = np.clip(np.rint(bqml / slopes[:, None, None]), 0, 65535)
    decoded = (stored * slopes[:, None, None]).astype(np.float64)
    return decoded, slopes


def stored_pet(volumes: PhantomVolumes) -> np.ndarray:
    """Return the uint16 stored PET values of ``volumes``."""
    return np.rint(volumes.pet_bqml / volumes.pet_slopes[:, None, None]).astype(np.uint16)

