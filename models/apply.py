"""Batch localisation of the lesions listed in a CSV: the engine of ``clip_apply``.

Input rows name the images of a study (``image_path`` CT, ``image_path1`` PET in SUV,
``image_path2`` lesion mask; NIfTI/MetaImage files or DICOM series folders). Two modes:

``box``
    Every row is one lesion given by its box (``x``, ``y``, ``z`` centre in world LPS mm,
    ``width``, ``height``, ``depth`` in mm); the mask channel is the box. The mask column
    is optional.
``mask``
    Every distinct image triple is one study; each 26-connected component of its mask
    image is one lesion, and the output row gets the component's box.

The output has the input columns, the reference's prediction columns (``coarse_labels``,
``coarse_probs``, ``fine_to_coarse_labels``, ``fine_labels``, ``fine_probs``, ``pred``;
lists comma-separated, best first) and our coded site (``site_id``, ``site_code_value``,
``site_code_scheme``, ``site_code_meaning``, ``laterality``, ``probability``,
``uncertain``). ``pred`` is a site id of the vocabulary.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from models.training.config import build_config, read_config_file
from models.training.dataset import BOX_COLUMNS, CONNECTIVITY_26, IMAGE_COLUMNS, ImageGrid, mask_box, read_image

LOGGER = logging.getLogger(__name__)

MODES = ("box", "mask")
PREDICTION_COLUMNS = (
    "coarse_labels", "coarse_probs", "fine_to_coarse_labels", "fine_labels", "fine_probs", "pred",
    "site_id", "site_code_value", "site_code_scheme", "site_code_meaning", "laterality", "probability",
    "uncertain",
)
# Affines of images that share a grid agree to this tolerance (mm).
GRID_TOLERANCE_MM = 1e-3


class ApplyError(ValueError):
    """The input CSV or its images cannot be localised; the message names the row and the fix."""


@dataclass
class ApplyConfig:
    """Settings of ``clip_apply -i inference_config.py``.

    ``coarse_model`` and ``fine_model`` are checkpoint folders; leaving both unset uses the
    demo model shipped with the worker. ``output_csv`` defaults to
    ``<input stem>_<mode>_pred.csv`` beside the input.
    """

    input_csv: Path = Path("lesions.csv")
    output_csv: Path | None = None
    mode: str = "box"
    coarse_model: Path | None = None
    fine_model: Path | None = None
    vocabulary: Path | None = None
    top_k: int = 3
    uncertain_below: float = 0.5
    fusion_below: float | None = None
    batch_size: int = 16
    device: str = "auto"
    coarse_only: bool = False

    def __post_init__(self) -> None:
        from models.training.config import ConfigError

        self.input_csv = Path(self.input_csv)
        self.output_csv = Path(self.output_csv) if self.output_csv else self.input_csv.with_name(
            f"{self.input_csv.stem}_{self.mode}_pred.csv"
        )
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.top_k < 1:
            raise ConfigError(f"top_k must be at least 1, got {self.top_k}")
        if (self.coarse_model is None) != (self.fine_model is None) and not self.coarse_only:
            raise ConfigError("set both coarse_model and fine_model, or neither for the demo model")


def load_apply_config(path: Path, **overrides: object) -> ApplyConfig:
    """Load an inference config file and apply ``overrides`` (None values skipped)."""
    values = read_config_file(path)
    values.update({key: value for key, value in overrides.items() if value is not None})
    return build_config(ApplyConfig, values, str(path))


@dataclass(frozen=True)
class MaskLesion:
    """One connected component of a mask image on the CT grid, as the localizer crops it."""

    bbox_mm: tuple[float, float, float, float, float, float]
    mask: np.ndarray
    mask_origin: tuple[int, int, int]
    centre_mm: tuple[float, float, float]
    size_mm: tuple[float, float, float]


def same_grid(first: ImageGrid, second: ImageGrid) -> bool:
    """Return whether two images have the same shape and voxel-to-LPS affine."""
    return first.array.shape == second.array.shape and np.allclose(first.affine, second.affine, atol=GRID_TOLERANCE_MM)


def mask_lesions(mask: ImageGrid) -> list[MaskLesion]:
    """Split a mask image into its 26-connected components, in label order.

    ``size_mm`` is the extent of the component's voxels edge to edge and ``bbox_mm`` the
    extent of their centres, both in LPS mm.
    """
    labels, count = ndimage.label(mask.array > 0, structure=CONNECTIVITY_26)
    lesions = []
    for number, region in enumerate(ndimage.find_objects(labels), start=1):
        component = labels[region] == number
        origin = tuple(int(s.start) for s in region)
        centre, size = mask_box(mask.affine, origin, component)
        half_extent = (size - np.abs(mask.affine[:3, :3]).sum(axis=1)) / 2
        bbox = tuple(np.concatenate([centre - half_extent, centre + half_extent]).tolist())
        lesions.append(MaskLesion(bbox, component, origin, tuple(centre.tolist()), tuple(size.tolist())))
    LOGGER.info("mask %s: %d lesions (26-connected components)", mask.series_instance_uid, count)
    return lesions


def read_rows(path: Path, mode: str) -> tuple[list[dict[str, str]], list[str]]:
    """Read the input CSV and check its columns for ``mode``."""
    if not path.is_file():
        raise ApplyError(f"input CSV {path} not found")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    required = [IMAGE_COLUMNS[0], IMAGE_COLUMNS[1]] + (list(BOX_COLUMNS) if mode == "box" else [IMAGE_COLUMNS[2]])
    missing = [name for name in required if name not in columns]
    if missing:
        raise ApplyError(f"{path}: missing column(s) {missing} for {mode} mode; found {columns}")
    return rows, columns


def group_studies(rows: Sequence[dict[str, str]]) -> dict[tuple[str, ...], list[int]]:
    """Group row numbers by their image paths, keeping the input order."""
    studies: dict[tuple[str, ...], list[int]] = {}
    for index, row in enumerate(rows):
        key = tuple(row.get(name, "") or "" for name in IMAGE_COLUMNS)
        studies.setdefault(key, []).append(index)
    return studies


def prediction_columns(prediction, vocabulary) -> dict[str, str]:
    """Return the output columns of one :class:`~models.inference.SitePrediction`."""
    coarse = prediction.coarse_topk
    fine = prediction.fine_topk
    site = prediction.site
    return {
        "coarse_labels": ",".join(site_id for site_id, _ in coarse),
        "coarse_probs": ",".join(f"{p:.4f}" for _, p in coarse),
        "fine_to_coarse_labels": ",".join(vocabulary.site(site_id).parent or site_id for site_id, _ in fine),
        "fine_labels": ",".join(site_id for site_id, _ in fine),
        "fine_probs": ",".join(f"{p:.4f}" for _, p in fine),
        "pred": prediction.site_id,
        "site_id": prediction.site_id,
        "site_code_value": site.code.value,
        "site_code_scheme": site.code.scheme,
        "site_code_meaning": site.code.meaning,
        "laterality": site.laterality,
        "probability": f"{prediction.probability:.4f}",
        "uncertain": str(prediction.uncertain).lower(),
    }


def localize_study(localizer, key: tuple[str, ...], rows: list[dict[str, str]], mode: str) -> list[dict[str, str]]:
    """Localise the lesions of one study and return its output rows."""
    ct = read_image(Path(key[0]))
    pet = read_image(Path(key[1])) if key[1] else None

    if mode == "box":
        try:
            centres = [[float(row[name]) for name in BOX_COLUMNS[:3]] for row in rows]
            sizes = [[float(row[name]) for name in BOX_COLUMNS[3:]] for row in rows]
        except ValueError as exc:
            raise ApplyError(f"study {key[0]}: box value is not a number ({exc})") from exc
        predictions = localizer.localize_boxes(ct, pet, centres, sizes)
        out_rows = [dict(row) for row in rows]
    else:
        mask = read_image(Path(key[2]))
        if not same_grid(ct, mask):
            raise ApplyError(
                f"mask {key[2]} does not share the CT grid of {key[0]}; resample the mask onto the CT first"
            )
        lesions = mask_lesions(mask)
        predictions = localizer.localize(ct, pet, lesions)
        out_rows = []
        for lesion in lesions:
            row = dict(rows[0])
            row["class"] = "bbox"
            row.update(dict(zip(BOX_COLUMNS, (f"{v:.3f}" for v in (*lesion.centre_mm, *lesion.size_mm)), strict=True)))
            out_rows.append(row)

    for row, prediction in zip(out_rows, predictions, strict=True):
        row.update(prediction_columns(prediction, localizer.vocabulary))
    return out_rows


def build_localizer(config: ApplyConfig):
    """Return the :class:`~models.inference.Localizer` of the config's models (demo model by default)."""
    from models.inference import COARSE_DIR, DEMO_MODEL_DIR, FINE_DIR, Localizer
    from models.vocabulary import default_vocabulary, load_vocabulary

    coarse = config.coarse_model or DEMO_MODEL_DIR / COARSE_DIR
    fine = None if config.coarse_only else (config.fine_model or DEMO_MODEL_DIR / FINE_DIR)
    vocabulary = load_vocabulary(config.vocabulary) if config.vocabulary else default_vocabulary()
    return Localizer(
        coarse, fine, vocabulary=vocabulary, device=config.device, top_k=config.top_k,
        uncertain_below=config.uncertain_below, fusion_below=config.fusion_below, batch_size=config.batch_size,
    )


def apply_csv(config: ApplyConfig, localizer=None) -> Path:
    """Localise every lesion of ``config.input_csv`` and write ``config.output_csv``.

    Returns
    -------
    Path
        The output CSV.

    Raises
    ------
    ApplyError
        If a column is missing, a value does not parse, or a mask is off the CT grid.
    """
    rows, columns = read_rows(config.input_csv, config.mode)
    localizer = localizer or build_localizer(config)
    studies = group_studies(rows)

    output: list[dict[str, str]] = []
    for number, (key, indices) in enumerate(studies.items(), start=1):
        study_rows = localize_study(localizer, key, [rows[i] for i in indices], config.mode)
        LOGGER.info("study %d of %d (%s): %d lesions", number, len(studies), key[0], len(study_rows))
        output.extend(study_rows)

    extra = ["class"] if config.mode == "mask" else []
    fieldnames = [*columns, *[c for c in extra if c not in columns], *[c for c in PREDICTION_COLUMNS if c not in columns]]
    config.output_csv.parent.mkdir(parents=True, exist_ok=True)
    with config.output_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(output)
    LOGGER.info("wrote %d predictions of %d studies to %s", len(output), len(studies), config.output_csv)
    return config.output_csv
