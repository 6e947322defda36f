"""Lesion placement: a sphere centred on a voxel of a chosen vocabulary site."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dicom.phantom.anatomy import BODY_FAT, OUTSIDE, TISSUES, Grid

# Sites with fewer voxels than this on the CT grid never receive a lesion.
MIN_SITE_VOXELS = 20
# Gap kept between the surfaces of two lesions of one study, in mm.
LESION_GAP_MM = 6.0
# Share of a lesion's CT voxels that must lie in its site, so that the site under the
# centre also contains most of the lesion.
MIN_SITE_FRACTION = 0.5
# Smallest lesion diameter in mm, and the factor by which a lesion shrinks when too
# little of it lies in its site.
MIN_DIAMETER_MM = 8.0
SHRINK_FACTOR = 0.8
# Centres drawn for one lesion before the site counts as unable to hold one.
CENTRE_ATTEMPTS = 20


class LesionPlacementError(ValueError):
    """Error raised when a site of the phantom cannot hold a lesion. The message gives the reason."""


@dataclass(frozen=True)
class LesionSpec:
    """One spherical lesion: where it is, how large and how it looks on CT and PET."""

    site_id: str
    centre_mm: tuple[float, float, float]
    diameter_mm: float
    suv_max: float
    hu: float


class SiteSampler:
    """Voxel lists of every site of a label map, for drawing lesion centres quickly."""

    def __init__(self, labels: np.ndarray, site_ids: list[str | None], tissues: list[str], grid: Grid) -> None:
        self.grid = grid
        self.site_ids = site_ids
        self.tissues = tissues
        self._label_map = labels
        self._labels = labels.ravel()
        self._counts = np.bincount(self._labels, minlength=len(site_ids))
        self._voxels: dict[int, np.ndarray] = {}
        self._label_of = {site_id: label for label, site_id in enumerate(site_ids) if site_id is not None}
        self.voxel_volume_mm3 = float(np.prod(grid.spacing))

    def voxel_count(self, site_id: str) -> int:
        """Return the number of CT voxels labelled ``site_id`` (0 for sites not painted)."""
        label = self._label_of.get(site_id)
        if label is None:
            return 0
        return int(self._counts[label])

    def eligible_sites(self) -> list[str]:
        """Return the sites that can hold a lesion, in label order."""
        return [
            site_id
            for label, site_id in enumerate(self.site_ids)
            if label not in (OUTSIDE, BODY_FAT) and site_id is not None and self.voxel_count(site_id) >= MIN_SITE_VOXELS
        ]

    def tissue_of(self, site_id: str) -> str:
        """Return the tissue painted for ``site_id``."""
        return self.tissues[self._label_of[site_id]]

    def fraction_in_site(self, site_id: str, centre: tuple[float, float, float], diameter: float) -> float:
        """Return the share of a sphere's CT voxels (as :func:`sphere_mask` draws it) in ``site_id``."""
        block, mask = sphere_mask(self.grid, centre, diameter)
        return float(np.mean(self._label_map[block][mask] == self._label_of[site_id]))

    def sample_centre(self, site_id: str, rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
        """Return a random voxel index of ``site_id`` and its LPS centre in mm."""
        count = self.voxel_count(site_id)
        if count < MIN_SITE_VOXELS:
            raise LesionPlacementError(f"site {site_id!r} has {count} voxels in the phantom; it cannot hold a lesion")
        label = self._label_of[site_id]
        if label not in self._voxels:
            self._voxels[label] = np.flatnonzero(self._labels == label)
        flat_index = int(self._voxels[label][int(rng.integers(0, count))])
        index = np.unravel_index(flat_index, self.grid.shape)
        centre = self.grid.affine @ np.array([index[0], index[1], index[2], 1.0])
        return (int(index[0]), int(index[1]), int(index[2])), (float(centre[0]), float(centre[1]), float(centre[2]))


def lesion_appearance(tissue: str, rng: np.random.Generator) -> tuple[float, float]:
    """Return a lesion's CT number (HU) and SUVmax for a lesion arising in ``tissue``."""
    background_hu, _noise, background_suv = TISSUES[tissue]
    if tissue in ("bone", "marrow"):
        hu = float(rng.choice([80.0, 900.0]))  # lytic or sclerotic
    elif tissue in ("lung", "airway", "sinus", "air", "fat", "breast", "colon"):
        hu = 35.0
    elif tissue == "liver":
        hu = 35.0
    else:
        hu = background_hu + 15.0
    low = max(2.5, 1.8 * background_suv)
    suv = float(rng.uniform(low, max(14.0, 3.0 * background_suv)))
    return hu, round(suv, 2)


def sample_lesion(site_id: str, rng: np.random.Generator, sampler: SiteSampler | None = None) -> LesionSpec:
    """Draw one lesion centred inside ``site_id`` and lying mostly in it.

    The centre is a CT voxel centre labelled ``site_id``, so the site of the label map at the
    centre is always ``site_id``. The diameter (8 to 30 mm) is drawn, capped for small sites,
    then shrunk until at least half of the lesion's voxels lie in the site. When even an 8 mm
    lesion at that centre lies mostly outside the site, another centre is drawn. So the site
    under the centre is also the site that contains most of the lesion, as when a radiologist
    assigns a lesion to a site.
    ``sampler`` defaults to the anatomy of seed 0 (see :func:`dicom.phantom.default_anatomy`).
    """
    if sampler is None:
        from dicom.phantom.volumes import default_anatomy

        sampler = default_anatomy().sampler
    volume = sampler.voxel_count(site_id) * sampler.voxel_volume_mm3
    equivalent_diameter = 2.0 * (3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0)
    for _attempt in range(CENTRE_ATTEMPTS):
        _index, centre = sampler.sample_centre(site_id, rng)
        drawn = min(float(rng.uniform(10.0, 30.0)), equivalent_diameter + 4.0)
        diameter = _diameter_in_site(sampler, site_id, centre, drawn)
        if diameter is not None:
            hu, suv = lesion_appearance(sampler.tissue_of(site_id), rng)
            return LesionSpec(site_id, centre, diameter, suv, hu)
    raise LesionPlacementError(
        f"site {site_id!r} has no point where a lesion of {MIN_DIAMETER_MM:g} mm lies mostly inside it, "
        "so it cannot hold a lesion; choose another site"
    )


def _diameter_in_site(
    sampler: SiteSampler, site_id: str, centre: tuple[float, float, float], diameter: float
) -> float | None:
    """Shrink ``diameter`` in steps until half of the lesion lies in the site, or return ``None``."""
    diameter = round(max(MIN_DIAMETER_MM, diameter), 1)
    while sampler.fraction_in_site(site_id, centre, diameter) < MIN_SITE_FRACTION:
        if diameter <= MIN_DIAMETER_MM:
            return None
        diameter = round(max(MIN_DIAMETER_MM, diameter * SHRINK_FACTOR), 1)
    return diameter


def sample_lesions(count: int, rng: np.random.Generator, sampler: SiteSampler) -> list[LesionSpec]:
    """Draw ``count`` non-overlapping lesions, each in a different site.

    Sites are taken in random order, and a site where no lesion fits is skipped.
    """
    sites = sampler.eligible_sites()
    if count > len(sites):
        raise ValueError(f"{count} lesions requested, but the phantom has {len(sites)} sites that can hold one")
    lesions: list[LesionSpec] = []
    for site_id in rng.permutation(sites):
        if len(lesions) == count:
            break
        for _attempt in range(20):
            try:
                lesion = sample_lesion(str(site_id), rng, sampler)
            except LesionPlacementError:
                break
            if all(_apart(lesion, other) for other in lesions):
                lesions.append(lesion)
                break
    if len(lesions) < count:
        raise ValueError(f"could place only {len(lesions)} of {count} non-overlapping lesions")
    return lesions


def _apart(first: LesionSpec, second: LesionSpec) -> bool:
    distance = math.dist(first.centre_mm, second.centre_mm)
    return distance >= (first.diameter_mm + second.diameter_mm) / 2.0 + LESION_GAP_MM


def sphere_mask(grid: Grid, centre: tuple[float, float, float], diameter: float) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """Return the block of ``grid`` around a sphere and the mask of voxel centres inside it.

    The voxel nearest the centre is always inside, so small lesions keep at least one voxel.
    """
    z_axis, y_axis, x_axis = grid.axes()
    radius = diameter / 2.0
    x, y, z = centre

    def span(axis: np.ndarray, low: float, high: float) -> slice:
        inside = np.nonzero((axis >= low) & (axis <= high))[0]
        nearest = int(np.argmin(np.abs(axis - (low + high) / 2.0)))
        start = min(inside[0], nearest) if inside.size else nearest
        stop = max(inside[-1], nearest) + 1 if inside.size else nearest + 1
        return slice(int(start), int(stop))

    ks = span(z_axis, z - radius, z + radius)
    js = span(y_axis, y - radius, y + radius)
    is_ = span(x_axis, x - radius, x + radius)
    dz = (z_axis[ks] - z)[:, None, None]
    dy = (y_axis[js] - y)[None, :, None]
    dx = (x_axis[is_] - x)[None, None, :]
    mask = dx**2 + dy**2 + dz**2 <= radius**2
    nearest = np.unravel_index(int(np.argmin(dx**2 + dy**2 + dz**2)), mask.shape)
    mask[nearest] = True
    return (ks, js, is_), mask
