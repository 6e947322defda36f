"""Analytic whole-body anatomy painted into a label map on the CT grid.

Every structure is an ellipsoid, a cylinder, a capsule or a box in a *reference body*
(1750 mm tall, measured in millimetres from the vertex downward). Each seed scales the
body in width, depth and height and shifts some organs by a few millimetres.

Each label of the map is a fine site of the project vocabulary, except ``BODY_FAT``:
subcutaneous and visceral fat that belongs to no site. Label ``OUTSIDE`` is the air around
the patient, site ``outside_body_external``. Later structures overwrite earlier ones, so
the painting order decides which structure wins where shapes overlap.

Reference coordinates: ``x`` to the patient's left, ``y`` to the posterior (both as in
DICOM LPS), ``d`` downward from the vertex. The map itself is on the LPS CT grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# Tissue name -> (CT number in HU, standard deviation of CT noise in HU, SUV body weight).
TISSUES: dict[str, tuple[float, float, float]] = {
    "air": (-1000.0, 5.0, 0.0),
    "fat": (-95.0, 12.0, 0.35),
    "muscle": (50.0, 12.0, 0.75),
    "soft": (40.0, 12.0, 1.0),
    "gland": (45.0, 12.0, 1.8),
    "thyroid": (90.0, 12.0, 1.5),
    "brain": (35.0, 8.0, 7.0),
    "grey": (40.0, 8.0, 9.0),
    "eye": (10.0, 8.0, 0.6),
    "lung": (-850.0, 30.0, 0.45),
    "airway": (-950.0, 10.0, 0.1),
    "sinus": (-900.0, 15.0, 0.1),
    "blood": (40.0, 12.0, 1.8),
    "myocardium": (45.0, 12.0, 3.5),
    "liver": (60.0, 10.0, 2.3),
    "spleen": (50.0, 10.0, 2.0),
    "kidney": (35.0, 10.0, 3.0),
    "urine": (8.0, 8.0, 18.0),
    "bile": (10.0, 8.0, 0.8),
    "bowel": (20.0, 25.0, 1.6),
    "colon": (-40.0, 60.0, 1.4),
    "stomach": (25.0, 15.0, 1.7),
    "pancreas": (45.0, 10.0, 1.5),
    "adrenal": (35.0, 10.0, 1.6),
    "node": (35.0, 10.0, 1.1),
    "tonsil": (45.0, 10.0, 3.5),
    "prostate": (40.0, 10.0, 1.6),
    "uterus": (50.0, 10.0, 2.5),
    "breast": (-30.0, 30.0, 0.8),
    "cord": (35.0, 8.0, 1.6),
    "bone": (450.0, 60.0, 0.9),
    "marrow": (250.0, 50.0, 1.3),
}

OUTSIDE_SITE = "outside_body_external"
OUTSIDE = 0
BODY_FAT = 1

SIDES = {"right": -1.0, "left": 1.0}  # sign of x for each side in LPS.


@dataclass(frozen=True)
class BodyShape:
    """Per-seed body proportions and organ shifts.

    ``width``, ``depth`` and ``height`` scale the reference body along x, y and d; the
    shifts move selected organs in millimetres of the reference body.
    """

    width: float = 1.0
    depth: float = 1.0
    height: float = 1.0
    male: bool = True
    shifts: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    @classmethod
    def sample(cls, rng: np.random.Generator) -> BodyShape:
        """Draw proportions, sex and organ shifts."""
        width = float(rng.uniform(0.92, 1.02))
        depth = float(rng.uniform(0.9, 1.08))
        height = float(rng.uniform(0.93, 1.05))
        male = bool(rng.integers(0, 2))
        shifts = {
            organ: tuple(float(v) for v in rng.uniform(-6.0, 6.0, size=3))
            for organ in ("liver", "spleen", "kidneys", "bladder", "heart", "stomach", "pancreas")
        }
        return cls(width, depth, height, male, shifts)

    def shift(self, organ: str, point: tuple[float, float, float]) -> tuple[float, float, float]:
        """Return ``point`` moved by the shift of ``organ``."""
        dx, dy, dd = self.shifts.get(organ, (0.0, 0.0, 0.0))
        return (point[0] + dx, point[1] + dy, point[2] + dd)


@dataclass(frozen=True)
class Grid:
    """A regular axis-aligned LPS grid; slice 0 is the most superior slice."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def affine(self) -> np.ndarray:
        """4x4 index-to-LPS matrix for ``(slice, row, column)`` indices."""
        affine = np.eye(4)
        affine[:3, 0] = (0.0, 0.0, -self.spacing[0])
        affine[:3, 1] = (0.0, self.spacing[1], 0.0)
        affine[:3, 2] = (self.spacing[2], 0.0, 0.0)
        affine[:3, 3] = self.origin
        return affine

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return the LPS coordinates of slice centres (z), row centres (y) and column centres (x)."""
        z = self.origin[2] - self.spacing[0] * np.arange(self.shape[0])
        y = self.origin[1] + self.spacing[1] * np.arange(self.shape[1])
        x = self.origin[0] + self.spacing[2] * np.arange(self.shape[2])
        return z, y, x


REFERENCE_LENGTH_MM = 1060.0  # vertex to mid-thigh in the reference body
TOP_MARGIN_MM = 12.0
IN_PLANE_FOV_MM = 512.0


def ct_grid(body: BodyShape, slice_thickness: float = 3.0, matrix: int = 256) -> Grid:
    """Return the CT grid covering ``body`` from above the vertex to mid-thigh."""
    pixel = IN_PLANE_FOV_MM / matrix
    length = REFERENCE_LENGTH_MM * body.height + TOP_MARGIN_MM
    slices = int(np.ceil(length / slice_thickness))
    half = (matrix - 1) * pixel / 2.0
    return Grid((slices, matrix, matrix), (slice_thickness, pixel, pixel), (-half, -half, TOP_MARGIN_MM))


# ----------------------------------------------------------------------------- shapes
Mask = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
Box = tuple[float, float, float, float, float, float]  # x0, x1, y0, y1, d0, d1


def ellipsoid(c: tuple[float, float, float], r: tuple[float, float, float]) -> tuple[Mask, Box]:
    """Solid ellipsoid with centre ``c`` and semi-axes ``r`` (reference mm)."""

    def mask(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((d - c[2]) / r[2]) ** 2 <= 1.0

    return mask, (c[0] - r[0], c[0] + r[0], c[1] - r[1], c[1] + r[1], c[2] - r[2], c[2] + r[2])


def cylinder(cx: float, cy: float, rx: float, ry: float, d0: float, d1: float) -> tuple[Mask, Box]:
    """Elliptic cylinder along the body axis from depth ``d0`` to ``d1``."""

    def mask(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        return (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0) & (d >= d0) & (d <= d1)

    return mask, (cx - rx, cx + rx, cy - ry, cy + ry, d0, d1)


def capsule(p0: tuple[float, float, float], p1: tuple[float, float, float], radius: float) -> tuple[Mask, Box]:
    """Points within ``radius`` of the segment from ``p0`` to ``p1``."""
    a = np.asarray(p0, dtype=float)
    b = np.asarray(p1, dtype=float)
    axis = b - a
    length2 = float(axis @ axis)

    def mask(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        t = ((x - a[0]) * axis[0] + (y - a[1]) * axis[1] + (d - a[2]) * axis[2]) / length2
        t = np.clip(t, 0.0, 1.0)
        return (x - a[0] - t * axis[0]) ** 2 + (y - a[1] - t * axis[1]) ** 2 + (d - a[2] - t * axis[2]) ** 2 <= radius**2

    low = np.minimum(a, b) - radius
    high = np.maximum(a, b) + radius
    return mask, (low[0], high[0], low[1], high[1], low[2], high[2])


def box(x0: float, x1: float, y0: float, y1: float, d0: float, d1: float) -> tuple[Mask, Box]:
    """Axis-aligned box."""

    def mask(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1) & (d >= d0) & (d <= d1)

    return mask, (x0, x1, y0, y1, d0, d1)


# Trunk outline: semi-axes along x and y as functions of depth (reference mm).
TRUNK_DEPTHS = [275.0, 300.0, 350.0, 500.0, 600.0, 700.0, 800.0, 910.0]
TRUNK_HALF_WIDTH = [110.0, 160.0, 158.0, 150.0, 145.0, 150.0, 165.0, 165.0]
TRUNK_HALF_DEPTH = [75.0, 100.0, 105.0, 110.0, 110.0, 108.0, 108.0, 100.0]


def trunk_axes(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the trunk's semi-axes (x, y) at depth ``d``."""
    return np.interp(d, TRUNK_DEPTHS, TRUNK_HALF_WIDTH), np.interp(d, TRUNK_DEPTHS, TRUNK_HALF_DEPTH)


# ----------------------------------------------------------------------------- labels
@dataclass
class LabelTable:
    """Label values of the map: site id (or ``None``) and tissue of each label."""

    site_ids: list[str | None] = field(default_factory=lambda: [OUTSIDE_SITE, None])
    tissues: list[str] = field(default_factory=lambda: ["air", "fat"])

    def label(self, site_id: str, tissue: str) -> int:
        """Return the label of ``site_id``, adding it with ``tissue`` on first use."""
        if site_id in self.site_ids:
            return self.site_ids.index(site_id)
        if tissue not in TISSUES:
            raise ValueError(f"unknown tissue {tissue!r}")
        self.site_ids.append(site_id)
        self.tissues.append(tissue)
        return len(self.site_ids) - 1


class Canvas:
    """Label map on a grid, painted in reference-body coordinates."""

    def __init__(self, grid: Grid, body: BodyShape) -> None:
        self.grid = grid
        self.body = body
        self.table = LabelTable()
        self.labels = np.zeros(grid.shape, dtype=np.uint16)
        z, y, x = grid.axes()
        # Reference coordinates of every slice, row and column.
        self.d = (TOP_MARGIN_MM - z) / body.height  # monotonically increasing with the slice index
        self.y = y / body.depth
        self.x = x / body.width

    def _block(self, region: Box) -> tuple[slice, slice, slice] | None:
        x0, x1, y0, y1, d0, d1 = region
        ks = slice(int(np.searchsorted(self.d, d0)), int(np.searchsorted(self.d, d1, side="right")))
        js = slice(int(np.searchsorted(self.y, y0)), int(np.searchsorted(self.y, y1, side="right")))
        is_ = slice(int(np.searchsorted(self.x, x0)), int(np.searchsorted(self.x, x1, side="right")))
        if ks.start >= ks.stop or js.start >= js.stop or is_.start >= is_.stop:
            return None
        return ks, js, is_

    def paint(
        self,
        shape: tuple[Mask, Box],
        label: int | Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
        within: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        """Set ``label`` where ``shape`` holds; ``within`` limits painting by the current labels."""
        mask_of, region = shape
        block = self._block(region)
        if block is None:
            return
        ks, js, is_ = block
        d = self.d[ks][:, None, None]
        y = self.y[js][None, :, None]
        x = self.x[is_][None, None, :]
        mask = np.broadcast_to(mask_of(x, y, d), (d.shape[0], y.shape[1], x.shape[2]))
        target = self.labels[ks, js, is_]
        if within is not None:
            mask = mask & within(target)
        if callable(label):
            values = np.broadcast_to(label(x, y, d), mask.shape)
            target[mask] = values[mask]
        else:
            target[mask] = label

    def site(self, site_id: str, tissue: str) -> int:
        """Return the label of ``site_id`` (see :meth:`LabelTable.label`)."""
        return self.table.label(site_id, tissue)

    def choose(self, x: np.ndarray, conditions: list[tuple[np.ndarray, str, str]], default: tuple[str, str]) -> np.ndarray:
        """Return per-voxel labels: the first true condition's site, else ``default``."""
        result = np.full(np.broadcast_shapes(x.shape, *(c.shape for c, _, _ in conditions)), self.site(*default), dtype=np.uint16)
        for condition, site_id, tissue in reversed(conditions):
            result = np.where(condition, self.site(site_id, tissue), result)
        return result


def side_sign(x: np.ndarray) -> np.ndarray:
    """Return +1 on the patient's left (x > 0) and -1 on the right."""
    return np.where(x >= 0, 1.0, -1.0)


def sided_label(canvas: Canvas, site: str, tissue: str) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """Return a label function choosing ``{site}_left`` or ``{site}_right`` by the sign of x."""
    left = canvas.site(f"{site}_left", tissue)
    right = canvas.site(f"{site}_right", tissue)

    def label(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        return np.where(x >= 0, left, right).astype(np.uint16)

    return label
