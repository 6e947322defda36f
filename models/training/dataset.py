"""Training lesions and their augmented crops.

Lesions come from a training list CSV in the reference's form or from phantom studies
(:mod:`models.training.phantom`). A CSV has one lesion per row:

``image_path``, ``image_path1``, ``image_path2``
    CT (HU), PET (SUV) and lesion mask images, each a NIfTI/MetaImage file or a folder
    of one DICOM series, read by SimpleITK. The mask may hold several lesions; the
    26-connected component that overlaps the row's box most becomes the mask channel.
``x``, ``y``, ``z``, ``width``, ``height``, ``depth``
    Box centre in world (LPS) mm, as SimpleITK reports physical points, and box size in mm.
``coarse_gt``, ``fine_gt``
    Site ids (or names) of the lesion; fine training needs both.
``coarse_labels``
    Fine training only: comma-separated coarse sites that the coarse model ranked first
    for this lesion, best first.
"""

from __future__ import annotations

import csv
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from models.crop import CropSpec, grid_offsets, mask_channel, volume_channel
from models.training.augment import NO_AUGMENTATION, CropAugmentation
from models.training.samplers import SampleLabels

LOGGER = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image_path", "image_path1", "image_path2")
BOX_COLUMNS = ("x", "y", "z", "width", "height", "depth")
# Voxels around the box searched for the lesion's mask component, per side.
COMPONENT_MARGIN_VOXELS = 4
# 26-connectivity in 3-D: every voxel sharing a face, edge or corner.
CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


class TrainingDataError(ValueError):
    """A training list or its images cannot be used; the message names the row and the fix."""


@dataclass(frozen=True)
class ImageGrid:
    """A 3-D image: ``array`` indexed ``(slice, row, column)`` and the 4x4 index-to-LPS ``affine``."""

    array: np.ndarray
    affine: np.ndarray
    series_instance_uid: str = ""


@dataclass(frozen=True)
class LesionMask:
    """A lesion's own binary mask, cropped: ``mask`` starts at index ``mask_origin`` of its grid."""

    mask: np.ndarray
    mask_origin: tuple[int, int, int]


@dataclass
class TrainingCase:
    """The images of one study: CT in HU, PET in SUV (or None) and the grid of the lesion masks."""

    key: str
    ct: ImageGrid
    pet: ImageGrid | None
    mask_grid: ImageGrid


@dataclass(frozen=True)
class TrainingLesion:
    """One training sample: its study, box, labels and (once known) its own mask."""

    case_key: str
    centre_mm: tuple[float, float, float]
    size_mm: tuple[float, float, float]
    labels: SampleLabels
    mask: LesionMask | None = None


def affine_of(image) -> np.ndarray:
    """Return the ``(slice, row, column)``-to-LPS affine of a SimpleITK image."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    affine = np.eye(4)
    # SimpleITK's array is (k, j, i); the affine columns go in that order.
    affine[:3, 0] = direction[:, 2] * spacing[2]
    affine[:3, 1] = direction[:, 1] * spacing[1]
    affine[:3, 2] = direction[:, 0] * spacing[0]
    affine[:3, 3] = image.GetOrigin()
    return affine


def read_image(path: Path) -> ImageGrid:
    """Read a NIfTI/MetaImage file or a folder of one DICOM series with SimpleITK.

    Raises
    ------
    TrainingDataError
        If the path does not exist, the folder has no DICOM series, or the image is not 3-D.
    """
    import SimpleITK as sitk

    path = Path(path)
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise TrainingDataError(f"{path} holds no DICOM series")
        if len(series) > 1:
            LOGGER.warning("%s holds %d DICOM series; reading %s", path, len(series), series[0])
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
        image = reader.Execute()
    elif path.is_file():
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    else:
        raise TrainingDataError(f"image {path} not found")
    if image.GetDimension() != 3:
        raise TrainingDataError(f"{path} has {image.GetDimension()} dimensions, expected 3")
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    return ImageGrid(array, affine_of(image), str(path))


def mask_box(affine: np.ndarray, origin: Sequence[int], mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the LPS centre and edge-to-edge size (mm) of a cropped mask's voxels."""
    indices = np.argwhere(mask) + np.asarray(origin)
    low, high = indices.min(axis=0), indices.max(axis=0)
    corners = np.array([[a, b, c, 1.0] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])])
    points = (affine @ corners.T).T[:, :3]
    half_voxel = np.abs(affine[:3, :3]).sum(axis=1) / 2
    lps_low, lps_high = points.min(axis=0), points.max(axis=0)
    return (lps_low + lps_high) / 2, lps_high - lps_low + 2 * half_voxel


def component_mask(grid: ImageGrid, centre_mm: Sequence[float], size_mm: Sequence[float]) -> LesionMask | None:
    """Return the 26-connected component of ``grid``'s mask that has most voxels in the box.

    Only a region of the box plus a few voxels is labelled, so one lesion costs little
    even in a whole-body mask. Returns None when no mask voxel lies in the box.
    """
    inverse = np.linalg.inv(grid.affine)
    centre = np.asarray(centre_mm, dtype=np.float64)
    half = np.asarray(size_mm, dtype=np.float64) / 2
    corners = np.array([[cx, cy, cz, 1.0] for cx in (-1, 1) for cy in (-1, 1) for cz in (-1, 1)])
    corners[:, :3] = centre + corners[:, :3] * half
    indices = (inverse @ corners.T).T[:, :3]
    shape = np.array(grid.array.shape)
    low = np.clip(np.floor(indices.min(axis=0)).astype(int) - COMPONENT_MARGIN_VOXELS, 0, shape)
    high = np.clip(np.ceil(indices.max(axis=0)).astype(int) + COMPONENT_MARGIN_VOXELS + 1, 0, shape)
    region = tuple(slice(a, b) for a, b in zip(low, high, strict=True))

    labels, count = ndimage.label(grid.array[region] > 0, structure=CONNECTIVITY_26)
    if count == 0:
        return None
    box_low = np.clip(np.round(indices.min(axis=0)).astype(int) - low, 0, None)
    box_high = np.round(indices.max(axis=0)).astype(int) - low + 1
    inside = labels[tuple(slice(a, b) for a, b in zip(box_low, box_high, strict=True))]
    votes = np.bincount(inside.ravel(), minlength=count + 1)[1:]
    if votes.max() == 0:
        return None
    component = labels == int(votes.argmax()) + 1
    return LesionMask(component, tuple(int(v) for v in low))


class CaseCache:
    """Keep the most recently used studies in memory; CSV studies are read on first use."""

    def __init__(self, cases: dict[str, TrainingCase] | None = None, capacity: int = 16) -> None:
        self.fixed = dict(cases or {})
        self.capacity = capacity
        self.loaded: OrderedDict[str, TrainingCase] = OrderedDict()

    def get(self, key: str) -> TrainingCase:
        """Return the case ``key``: phantom cases from memory, CSV cases read from their paths."""
        if key in self.fixed:
            return self.fixed[key]
        if key in self.loaded:
            self.loaded.move_to_end(key)
            return self.loaded[key]
        ct_path, pet_path, mask_path = key.split("\n")
        case = TrainingCase(key, read_image(Path(ct_path)), read_image(Path(pet_path)), read_image(Path(mask_path)))
        self.loaded[key] = case
        while len(self.loaded) > self.capacity:
            self.loaded.popitem(last=False)
        return case


class LesionCropDataset(Dataset):
    """Augmented crops of training lesions on one model's grid.

    Parameters
    ----------
    lesions : sequence of TrainingLesion
        The samples; ``labels`` lists their :class:`SampleLabels` in the same order.
    cases : CaseCache
        Source of each lesion's study images.
    spec : CropSpec
        Crop size, spacing, channels and normalisers of the model being trained.
    augmentation : CropAugmentation
        Random jitter, rotation and scaling; :data:`NO_AUGMENTATION` for evaluation.
    seed : int
        Seed of the augmentation stream (each data-loader worker adds its id).
    """

    def __init__(
        self,
        lesions: Sequence[TrainingLesion],
        cases: CaseCache,
        spec: CropSpec,
        augmentation: CropAugmentation = NO_AUGMENTATION,
        seed: int = 0,
    ) -> None:
        self.lesions = list(lesions)
        self.cases = cases
        self.spec = spec
        self.augmentation = augmentation
        self.seed = seed
        self.offsets = grid_offsets(spec, torch.device("cpu"))
        self.masks: dict[int, LesionMask] = {}
        self._rng: np.random.Generator | None = None

    @property
    def labels(self) -> list[SampleLabels]:
        """Labels of the lesions, indexed like the dataset."""
        return [lesion.labels for lesion in self.lesions]

    def __len__(self) -> int:
        return len(self.lesions)

    @property
    def rng(self) -> np.random.Generator:
        """Augmentation generator of this process (data-loader workers each get their own)."""
        if self._rng is None:
            info = torch.utils.data.get_worker_info()
            self._rng = np.random.default_rng([self.seed, info.id + 1 if info else 0])
        return self._rng

    def lesion_mask(self, index: int, case: TrainingCase) -> LesionMask:
        """Return lesion ``index``'s own mask, finding its component in the mask image once."""
        lesion = self.lesions[index]
        if lesion.mask is not None:
            return lesion.mask
        if index not in self.masks:
            found = component_mask(case.mask_grid, lesion.centre_mm, lesion.size_mm)
            if found is None:
                raise TrainingDataError(
                    f"lesion {index} (box centre {lesion.centre_mm} mm) has no mask voxel inside its box in "
                    f"{case.mask_grid.series_instance_uid}; fix the box or the mask"
                )
            self.masks[index] = found
        return self.masks[index]

    def __getitem__(self, index: int) -> torch.Tensor:
        """Return lesion ``index``'s ``(channels * scales, z, y, x)`` crop with a fresh augmentation."""
        lesion = self.lesions[index]
        case = self.cases.get(lesion.case_key)
        offset, axes = self.augmentation.draw(self.rng)
        centre = torch.tensor(np.asarray(lesion.centre_mm) + offset, dtype=torch.float32)
        rotation = torch.as_tensor(axes, dtype=torch.float32).T
        mask = self.lesion_mask(index, case)
        # Every scale gets the same jitter, rotation and scaling about the same centre.
        return torch.cat(
            [crop_points(case, mask, self.spec, (self.offsets * scale) @ rotation + centre) for scale in self.spec.scales]
        )


class PrecomputedCropDataset(Dataset):
    """Crops computed before training: each item is one of its lesion's copies, drawn at random.

    Parameters
    ----------
    crops : torch.Tensor
        ``(lesions, copies, channels, z, y, x)`` crops of any float dtype. Items are float32.
    labels : sequence of SampleLabels
        Labels of the lesions, in the order of ``crops``.
    seed : int
        Seed of the copy choice (each data-loader worker adds its id).
    """

    def __init__(self, crops: torch.Tensor, labels: Sequence[SampleLabels], seed: int = 0) -> None:
        if crops.ndim != 6 or crops.shape[0] != len(labels):
            raise ValueError(
                f"invalid crops shape {tuple(crops.shape)}: expected (lesions={len(labels)}, copies, channels, z, y, x)"
            )
        self.crops = crops
        self._labels = list(labels)
        self.seed = seed
        self._rng: np.random.Generator | None = None

    @property
    def labels(self) -> list[SampleLabels]:
        """Labels of the lesions, indexed like the dataset."""
        return self._labels

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._rng is None:
            info = torch.utils.data.get_worker_info()
            self._rng = np.random.default_rng([self.seed, info.id + 1 if info else 0])
        copy = int(self._rng.integers(self.crops.shape[1]))
        return self.crops[index, copy].float()


def crop_points(case: TrainingCase, mask: LesionMask, spec: CropSpec, points: torch.Tensor) -> torch.Tensor:
    """Sample every channel of ``spec`` at ``(z, y, x, 3)`` LPS points; returns ``(channels, z, y, x)``."""
    channels = []
    for channel in spec.channels:
        if channel == "mask":
            channels.append(mask_channel(mask, case.mask_grid, points))
            continue
        grid = case.ct if channel == "ct" else case.pet
        if grid is None:
            channels.append(torch.zeros(points.shape[:-1]))
            continue
        data = torch.from_numpy(np.ascontiguousarray(grid.array, dtype=np.float32))
        channels.append(volume_channel(grid, points, spec.normalizer(channel), data))
    return torch.stack(channels)


def read_training_csv(path: Path, stage: str, site_lookup) -> tuple[list[TrainingLesion], CaseCache]:
    """Read a training list CSV into lesions; ``site_lookup(value, level)`` maps labels to sites.

    ``site_lookup`` returns ``(site_id, region)`` for a coarse or fine label given by id or
    name and raises ``KeyError`` for an unknown one.

    Raises
    ------
    TrainingDataError
        If a column is missing, a number does not parse or a label is unknown; the message
        names the line.
    """
    path = Path(path)
    required = [*IMAGE_COLUMNS, *BOX_COLUMNS, "coarse_gt"] + (["fine_gt"] if stage == "fine" else [])
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in required if name not in (reader.fieldnames or [])]
        if missing:
            raise TrainingDataError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
        rows = list(reader)

    lesions = []
    for line, row in enumerate(rows, start=2):
        try:
            numbers = [float(row[name]) for name in BOX_COLUMNS]
            coarse_id, region = site_lookup(row["coarse_gt"].strip(), "coarse")
            fine_id = site_lookup(row["fine_gt"].strip(), "fine")[0] if row.get("fine_gt", "").strip() else coarse_id
            predictions = tuple(
                site_lookup(label.strip(), "coarse")[0]
                for label in (row.get("coarse_labels") or "").split(",")
                if label.strip()
            )
        except ValueError as exc:
            raise TrainingDataError(f"{path} line {line}: {exc}") from exc
        except KeyError as exc:
            raise TrainingDataError(f"{path} line {line}: unknown site {exc}; use an id or name of the vocabulary") from exc
        key = "\n".join(row[name] for name in IMAGE_COLUMNS)
        lesions.append(
            TrainingLesion(
                key, tuple(numbers[:3]), tuple(numbers[3:]),
                SampleLabels(coarse_id, fine_id, region, predictions),
            )
        )
    LOGGER.info("read %d training lesions of %d studies from %s", len(lesions), len({l.case_key for l in lesions}), path)
    return lesions, CaseCache()
