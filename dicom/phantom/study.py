"""One phantom study on disk: CT, PET and SEG series plus ``truth.json``."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom.phantom.volumes import PhantomVolumes, build_phantom_volumes
from dicom.phantom.writer import StudyUids, ct_datasets, pet_datasets, seg_dataset, write_series

logger = logging.getLogger(__name__)

TRUTH_FILE = "truth.json"


@dataclass(frozen=True)
class TruthLesion:
    """Ground truth of one lesion, as written to ``truth.json``."""

    segment_number: int
    site_id: str
    code: dict[str, str]
    centroid_mm: tuple[float, float, float]
    diameter_mm: float
    suv_max: float

    def as_dict(self) -> dict[str, Any]:
        """Return the ``truth.json`` entry of this lesion."""
        return {
            "segment_number": self.segment_number,
            "site_id": self.site_id,
            "code": dict(self.code),
            "centroid_mm": list(self.centroid_mm),
            "diameter_mm": self.diameter_mm,
            "suv_max": self.suv_max,
        }


@dataclass(frozen=True)
class Truth:
    """Contents of a written phantom study: lesions, file paths and UIDs."""

    seed: int
    lesions: tuple[TruthLesion, ...]
    ct_paths: tuple[Path, ...]
    pet_paths: tuple[Path, ...]
    seg_path: Path | None
    truth_path: Path
    uids: StudyUids

    def as_dict(self) -> dict[str, Any]:
        """Return the content of ``truth.json``."""
        return {"lesions": [lesion.as_dict() for lesion in self.lesions]}


def truth_lesions(volumes: PhantomVolumes) -> tuple[TruthLesion, ...]:
    """Return the truth entries of ``volumes``' lesions, numbered from 1 in SEG order."""
    from models.vocabulary import default_vocabulary

    vocabulary = default_vocabulary()
    entries = []
    for number, lesion in enumerate(volumes.lesions, start=1):
        code = vocabulary.site(lesion.site_id).code
        entries.append(
            TruthLesion(
                segment_number=number,
                site_id=lesion.site_id,
                code={"value": code.value, "scheme": code.scheme, "meaning": code.meaning},
                centroid_mm=tuple(round(c, 3) for c in lesion.centre_mm),
                diameter_mm=lesion.diameter_mm,
                suv_max=round(lesion.suv_max, 4),
            )
        )
    return tuple(entries)


def generate_study(out_dir: Path, seed: int, lesions: int = 10) -> Truth:
    """Write the phantom study of ``seed`` with ``lesions`` lesions under ``out_dir``.

    Layout: ``ct/ct-NNNN.dcm``, ``pet/pet-NNNN.dcm``, ``seg/seg-0001.dcm`` (absent when
    ``lesions`` is 0, because a SEG needs at least one segment) and ``truth.json``.
    """
    if lesions < 0:
        raise ValueError(f"lesions must be 0 or more, not {lesions}")
    out_dir = Path(out_dir)
    volumes = build_phantom_volumes(seed, lesions)
    uids = StudyUids.for_seed(seed)

    ct = ct_datasets(volumes, uids)
    ct_paths = write_series(ct, out_dir / "ct", "ct")
    pet_paths = write_series(pet_datasets(volumes, uids), out_dir / "pet", "pet")
    seg_path = None
    if volumes.lesions:
        seg_path = write_series([seg_dataset(volumes, uids, ct)], out_dir / "seg", "seg")[0]

    truth = Truth(
        seed=seed,
        lesions=truth_lesions(volumes),
        ct_paths=tuple(ct_paths),
        pet_paths=tuple(pet_paths),
        seg_path=seg_path,
        truth_path=out_dir / TRUTH_FILE,
        uids=uids,
    )
    truth.truth_path.write_text(json.dumps(truth.as_dict(), indent=2) + "\n", encoding="utf-8")
    logger.info("wrote phantom study %s (seed %d, %d lesions) to %s", uids.study, seed, len(truth.lesions), out_dir)
    return truth
