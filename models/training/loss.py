"""Symmetric CLIP loss with label smoothing and skip-top-N semi-hard negative mining.

HCL-AL (Gao et al., IEEE TMI 2025, doi 10.1109/TMI.2025.3599197) trains with the
in-batch CLIP cross-entropy in both directions (image to text and text to image).
Each row drops the N wrong texts that score highest before the softmax, because in
anatomy the closest negatives are often neighbours that are nearly as right as the
label (N = 2 for coarse sites, 5 for fine sites), and the targets are smoothed by 0.1.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


def skip_top_n_cross_entropy(
    logits: torch.Tensor, skip_top: int, label_smoothing: float
) -> torch.Tensor:
    """Return the mean cross-entropy of a square logit matrix whose diagonal holds the labels.

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, B)`` scores; row ``i`` belongs to sample ``i`` and its label is column ``i``.
    skip_top : int
        Number of highest-scoring wrong columns removed from each row before the softmax.
        Rows keep at least the label, so ``skip_top >= B - 1`` leaves only the label.
    label_smoothing : float
        ``eps`` in ``q = (1 - eps) * onehot + eps / K``, where ``K`` is the number of columns
        kept in that row (the label included). Removed columns get no target mass.

    Returns
    -------
    torch.Tensor
        Scalar loss, the mean over rows.
    """
    size = logits.shape[0]
    if logits.ndim != 2 or logits.shape[1] != size:
        raise ValueError(f"logits must be a square matrix, got shape {tuple(logits.shape)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")

    labels = torch.arange(size, device=logits.device)
    keep = torch.ones_like(logits, dtype=torch.bool)

    # Rank the wrong columns of every row; the label column is pushed to the bottom.
    skip = min(max(skip_top, 0), size - 1)
    if skip > 0:
        wrong = logits.detach().masked_fill(torch.eye(size, dtype=torch.bool, device=logits.device), float("-inf"))
        hardest = wrong.topk(skip, dim=1).indices
        keep.scatter_(1, hardest, False)

    log_probs = functional.log_softmax(logits.masked_fill(~keep, float("-inf")), dim=1)
    kept = keep.sum(dim=1, keepdim=True).to(logits.dtype)
    target = keep.to(logits.dtype) * (label_smoothing / kept)
    target[labels, labels] += 1.0 - label_smoothing

    # Removed columns have -inf log-probability and zero target; zero them so 0 * -inf is not nan.
    per_row = -(target * log_probs.masked_fill(~keep, 0.0)).sum(dim=1)
    return per_row.mean()


class SkipTopNClipLoss(nn.Module):
    """Symmetric CLIP loss of HCL-AL over a whole batch of matched image and text embeddings.

    Parameters
    ----------
    skip_top : int
        Wrong texts (images) with the highest scores dropped per row (column): 2 for the
        coarse model and 5 for the fine model in the published training.
    label_smoothing : float
        Target smoothing, 0.1 in the published training.
    logit_scale : float
        Multiplier of the cosine similarities; 100 matches CLIP's trained temperature and the
        ``softmax(100 * cosine)`` used at inference.
    """

    def __init__(self, skip_top: int, label_smoothing: float = 0.1, logit_scale: float = 100.0) -> None:
        super().__init__()
        if skip_top < 0:
            raise ValueError(f"skip_top must be >= 0, got {skip_top}")
        if logit_scale <= 0:
            raise ValueError(f"logit_scale must be positive, got {logit_scale}")
        self.skip_top = skip_top
        self.label_smoothing = label_smoothing
        self.logit_scale = logit_scale

    def forward(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Return the mean of the image-to-text and text-to-image losses.

        Row ``i`` of ``image_embeddings`` (``(B, E)``) matches row ``i`` of ``text_embeddings``;
        every other row of the batch is a negative, so the texts of a batch must be distinct.
        """
        if image_embeddings.shape != text_embeddings.shape:
            raise ValueError(
                f"image and text embeddings differ in shape: {tuple(image_embeddings.shape)} "
                f"vs {tuple(text_embeddings.shape)}"
            )
        images = functional.normalize(image_embeddings, dim=-1)
        texts = functional.normalize(text_embeddings, dim=-1)
        logits = self.logit_scale * images @ texts.T

        image_to_text = skip_top_n_cross_entropy(logits, self.skip_top, self.label_smoothing)
        text_to_image = skip_top_n_cross_entropy(logits.T, self.skip_top, self.label_smoothing)
        return (image_to_text + text_to_image) / 2
