"""Hierarchical HCL-AL localisation: coarse site ranking, then fine ranking among its children.

For every lesion of a study:

1. crop CT, PET and the lesion mask on the coarse model's grid and embed the crops;
2. score all coarse prompts with ``softmax(logit_scale * cosine)`` and keep the top k
   coarse sites (3 by default);
3. crop on the fine model's grid and score only the fine prompts under those k sites;
4. answer the best fine site, or the best coarse site for lesions whose smallest box
   side exceeds 100 mm, and mark the answer uncertain below a probability threshold.

Prompt embeddings come from the checkpoints, so no text encoder runs here. All lesions
of a study go through each encoder in batches.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from models.crop import CropSpec, StudyCropper, lesion_box_centre, lesion_box_size
from models.vocabulary import Site, Vocabulary, default_vocabulary

if TYPE_CHECKING:
    from dicom.lesions import LesionMeasurement
    from dicom.volume import Volume
    from worker.config import Settings

LOGGER = logging.getLogger(__name__)

DEMO_MODEL_DIR = Path(__file__).with_name("demo")
COARSE_DIR = "coarse"
FINE_DIR = "fine"
# Lesions whose smallest box side exceeds this get the coarse answer only, as published.
COARSE_ONLY_MIN_SIDE_MM = 100.0
DEFAULT_TOP_K = 3
DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True)
class SitePrediction:
    """The site chosen for one lesion, with the ranked alternatives.

    Attributes
    ----------
    site_id, site
        The chosen site: fine, or coarse when ``coarse_only``.
    probability
        Probability of the chosen site (fused when fusion applied).
    uncertain
        Whether ``probability`` is below the configured threshold.
    coarse_topk, fine_topk
        ``(site_id, probability)`` pairs, best first; ``fine_topk`` is empty when
        ``coarse_only``.
    coarse_only
        Whether the fine model was skipped: lesion too large, no fine model, or no fine
        prompt under the top coarse sites.
    """

    site_id: str
    site: Site
    probability: float
    uncertain: bool
    coarse_topk: list[tuple[str, float]] = field(default_factory=list)
    fine_topk: list[tuple[str, float]] = field(default_factory=list)
    coarse_only: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON-ready fields of ``hclal localize --json`` for this prediction."""
        return {
            "site_id": self.site_id,
            "site_code": self.site.code.as_dict(),
            "laterality": self.site.laterality,
            "probability": self.probability,
            "uncertain": self.uncertain,
            "coarse_only": self.coarse_only,
            "coarse_topk": [[site_id, probability] for site_id, probability in self.coarse_topk],
            "fine_topk": [[site_id, probability] for site_id, probability in self.fine_topk],
        }


def resolve_device(device: str | torch.device) -> torch.device:
    """Return the torch device for ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises
    ------
    ValueError
        If CUDA is requested but not available.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; set HCLAL_DEVICE=cpu")
    return resolved


@contextlib.contextmanager
def inference_context(device: torch.device) -> Iterator[None]:
    """Run without autograd; mixed precision on CUDA, deterministic kernels on CPU."""
    with torch.inference_mode():
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            with torch.autocast("cuda", dtype=dtype):
                yield
            return
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous)


class RankedModel:
    """One checkpoint prepared for ranking: encoder, normalised prompts and row-to-site map.

    A site may own several prompt rows; its probability is the sum over its rows.
    """

    def __init__(self, checkpoint: Checkpoint, vocabulary: Vocabulary, device: torch.device) -> None:
        self.checkpoint = checkpoint
        self.metadata = checkpoint.metadata
        self.spec = CropSpec.from_metadata(checkpoint.metadata)
        # Channels-last 3-D layout lets oneDNN and cuDNN pick faster convolutions: 4 coarse
        # crops took 8.4 s instead of 10.8 s on a busy 2-core x86 VM (one A/B run).
        self.encoder = checkpoint.image_encoder.to(device, memory_format=torch.channels_last_3d).eval()
        check_sites(checkpoint, vocabulary)
        prompts = current_prompt_embeddings(checkpoint, vocabulary)
        self.prompts = F.normalize(prompts.to(device, torch.float32), dim=-1)
        self.row_site_ids = list(checkpoint.metadata.site_ids)

        self.site_ids = list(dict.fromkeys(self.row_site_ids))
        column = {site_id: index for index, site_id in enumerate(self.site_ids)}
        self.row_to_site = torch.zeros(len(self.row_site_ids), len(self.site_ids), device=device)
        for row, site_id in enumerate(self.row_site_ids):
            self.row_to_site[row, column[site_id]] = 1.0

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        """Return L2-normalised float32 image embeddings of a batch of crops."""
        crops = crops.contiguous(memory_format=torch.channels_last_3d)
        return F.normalize(self.encoder(crops).float(), dim=-1)

    def site_probabilities(self, embeddings: torch.Tensor, row_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Return ``(lesions, sites)`` probabilities; rows where ``row_mask`` is false are excluded."""
        # Scores stay in float32: under bf16 autocast, 100 * cosine would carry an error
        # of about 0.4 before the softmax.
        with torch.autocast(embeddings.device.type, enabled=False):
            logits = self.metadata.logit_scale * embeddings.float() @ self.prompts.T
            if row_mask is not None:
                logits = logits.masked_fill(~row_mask, float("-inf"))
            return torch.softmax(logits, dim=-1) @ self.row_to_site


def check_sites(checkpoint: Checkpoint, vocabulary: Vocabulary) -> None:
    """Raise :class:`CheckpointError` if the checkpoint names sites the vocabulary lacks."""
    metadata = checkpoint.metadata
    unknown = sorted({site_id for site_id in metadata.site_ids if site_id not in vocabulary})
    if unknown:
        raise CheckpointError(
            f"{metadata.level} model {checkpoint.path} names {len(unknown)} sites that vocabulary "
            f"{vocabulary.vocabulary_id} lacks (first: {unknown[0]}); use a model built for this vocabulary"
        )
    if metadata.vocabulary_sha256 != vocabulary.vocabulary_hash:
        LOGGER.warning(
            "%s model %s was built for vocabulary %s %s, running with %s %s; all its sites exist",
            metadata.level, checkpoint.path, metadata.vocabulary_id, metadata.vocabulary_sha256[:12],
            vocabulary.vocabulary_id, vocabulary.vocabulary_hash[:12],
        )


def current_prompt_embeddings(checkpoint: Checkpoint, vocabulary: Vocabulary) -> torch.Tensor:
    """Return the prompt embeddings, re-encoding rows whose site description changed since training.

    Only checkpoints that store their sentence-encoder projection can re-encode; others,
    such as imported HCL-AL models whose prompts are the published sentences, keep their
    stored embeddings. The result is computed once, when the localizer loads.
    """
    metadata = checkpoint.metadata
    embeddings = checkpoint.prompt_embeddings
    if not metadata.prompts or checkpoint.text_projection is None:
        return embeddings
    changed = [
        row
        for row, (site_id, prompt) in enumerate(zip(metadata.site_ids, metadata.prompts, strict=True))
        if vocabulary.site(site_id).description != prompt
    ]
    if not changed:
        return embeddings

    from models.networks.sentence import SentenceEncoder

    encoder = SentenceEncoder(embed_dim=metadata.embed_dim)
    encoder.projection.load_state_dict(checkpoint.text_projection)
    descriptions = [vocabulary.site(metadata.site_ids[row]).description for row in changed]
    with torch.inference_mode():
        fresh = encoder(descriptions).to(embeddings.device, embeddings.dtype)
    embeddings = embeddings.clone()
    embeddings[changed] = fresh
    LOGGER.info(
        "re-encoded %d of %d %s prompts whose description changed in vocabulary %s",
        len(changed), len(metadata.site_ids), metadata.level, vocabulary.vocabulary_id,
    )
    return embeddings


def coarse_of(site: Site) -> str:
    """Return the coarse site id a site belongs to (itself for coarse sites)."""
    return site.parent if site.level == "fine" and site.parent else site.id


def top_pairs(probabilities: torch.Tensor, site_ids: Sequence[str], k: int) -> list[tuple[str, float]]:
    """Return the ``k`` best ``(site_id, probability)`` pairs of one probability row, best first."""
    k = min(k, probabilities.numel())
    values, indices = torch.topk(probabilities, k)
    return [(site_ids[int(i)], float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True) if v > 0]


class Localizer:
    """Load the coarse and fine models once and name the site of every lesion.

    Parameters
    ----------
    coarse, fine
        Checkpoints or checkpoint folders; ``fine`` may be ``None`` for coarse answers only.
    vocabulary
        Site vocabulary; default: the project's ``sites.json``.
    device
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    top_k
        Coarse sites whose children the fine model ranks.
    uncertain_below
        Top probability under which a prediction is marked uncertain.
    fusion_below
        When set, and the best fine probability is below it, fine probabilities are
        averaged with their parent's coarse probability before choosing. Off by default.
    batch_size
        Lesions per encoder call.
    """

    def __init__(
        self,
        coarse: Checkpoint | Path,
        fine: Checkpoint | Path | None,
        vocabulary: Vocabulary | None = None,
        device: str | torch.device = "auto",
        top_k: int = DEFAULT_TOP_K,
        uncertain_below: float = 0.5,
        fusion_below: float | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = resolve_device(device)
        self.vocabulary = vocabulary or default_vocabulary()
        self.top_k = top_k
        self.uncertain_below = uncertain_below
        self.fusion_below = fusion_below
        self.batch_size = batch_size

        self.coarse = RankedModel(self._load(coarse, "coarse"), self.vocabulary, self.device)
        self.fine = RankedModel(self._load(fine, "fine"), self.vocabulary, self.device) if fine is not None else None
        if self.fine is not None:
            # The coarse site of each fine prompt row, for selecting the candidates.
            self.fine_row_coarse = [coarse_of(self.vocabulary.site(s)) for s in self.fine.row_site_ids]
        LOGGER.info(
            "localizer ready on %s: %d coarse prompts, %d fine prompts, top-%d",
            self.device, len(self.coarse.row_site_ids), len(self.fine.row_site_ids) if self.fine else 0, top_k,
        )

    def _load(self, source: Checkpoint | Path, level: str) -> Checkpoint:
        checkpoint = source if isinstance(source, Checkpoint) else load_checkpoint(Path(source), self.device)
        if checkpoint.metadata.level != level:
            raise CheckpointError(
                f"{checkpoint.path} is a {checkpoint.metadata.level} model, expected a {level} model"
            )
        return checkpoint

    @classmethod
    def from_settings(cls, settings: Settings) -> Localizer:
        """Build the localizer of the configured models, or of the shipped demo model."""
        coarse = settings.coarse_model or DEMO_MODEL_DIR / COARSE_DIR
        fine = settings.fine_model or DEMO_MODEL_DIR / FINE_DIR
        return cls(
            coarse, fine, device=settings.device, top_k=settings.coarse_top_k,
            uncertain_below=settings.uncertain_below,
        )

    @classmethod
    def from_model_dir(cls, path: Path, **options: object) -> Localizer:
        """Build the localizer of a folder with ``coarse/`` and ``fine/`` checkpoints.

        A folder that is itself a checkpoint gives a coarse-only localizer.
        """
        path = Path(path)
        if (path / COARSE_DIR).is_dir():
            fine = path / FINE_DIR if (path / FINE_DIR).is_dir() else None
            return cls(path / COARSE_DIR, fine, **options)  # type: ignore[arg-type]
        return cls(path, None, **options)  # type: ignore[arg-type]

    def localize(self, ct: Volume, pet: Volume | None, lesions: Sequence[LesionMeasurement]) -> list[SitePrediction]:
        """Return one prediction per lesion, in order, each crop centred on the lesion's box."""
        centres = [lesion_box_centre(lesion) for lesion in lesions]
        sizes = [lesion_box_size(lesion) for lesion in lesions]
        return self._localize(StudyCropper(ct, pet, self.device), centres, sizes, list(lesions))

    def localize_boxes(
        self,
        ct: Volume,
        pet: Volume | None,
        centres: Sequence[Sequence[float]],
        sizes: Sequence[Sequence[float]],
    ) -> list[SitePrediction]:
        """Return one prediction per box (LPS centre and size in mm); the mask channel is the box."""
        boxes = [(tuple(c), tuple(s)) for c, s in zip(centres, sizes, strict=True)]
        return self._localize(StudyCropper(ct, pet, self.device), centres, sizes, boxes)

    def _localize(
        self,
        cropper: StudyCropper,
        centres: Sequence[Sequence[float]],
        sizes: Sequence[Sequence[float]],
        masks: Sequence[object],
    ) -> list[SitePrediction]:
        if not centres:
            return []
        with inference_context(self.device):
            coarse_probs = self._probabilities(self.coarse, cropper, centres, masks)
            coarse_topk = [top_pairs(row, self.coarse.site_ids, self.top_k) for row in coarse_probs]

            fine_rows = [i for i, size in enumerate(sizes) if self.fine is not None and min(size) <= COARSE_ONLY_MIN_SIDE_MM]
            fine_probs = self._fine_probabilities(cropper, centres, masks, fine_rows, coarse_topk)

        predictions = []
        for index in range(len(centres)):
            fine_row = fine_probs.get(index)
            predictions.append(self._predict(coarse_probs[index], coarse_topk[index], fine_row))
        return predictions

    def _probabilities(
        self,
        model: RankedModel,
        cropper: StudyCropper,
        centres: Sequence[Sequence[float]],
        masks: Sequence[object],
        row_masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return ``(lesions, sites)`` probabilities, cropping and encoding in batches."""
        outputs = []
        for start in range(0, len(centres), self.batch_size):
            stop = start + self.batch_size
            crops = cropper.crop(model.spec, centres[start:stop], masks[start:stop])
            embeddings = model.embed(crops)
            row_mask = None if row_masks is None else row_masks[start:stop]
            outputs.append(model.site_probabilities(embeddings, row_mask))
        return torch.cat(outputs).float().cpu()

    def _fine_probabilities(
        self,
        cropper: StudyCropper,
        centres: Sequence[Sequence[float]],
        masks: Sequence[object],
        rows: list[int],
        coarse_topk: list[list[tuple[str, float]]],
    ) -> dict[int, torch.Tensor]:
        """Return fine site probabilities of the lesions in ``rows`` that have fine candidates."""
        if self.fine is None:
            return {}
        candidate_masks = []
        with_candidates = []
        for index in rows:
            allowed = {site_id for site_id, _ in coarse_topk[index]}
            mask = torch.tensor([coarse in allowed for coarse in self.fine_row_coarse], dtype=torch.bool)
            if mask.any():
                with_candidates.append(index)
                candidate_masks.append(mask)
        if not with_candidates:
            return {}
        row_masks = torch.stack(candidate_masks).to(self.device)
        probabilities = self._probabilities(
            self.fine, cropper, [centres[i] for i in with_candidates], [masks[i] for i in with_candidates], row_masks
        )
        return dict(zip(with_candidates, probabilities, strict=True))

    def _predict(
        self,
        coarse_probs: torch.Tensor,
        coarse_topk: list[tuple[str, float]],
        fine_probs: torch.Tensor | None,
    ) -> SitePrediction:
        """Choose the answer of one lesion from its coarse and fine probabilities."""
        if fine_probs is None or self.fine is None:
            site_id, probability = coarse_topk[0]
            return SitePrediction(
                site_id, self.vocabulary.site(site_id), probability,
                probability < self.uncertain_below, coarse_topk, [], coarse_only=True,
            )

        fine_topk = top_pairs(fine_probs, self.fine.site_ids, self.top_k)
        site_id, probability = fine_topk[0]
        if self.fusion_below is not None and probability < self.fusion_below:
            site_id, probability = self._fuse(coarse_probs, fine_probs)
        return SitePrediction(
            site_id, self.vocabulary.site(site_id), probability,
            probability < self.uncertain_below, coarse_topk, fine_topk, coarse_only=False,
        )

    def _fuse(self, coarse_probs: torch.Tensor, fine_probs: torch.Tensor) -> tuple[str, float]:
        """Return the fine site with the best mean of its own and its parent's coarse probability."""
        assert self.fine is not None
        coarse_column = {site_id: index for index, site_id in enumerate(self.coarse.site_ids)}
        best: tuple[str, float] = ("", -1.0)
        for index, site_id in enumerate(self.fine.site_ids):
            if fine_probs[index] <= 0:
                continue
            parent = coarse_of(self.vocabulary.site(site_id))
            parent_probability = float(coarse_probs[coarse_column[parent]]) if parent in coarse_column else 0.0
            fused = (float(fine_probs[index]) + parent_probability) / 2
            if fused > best[1]:
                best = (site_id, fused)
        return best
