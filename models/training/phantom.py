"""Training lesions from phantom studies generated in memory (no DICOM written).

Each seed gives one whole-body phantom with its own body proportions, organ shifts and
noise, and lesions placed in distinct fine sites of the vocabulary. The labels are the
phantom's ground truth: the fine site under each lesion centre, which also contains at
least half of the lesion, and its coarse parent.

:func:`phantom_lesions` keeps the studies in memory and crops them during training;
:func:`precomputed_phantom_crops` crops every lesion once (plus augmented copies) right
after building its study, which lets training use far more studies than fit in memory.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.crop import CropSpec
from models.training.augment import NO_AUGMENTATION, CropAugmentation
from models.training.dataset import (
    CaseCache,
    ImageGrid,
    LesionCropDataset,
    LesionMask,
    TrainingCase,
    TrainingLesion,
    mask_box,
)
from models.training.samplers import SampleLabels
from models.vocabulary import Vocabulary

LOGGER = logging.getLogger(__name__)


def parse_seed_ranges(text: str) -> list[int]:
    """Return the seeds of ``'0-39'``, ``'1,2,5'`` or a mix such as ``'0-3, 7'``.

    Raises
    ------
    ValueError
        If a part is not a number or a range of two numbers.
    """
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        seeds.extend(range(int(low), int(high) + 1) if high else [int(low)])
    return seeds


def format_seed_ranges(seeds: Sequence[int]) -> str:
    """Return seeds as ranges of consecutive numbers, ``'100-219'`` or ``'1-3,7'``."""
    runs: list[list[int]] = []
    for seed in seeds:
        if runs and seed == runs[-1][-1] + 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    return ",".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


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


@dataclass(frozen=True)
class CropRequest:
    """Crops to precompute for every lesion: the grid, how many copies and their augmentation.

    Copy 0 is never augmented, so it equals the crop that inference takes. Copies 1 and up
    each draw their own random jitter, rotation and scale from ``augmentation``.
    """

    spec: CropSpec
    copies: int = 1
    augmentation: CropAugmentation = NO_AUGMENTATION


def study_crops(
    seed: int, lesion_count: int, vocabulary: Vocabulary, requests: Sequence[CropRequest], augmentation_seed: int
) -> tuple[list[SampleLabels], list[torch.Tensor]]:
    """Build one phantom study and return its lesions' labels and, per request, their float16 crops.

    Each crop tensor has the shape ``(lesions, copies, channels, z, y, x)``. The study's
    volumes are dropped on return, so only the crops stay in memory.
    """
    torch.set_num_threads(1)
    case, lesions = phantom_case(seed, lesion_count, vocabulary)
    cases = CaseCache({case.key: case})
    tensors = []
    for request in requests:
        plain = LesionCropDataset(lesions, cases, request.spec)
        augmented = LesionCropDataset(
            lesions, cases, request.spec, request.augmentation, seed=augmentation_seed * 1_000_003 + seed
        )
        crops = torch.empty(
            (len(lesions), request.copies, request.spec.input_channels, *request.spec.shape), dtype=torch.float16
        )
        for index in range(len(lesions)):
            crops[index, 0] = plain[index]
            for copy in range(1, request.copies):
                crops[index, copy] = augmented[index]
        tensors.append(crops)
    return [lesion.labels for lesion in lesions], tensors


def precomputed_phantom_crops(
    seeds: Sequence[int],
    lesions_per_study: int,
    vocabulary: Vocabulary,
    requests: Sequence[CropRequest],
    processes: int = 1,
    augmentation_seed: int = 0,
) -> tuple[list[SampleLabels], list[torch.Tensor]]:
    """Return the labels of all lesions of the phantom studies of ``seeds`` and their crops per request.

    Studies are built and cropped one at a time in ``processes`` worker processes, so
    memory contains one study per process plus the float16 crops: about 25 KB per crop of
    3 x 16^3 voxels, against about 110 MB per study that :func:`phantom_lesions` keeps.
    The result does not depend on ``processes``.
    """
    jobs = [(seed, lesions_per_study, vocabulary, tuple(requests), augmentation_seed) for seed in seeds]
    labels: list[SampleLabels] = []
    parts: list[list[torch.Tensor]] = [[] for _ in requests]

    def collect(number: int, seed: int, result: tuple[list[SampleLabels], list[torch.Tensor]]) -> None:
        study_labels, tensors = result
        labels.extend(study_labels)
        for part, tensor in zip(parts, tensors, strict=True):
            part.append(tensor)
        LOGGER.info("phantom %d of %d (seed %d): %d lesions cropped", number, len(seeds), seed, len(study_labels))

    if processes <= 1:
        for number, job in enumerate(jobs, start=1):
            collect(number, job[0], study_crops(*job))
    else:
        # Spawned workers start without the parent's torch thread pool, which forked ones
        # can inherit in a locked state.
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            for number, (job, result) in enumerate(zip(jobs, pool.imap(_study_crops_job, jobs), strict=True), start=1):
                collect(number, job[0], result)
    return labels, [torch.cat(part) for part in parts]


def _study_crops_job(job: tuple) -> tuple[list[SampleLabels], list[torch.Tensor]]:
    return study_crops(*job)
