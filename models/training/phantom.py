"""Training lesions from phantom studies generated in memory (no DICOM written).

Each seed gives one whole-body phantom with its own body proportions, organ shifts and
noise, and lesions placed in distinct fine sites of the vocabulary. The labels are the
phantom's ground truth: the fine site under each lesion centre and its coarse parent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from models.training.dataset import CaseCache, ImageGrid, LesionMask, TrainingCase, TrainingLesion, mask_box
from models.training.samplers import SampleLabels
from models.vocabulary import Vocabulary

LOGGER = logging.getLogger(__name__)


def phantom_case(seed: int, lesion_count: int, vocabulary: Vocabulary) -> tuple[TrainingCase, list[TrainingLesion]]:
    """Build one phantom study in memory and return its images and labelled lesions.

    Each crop is centred on the centre of the lesion mask's bounding box, as at inference.
    """
    from dicom.phantom.volumes import build_phantom_volumes

    volumes = build_phantom_volumes(seed, lesion_count)
    key = f"phantom seed {seed}"
    ct = ImageGrid(volumes.ct_hu.astype(np.float32), volumes.ct_affine, key)
    pet = ImageGrid(volumes.pet_suv, volumes.pet_affine, key)
    case = TrainingCase(key, ct, pet, ct)

    lesions = []
    for spec, (block, mask) in zip(volumes.lesions, volumes.lesion_masks, strict=True):
        site = vocabulary.site(spec.site_id)
        coarse = vocabulary.parent(site.id) if site.level == "fine" else site
        origin = tuple(int(s.start) for s in block)
        centre, size = mask_box(volumes.ct_affine, origin, mask)
        lesions.append(
            TrainingLesion(
                key, tuple(centre.tolist()), tuple(size.tolist()),
                SampleLabels(coarse.id, site.id, coarse.region),
                LesionMask(np.ascontiguousarray(mask), origin),
            )
        )
    return case, lesions


def phantom_lesions(
    seeds: Sequence[int], lesions_per_study: int, vocabulary: Vocabulary
) -> tuple[list[TrainingLesion], CaseCache]:
    """Return the lesions of the phantom studies of ``seeds`` and a cache holding their images.

    All studies stay in memory (about 110 MB each with a float32 CT), which is what makes
    augmentation cheap; use a CSV of written studies for large training sets.
    """
    cases: dict[str, TrainingCase] = {}
    lesions: list[TrainingLesion] = []
    for number, seed in enumerate(seeds, start=1):
        case, study_lesions = phantom_case(seed, lesions_per_study, vocabulary)
        cases[case.key] = case
        lesions.extend(study_lesions)
        LOGGER.info("phantom %d of %d (seed %d): %d lesions", number, len(seeds), seed, len(study_lesions))
    return lesions, CaseCache(cases)
