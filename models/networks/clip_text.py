"""The CLIP ViT-B/32 text transformer, built without downloading weights.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
ICML 2021. HCL-AL keeps this encoder frozen and stores its weights in each checkpoint
under ``text_encoder.*``; the parameter names here match those keys.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408
WIDTH = 512
LAYERS = 12
HEADS = 8
EMBED_DIM = 512


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that the original CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x * sigmoid(1.702 x)``."""
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: masked self-attention, then a 4x-wide MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, width * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(width * 4, width)),
                ]
            )
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``(batch, tokens, width)`` with an additive attention mask."""
        normed = self.ln_1(x)
        x = x + self.attn(normed, normed, normed, attn_mask=attn_mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks, ``resblocks.N`` as in the CLIP weights."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """Apply every block in order."""
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class ClipTextEncoder(nn.Module):
    """Encode CLIP BPE token ids into the joint embedding space.

    Parameters
    ----------
    context_length, vocab_size, width, layers, heads, embed_dim
        Architecture; the defaults are CLIP ViT-B/32 (63.4 M parameters).

    Notes
    -----
    Attention is causal, and the sentence embedding is the final-layer feature of the
    end-of-text token, which has the highest id in the CLIP vocabulary, projected by
    ``text_projection``. Weights start random (normal, std 0.02); load real ones with
    ``load_state_dict``.
    """

    def __init__(
        self,
        context_length: int = CONTEXT_LENGTH,
        vocab_size: int = VOCAB_SIZE,
        width: int = WIDTH,
        layers: int = LAYERS,
        heads: int = HEADS,
        embed_dim: int = EMBED_DIM,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width, layers, heads)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self.register_buffer("attn_mask", causal_mask(context_length), persistent=False)
        self._init_parameters(width, layers)

    def _init_parameters(self, width: int, layers: int) -> None:
        # CLIP's initialisation: small normal weights scaled by depth.
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = (width**-0.5) * ((2 * layers) ** -0.5)
        attn_std = width**-0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return the ``(batch, embed_dim)`` embedding of ``(batch, context_length)`` token ids."""
        if tokens.ndim != 2 or tokens.shape[1] != self.context_length:
            raise ValueError(
                f"expected token ids of shape (batch, {self.context_length}), got {tuple(tokens.shape)}"
            )
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.transformer(x, self.attn_mask.to(x.dtype))
        x = self.ln_final(x)
        end_of_text = tokens.argmax(dim=-1)
        pooled = x[torch.arange(x.shape[0], device=x.device), end_of_text]
        return pooled @ self.text_projection


def causal_mask(length: int) -> torch.Tensor:
    """Return the additive ``(length, length)`` mask that hides later tokens (-inf above the diagonal)."""
    return torch.full((length, length), float("-inf")).triu(1)
