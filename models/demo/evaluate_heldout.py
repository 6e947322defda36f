"""Top-1 accuracy of a coarse + fine model pair on held-out phantom studies.

Each seed is a phantom built in memory with ``--lesions`` lesions in distinct fine sites;
the lesions go through :class:`models.inference.Localizer` exactly as a study's SEG
lesions do (crop centred on the mask's bounding box, own mask as the third channel).
Prints one JSON line: overall (fine) top-1, coarse top-1, lesion count and seeds.

Usage: python -m models.demo.evaluate_heldout [--model models/demo] [--seeds 5000-5019]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.inference import Localizer
from models.training.dataset import ImageGrid, mask_box
from models.training.phantom import format_seed_ranges, parse_seed_ranges

DEFAULT_SEEDS = "5000-5019"
DEFAULT_LESIONS = 20


@dataclass(frozen=True)
class PhantomLesion:
    """The fields of a lesion measurement that the localizer reads."""

    bbox_mm: tuple[float, ...]
    mask: np.ndarray
    mask_origin: tuple[int, int, int]


def study_lesions(volumes) -> list[PhantomLesion]:
    """Return the phantom's lesions with their boxes (voxel-centre extent) and own masks."""
    lesions = []
    for block, mask in volumes.lesion_masks:
        origin = tuple(int(s.start) for s in block)
        centre, size = mask_box(volumes.ct_affine, origin, mask)
        voxel = np.abs(volumes.ct_affine[:3, :3]).sum(axis=1)
        half = (size - voxel) / 2
        lesions.append(PhantomLesion(tuple(np.concatenate([centre - half, centre + half]).tolist()), mask, origin))
    return lesions


def evaluate(model_dir: Path, seeds: list[int], lesion_count: int) -> dict[str, object]:
    """Localise every lesion of the held-out phantoms and count correct fine and coarse sites."""
    from dicom.phantom.volumes import build_phantom_volumes

    localizer = Localizer.from_model_dir(model_dir, device="cpu")
    vocabulary = localizer.vocabulary
    fine_correct = coarse_correct = total = 0
    confusions: Counter = Counter()
    seconds = 0.0
    for seed in seeds:
        volumes = build_phantom_volumes(seed, lesion_count)
        ct = ImageGrid(volumes.ct_hu.astype(np.float32), volumes.ct_affine, f"phantom seed {seed}")
        pet = ImageGrid(volumes.pet_suv, volumes.pet_affine, f"phantom seed {seed}")
        start = time.perf_counter()
        predictions = localizer.localize(ct, pet, study_lesions(volumes))
        seconds += time.perf_counter() - start
        for spec, prediction in zip(volumes.lesions, predictions, strict=True):
            truth_coarse = vocabulary.parent(spec.site_id).id
            predicted_coarse = prediction.site.parent or prediction.site_id
            total += 1
            fine_correct += prediction.site_id == spec.site_id
            coarse_correct += predicted_coarse == truth_coarse
            if prediction.site_id != spec.site_id:
                confusions[(spec.site_id, prediction.site_id)] += 1
    return {
        "top1": fine_correct / total,
        "coarse_top1": coarse_correct / total,
        "lesions": total,
        "studies": len(seeds),
        "seeds": format_seed_ranges(seeds),
        "ms_per_lesion": 1000 * seconds / total,
        "most_confused": [[t, p, n] for (t, p), n in confusions.most_common(5)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path(__file__).parent, help="folder with coarse/ and fine/")
    parser.add_argument("--seeds", default=DEFAULT_SEEDS, help="held-out phantom seeds, e.g. 5000-5019")
    parser.add_argument("--lesions", type=int, default=DEFAULT_LESIONS, help="lesions per phantom study")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(evaluate(arguments.model, parse_seed_ranges(arguments.seeds), arguments.lesions)))


if __name__ == "__main__":
    main()
