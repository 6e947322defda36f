"""Small random-weight coarse and fine checkpoints over the whole vocabulary, for pipeline tests.

Their answers are arbitrary; tests that need correct sites use the shipped demo model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.checkpoint import CheckpointMetadata, save_checkpoint
from models.networks.image_encoder import ImageEncoder
from models.vocabulary import load_vocabulary

EMBED_DIM = 32
WIDTH = 0.125


def write_tiny_models(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``root/coarse`` and ``root/fine`` and return their paths."""
    vocabulary = load_vocabulary()
    torch.manual_seed(seed)
    paths = []
    for level, sites, spacing in (
        ("coarse", vocabulary.coarse_sites, (8.0, 8.0, 8.0)),
        ("fine", vocabulary.fine_sites, (4.0, 4.0, 4.0)),
    ):
        metadata = CheckpointMetadata(
            level=level, crop_size=(16, 16, 16), spacing=spacing, site_ids=[site.id for site in sites],
            vocabulary_id=vocabulary.vocabulary_id, vocabulary_sha256=vocabulary.vocabulary_hash,
            width=WIDTH, embed_dim=EMBED_DIM, logit_scale=30.0,
        )
        encoder = ImageEncoder(metadata.crop_shape, width=WIDTH, embed_dim=EMBED_DIM).eval()
        prompts = torch.randn(len(sites), EMBED_DIM)
        save_checkpoint(root / level, encoder, prompts, metadata)
        paths.append(root / level)
    return paths[0], paths[1]
