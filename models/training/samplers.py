"""Batch samplers of HCL-AL training: every batch is a set of distinct texts.

The CLIP loss treats every other row of a batch as a negative, so two lesions of
the same site in one batch would push apart an image and its own text. Both
samplers therefore draw at most one lesion per text.

- Coarse batches take one lesion for each of up to ``B`` distinct coarse sites of
  two body regions drawn by weight, so the negatives are anatomical neighbours.
- Fine batches start from an anchor lesion, add lesions of the fine sites under its
  true coarse site and under the coarse sites that the coarse model predicted for it
  (at most 80 % of the batch), and fill the rest with lesions of other fine sites.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

#: Region weights of the published coarse sampler; limbs are drawn half as often as the head.
DEFAULT_REGION_WEIGHTS: dict[str, float] = {
    "head": 1.0,
    "neck": 2.0,
    "chest": 3.0,
    "abdomen": 2.0,
    "pelvis": 1.0,
    "axial skeleton": 1.0,
    "upper limb": 0.5,
    "lower limb": 0.5,
}


@dataclass(frozen=True)
class SampleLabels:
    """Labels of one training lesion, as far as the samplers need them.

    ``coarse_predictions`` lists the coarse sites that the trained coarse model ranked
    highest for this lesion; only fine batches use it.
    """

    coarse_id: str
    fine_id: str
    region: str
    coarse_predictions: tuple[str, ...] = field(default=())


def region_key(region: str) -> str:
    """Return the lookup key of a region name: lower case, ``_`` and ``-`` as spaces."""
    return " ".join(region.replace("_", " ").replace("-", " ").lower().split())


def _group_indices(keys: Sequence[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        groups[key].append(index)
    return dict(groups)


class EpochBatchSampler:
    """Yield ``batches_per_epoch`` batches per epoch from a stream seeded by ``(seed, epoch)``.

    Every distributed rank builds the sampler with the same seed and so draws the same
    global batches; subclasses implement :meth:`draw_batch`.
    """

    seed: int = 0
    epoch: int = 0
    batches_per_epoch: int = 1

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of ``epoch``; call before iterating in each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        for _ in range(self.batches_per_epoch):
            yield self.draw_batch(rng)

    def draw_batch(self, rng: np.random.Generator) -> list[int]:
        """Return one batch of sample indices."""
        raise NotImplementedError


class CoarseBatchSampler(EpochBatchSampler):
    """Yield batches of sample indices with one lesion per distinct coarse site from two regions.

    Parameters
    ----------
    labels : sequence of SampleLabels
        Labels of the training lesions, indexed like the dataset.
    batch_size : int
        Maximum number of lesions per batch; a batch is smaller when its two regions have
        fewer coarse sites with training lesions.
    region_weights : mapping, optional
        Relative weight of each body region (names compared by :func:`region_key`).
        Defaults to :data:`DEFAULT_REGION_WEIGHTS`.
    batches_per_epoch : int, optional
        Batches yielded by one iteration; defaults to ``ceil(len(labels) / batch_size)``.
    seed : int
        Seed of the sampler's generator; :meth:`set_epoch` derives each epoch's stream from it,
        so every distributed rank draws the same global batches.
    regions_per_batch : int
        Body regions drawn for each batch, 2 in the published training. More regions mix in
        easier, distant negatives.

    Raises
    ------
    ValueError
        If a region of the labels has no weight, or fewer than two coarse sites exist.
    """

    def __init__(
        self,
        labels: Sequence[SampleLabels],
        batch_size: int,
        region_weights: Mapping[str, float] | None = None,
        batches_per_epoch: int | None = None,
        seed: int = 0,
        regions_per_batch: int = 2,
    ) -> None:
        if batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 for a contrastive loss, got {batch_size}")
        if regions_per_batch < 1:
            raise ValueError(f"regions_per_batch must be at least 1, got {regions_per_batch}")
        self.regions_per_batch = regions_per_batch
        weights = {region_key(name): float(value) for name, value in (region_weights or DEFAULT_REGION_WEIGHTS).items()}

        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.by_site = _group_indices([label.coarse_id for label in labels])
        if len(self.by_site) < 2:
            raise ValueError(f"coarse training needs lesions of at least 2 coarse sites, got {len(self.by_site)}")

        sites_by_region: dict[str, list[str]] = defaultdict(list)
        for site, indices in self.by_site.items():
            sites_by_region[region_key(labels[indices[0]].region)].append(site)
        unknown = sorted(set(sites_by_region) - set(weights))
        if unknown:
            raise ValueError(
                f"no sampling weight for body region(s) {unknown}; "
                f"add them to region_weights (known: {sorted(weights)})"
            )
        self.regions = sorted(region for region in sites_by_region if weights[region] > 0)
        self.sites_by_region = {region: sorted(sites_by_region[region]) for region in self.regions}
        total = sum(weights[region] for region in self.regions)
        self.region_probabilities = np.array([weights[region] / total for region in self.regions])
        self.batches_per_epoch = batches_per_epoch or math.ceil(len(labels) / batch_size)

    def draw_batch(self, rng: np.random.Generator) -> list[int]:
        """Return one batch: distinct coarse sites of regions drawn by weight, one lesion each."""
        region_count = min(self.regions_per_batch, len(self.regions))
        chosen = rng.choice(len(self.regions), size=region_count, replace=False, p=self.region_probabilities)
        sites = [site for index in chosen for site in self.sites_by_region[self.regions[index]]]

        picked = rng.permutation(len(sites))[: self.batch_size]
        return [int(rng.choice(self.by_site[sites[index]])) for index in picked]


class FineBatchSampler(EpochBatchSampler):
    """Yield fine batches built around an anchor lesion and the coarse model's predictions.

    Parameters
    ----------
    labels : sequence of SampleLabels
        Labels of the training lesions; ``coarse_predictions`` should hold the coarse model's
        top predictions for each lesion (empty means only the true coarse site is used).
    batch_size : int
        Lesions per batch, capped by the number of fine sites with training lesions.
    related_fraction : float
        Maximum share of the batch taken from fine sites under the anchor's true and predicted
        coarse sites (0.8 in the published training); the rest are random other fine sites.
    batches_per_epoch : int, optional
        Batches per iteration; defaults to ``ceil(len(labels) / batch_size)``.
    seed : int
        Seed of the generator, combined with the epoch set by :meth:`set_epoch`.
    """

    def __init__(
        self,
        labels: Sequence[SampleLabels],
        batch_size: int,
        related_fraction: float = 0.8,
        batches_per_epoch: int | None = None,
        seed: int = 0,
    ) -> None:
        if batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 for a contrastive loss, got {batch_size}")
        if not 0.0 <= related_fraction <= 1.0:
            raise ValueError(f"related_fraction must be in [0, 1], got {related_fraction}")

        self.labels = list(labels)
        self.by_fine = _group_indices([label.fine_id for label in labels])
        if len(self.by_fine) < 2:
            raise ValueError(f"fine training needs lesions of at least 2 fine sites, got {len(self.by_fine)}")
        children: dict[str, set[str]] = defaultdict(set)
        for label in labels:
            children[label.coarse_id].add(label.fine_id)
        self.children = {coarse: sorted(fines) for coarse, fines in children.items()}
        self.fine_sites = sorted(self.by_fine)

        self.batch_size = min(batch_size, len(self.fine_sites))
        self.related_fraction = related_fraction
        self.batches_per_epoch = batches_per_epoch or math.ceil(len(labels) / batch_size)
        self.seed = seed
        self.epoch = 0

    def related_fine_sites(self, anchor: SampleLabels) -> list[str]:
        """Return the fine sites under the anchor's true and predicted coarse sites, anchor's own excluded."""
        coarse_sites = [anchor.coarse_id, *anchor.coarse_predictions]
        related: list[str] = []
        for coarse in dict.fromkeys(coarse_sites):
            related.extend(fine for fine in self.children.get(coarse, []) if fine != anchor.fine_id)
        return list(dict.fromkeys(related))

    def draw_batch(self, rng: np.random.Generator) -> list[int]:
        """Return one batch: anchor, related fine sites up to the fraction, then random fill."""
        anchor_index = int(rng.integers(len(self.labels)))
        anchor = self.labels[anchor_index]
        batch_sites = [anchor.fine_id]

        related = self.related_fine_sites(anchor)
        related_limit = max(int(self.related_fraction * self.batch_size) - 1, 0)
        batch_sites.extend(related[index] for index in rng.permutation(len(related))[:related_limit])

        # Fill from unrelated fine sites so the related share stays within the limit; only a
        # vocabulary too small for the batch falls back to the related sites left over.
        taken = set(batch_sites)
        related_set = set(related)
        unrelated = [site for site in self.fine_sites if site not in taken and site not in related_set]
        leftover = [site for site in related if site not in taken]
        fill = self.batch_size - len(batch_sites)
        others = [unrelated[index] for index in rng.permutation(len(unrelated))]
        others += [leftover[index] for index in rng.permutation(len(leftover))]
        batch_sites.extend(others[:fill])

        lesions = [anchor_index]
        lesions.extend(int(rng.choice(self.by_fine[site])) for site in batch_sites[1:])
        return lesions
