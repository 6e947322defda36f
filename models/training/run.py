"""One training run from a :class:`TrainingConfig`: data, text features, model, loop, checkpoint.

The result is a checkpoint folder (``output_dir/model``) in the format of
:mod:`models.checkpoint`, holding the image encoder and the projected prompt embedding of
every site of the stage's level, so inference needs no text encoder.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.checkpoint import Checkpoint, CheckpointMetadata, load_checkpoint, save_checkpoint
from models.crop import CropSpec
from models.networks.image_encoder import ImageEncoder
from models.training.augment import NO_AUGMENTATION, CropAugmentation
from models.training.config import TrainingConfig
from models.training.dataset import (
    CaseCache,
    LesionCropDataset,
    PrecomputedCropDataset,
    TrainingLesion,
    read_training_csv,
)
from models.training.distributed import DistributedContext, init_distributed
from models.training.phantom import CropRequest, format_seed_ranges, phantom_lesions, precomputed_phantom_crops
from models.training.samplers import SampleLabels
from models.training.trainer import ClipTrainingModel, ContrastiveTrainer, TrainingHistory
from models.vocabulary import Vocabulary, default_vocabulary, load_vocabulary

LOGGER = logging.getLogger(__name__)

MODEL_DIR = "model"
MINILM_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2 + linear projection"


def load_run_vocabulary(config: TrainingConfig) -> Vocabulary:
    """Return the vocabulary named by the config, or the project's default one."""
    return load_vocabulary(config.vocabulary) if config.vocabulary else default_vocabulary()


def site_lookup(vocabulary: Vocabulary) -> Callable[[str, str], tuple[str, str]]:
    """Return a function mapping a site id or name of a level to ``(site_id, region)``."""
    by_name = {(site.level, site.name.lower()): site for site in vocabulary}

    def lookup(value: str, level: str) -> tuple[str, str]:
        site = vocabulary.site(value) if value in vocabulary else by_name.get((level, value.lower()))
        if site is None or site.level != level:
            raise KeyError(f"{level} site {value!r}")
        return site.id, site.region

    return lookup


def crop_spec(config: TrainingConfig) -> CropSpec:
    """Return the crop grid and scales of the config with the published channels and normalisers."""
    defaults = CheckpointMetadata("coarse", config.crop_size, config.spacing, [], "", "")
    return CropSpec(
        config.crop_size, config.spacing, tuple(defaults.channels), tuple(defaults.normalizers), config.scales
    )


def load_lesions(config: TrainingConfig, vocabulary: Vocabulary) -> tuple[list[TrainingLesion], CaseCache]:
    """Return the training lesions and their studies from the CSV or the phantom seeds."""
    if config.train_csv is not None:
        return read_training_csv(config.train_csv, config.stage, site_lookup(vocabulary))
    return phantom_lesions(config.phantom_seeds, config.phantom_lesions, vocabulary)


def level_sites(vocabulary: Vocabulary, stage: str) -> list:
    """Return the vocabulary's sites of the stage's level, in file order."""
    return list(vocabulary.coarse_sites if stage == "coarse" else vocabulary.fine_sites)


@functools.lru_cache(maxsize=4)
def minilm_features(prompts: tuple[str, ...]) -> torch.Tensor:
    """Return the frozen MiniLM sentence embeddings of ``prompts``, computed once per process."""
    from models.networks.sentence import SentenceEncoder

    return SentenceEncoder().encode_sentences(list(prompts)).cpu()


def minilm_text_features(prompts: Sequence[str], embed_dim: int) -> tuple[torch.Tensor, nn.Module]:
    """Return the frozen MiniLM features of ``prompts`` and a fresh trainable projection."""
    features = minilm_features(tuple(prompts))
    return features, nn.Linear(features.shape[1], embed_dim)


def coarse_rankings(
    checkpoint: Checkpoint, crop_batches: Iterable[torch.Tensor], top: int, device: torch.device
) -> list[tuple[str, ...]]:
    """Return the coarse model's ``top`` sites, best first, for every crop of ``crop_batches``."""
    site_ids = checkpoint.metadata.site_ids
    texts = nn.functional.normalize(checkpoint.prompt_embeddings.float().to(device), dim=-1)
    rankings: list[tuple[str, ...]] = []
    with torch.inference_mode():
        for crops in crop_batches:
            embeddings = checkpoint.image_encoder(crops.float().to(device)).float()
            scores = nn.functional.normalize(embeddings, dim=-1) @ texts.T
            for row in scores.cpu().numpy():
                rankings.append(tuple(list(dict.fromkeys(site_ids[column] for column in np.argsort(-row)))[:top]))
    return rankings


def with_coarse_predictions(
    labels: Sequence[SampleLabels], rankings: Sequence[tuple[str, ...]], source: Path
) -> list[SampleLabels]:
    """Return ``labels`` with empty ``coarse_predictions`` filled from ``rankings``, logging the top-1 rate."""
    predicted = [
        label if label.coarse_predictions else replace(label, coarse_predictions=ranked)
        for label, ranked in zip(labels, rankings, strict=True)
    ]
    hits = sum(label.coarse_id == label.coarse_predictions[0] for label in predicted)
    LOGGER.info("coarse model %s: top-1 %d of %d training lesions", source, hits, len(predicted))
    return predicted


def add_coarse_predictions(
    lesions: list[TrainingLesion], cases: CaseCache, coarse_model: Path, top: int, device: torch.device
) -> list[TrainingLesion]:
    """Fill each lesion's ``coarse_predictions`` with the coarse model's ``top`` sites.

    Lesions that already carry predictions (a CSV ``coarse_labels`` column) keep them.
    """
    if all(lesion.labels.coarse_predictions for lesion in lesions):
        return lesions
    checkpoint = load_checkpoint(coarse_model, device)
    dataset = LesionCropDataset(lesions, cases, CropSpec.from_metadata(checkpoint.metadata), NO_AUGMENTATION)
    batches = (
        torch.stack([dataset[index] for index in range(start, min(start + 16, len(lesions)))])
        for start in range(0, len(lesions), 16)
    )
    rankings = coarse_rankings(checkpoint, batches, top, device)
    labels = with_coarse_predictions([lesion.labels for lesion in lesions], rankings, coarse_model)
    return [replace(lesion, labels=label) for lesion, label in zip(lesions, labels, strict=True)]


def rank_seed(config: TrainingConfig, context: DistributedContext) -> int:
    """Return the data seed of this process, so that each rank draws its own samples."""
    return config.seed + 7919 * context.rank


def precomputed_dataset(
    config: TrainingConfig, vocabulary: Vocabulary, augmentation: CropAugmentation, context: DistributedContext
) -> PrecomputedCropDataset:
    """Build the phantom studies of ``config``, crop every lesion ``crop_copies`` times and drop the studies.

    A fine run with ``coarse_model`` also crops each lesion on the coarse model's grid and
    stores that model's top sites in the labels.
    """
    requests = [CropRequest(crop_spec(config), config.crop_copies, augmentation)]
    coarse = None
    if config.stage == "fine" and config.coarse_model is not None:
        coarse = load_checkpoint(config.coarse_model, context.device)
        requests.append(CropRequest(CropSpec.from_metadata(coarse.metadata)))
    labels, crops = precomputed_phantom_crops(
        config.phantom_seeds, config.phantom_lesions, vocabulary, requests, config.num_workers, config.seed
    )
    if coarse is not None:
        rankings = coarse_rankings(coarse, crops[1][:, 0].split(64), config.coarse_predictions_top, context.device)
        labels = with_coarse_predictions(labels, rankings, config.coarse_model)
    return PrecomputedCropDataset(crops[0], labels, seed=rank_seed(config, context))


def training_summary(
    config: TrainingConfig, labels: Sequence[SampleLabels], studies: int, history: TrainingHistory
) -> dict:
    """Return the training record stored in the checkpoint metadata."""
    source = str(config.train_csv) if config.train_csv else f"phantom seeds {format_seed_ranges(config.phantom_seeds)}"
    return {
        "stage": config.stage,
        "source": source,
        "lesions": len(labels),
        "studies": studies,
        "sites": len({label.coarse_id if config.stage == "coarse" else label.fine_id for label in labels}),
        "epochs": len(history.loss),
        "final_loss": history.loss[-1] if history.loss else None,
        "final_in_batch_accuracy": history.accuracy[-1] if history.accuracy else None,
        "config": config.as_dict(),
    }


def export_model(
    trainer: ContrastiveTrainer,
    config: TrainingConfig,
    vocabulary: Vocabulary,
    sites: Sequence,
    text_features: torch.Tensor,
    labels: Sequence[SampleLabels],
    studies: int,
) -> Path:
    """Write ``output_dir/model``: the image encoder and the projected prompt embedding of each site.

    With ``prompt_sites = "trained"`` only the sites with training lesions keep a prompt.
    """
    if config.prompt_sites == "trained":
        trained = {trainer.text_ids[row] for row in set(trainer.text_rows.tolist())}
        rows = [row for row, site in enumerate(sites) if site.id in trained]
        sites = [sites[row] for row in rows]
        text_features = text_features[rows]
    model = trainer.model.eval()
    with torch.no_grad():
        prompt_embeddings = model.text_projection(text_features.to(trainer.context.device)).cpu()
    spec = crop_spec(config)
    metadata = CheckpointMetadata(
        level=config.stage,
        crop_size=config.crop_size,
        spacing=config.spacing,
        site_ids=[site.id for site in sites],
        vocabulary_id=f"{vocabulary.vocabulary_id} {vocabulary.version}",
        vocabulary_sha256=vocabulary.vocabulary_hash,
        width=config.width,
        embed_dim=config.embed_dim,
        channels=spec.channels,
        normalizers=spec.normalizers,
        scales=spec.scales,
        logit_scale=config.logit_scale,
        prompts=[site.description for site in sites],
        text_encoder=MINILM_TEXT_ENCODER,
        training=training_summary(config, labels, studies, trainer.history),
    )
    # The projection lets inference re-encode a site whose description changes later.
    projection = {key: value.cpu() for key, value in model.text_projection.state_dict().items()}
    return save_checkpoint(
        Path(config.output_dir) / MODEL_DIR, model.image_encoder.cpu(), prompt_embeddings, metadata, projection
    )


def run_training(
    config: TrainingConfig,
    progress: Callable[[int, int, float], None] | None = None,
    context: DistributedContext | None = None,
) -> Path | None:
    """Train the stage of ``config`` and return the checkpoint folder (None on ranks other than 0).

    Raises
    ------
    models.training.dataset.TrainingDataError
        If the training data cannot be read.
    ValueError
        If the labels and the vocabulary disagree, or a fine run has no coarse predictions.
    """
    context = context or init_distributed(config.device)
    torch.manual_seed(config.seed)
    vocabulary = load_run_vocabulary(config)
    augmentation = CropAugmentation(
        config.jitter_mm, config.rotation_degrees, config.rotation_probability,
        tuple(config.scale_range), config.scale_probability,
    )
    dataset: LesionCropDataset | PrecomputedCropDataset
    if config.crop_copies:
        dataset = precomputed_dataset(config, vocabulary, augmentation, context)
        studies = len(config.phantom_seeds)
        loader_workers = 0
    else:
        lesions, cases = load_lesions(config, vocabulary)
        if config.stage == "fine" and config.coarse_model is not None:
            lesions = add_coarse_predictions(
                lesions, cases, config.coarse_model, config.coarse_predictions_top, context.device
            )
        dataset = LesionCropDataset(
            lesions, cases, crop_spec(config), augmentation, seed=rank_seed(config, context)
        )
        studies = len({lesion.case_key for lesion in lesions})
        loader_workers = config.num_workers
    if not len(dataset):
        raise ValueError("the training data holds no lesions")

    sites = level_sites(vocabulary, config.stage)
    if config.text_encoder != "minilm":
        raise ValueError("training supports text_encoder = 'minilm'; CLIP weights are not available offline")
    text_features, projection = minilm_text_features([site.description for site in sites], config.embed_dim)

    encoder = ImageEncoder(
        config.crop_shape, in_channels=crop_spec(config).input_channels, embed_dim=config.embed_dim, width=config.width
    )
    trainer = ContrastiveTrainer(
        config, dataset, dataset.labels, [site.id for site in sites], text_features,
        ClipTrainingModel(encoder, projection), context, loader_workers,
    )
    LOGGER.info(
        "training %s model on %d lesions of %d sites, %d epochs of %d batches",
        config.stage, len(dataset), len(set(trainer.text_rows.tolist())), config.epochs, len(trainer.sampler),
    )
    trainer.train(progress)
    if not context.is_main:
        return None
    return export_model(trainer, config, vocabulary, sites, text_features, dataset.labels, studies)
