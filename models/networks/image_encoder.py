"""3-D residual image encoder of HCL-AL.

Gao et al., "Hierarchical Contrastive Learning for Precise Whole-body Anatomical
Localization in PET/CT Imaging", IEEE TMI 2025, doi:10.1109/TMI.2025.3599197.

A 3x3x3 stem, four stride-2 stages (16 -> 32 -> 64 -> 128 -> 256 channels) each followed
by a residual block of 1, 2, 3 and 3 convolutions, then one linear layer from the
flattened feature map to the joint embedding. The linear layer's input size depends on
the crop, so a model is built for one crop shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

STEM_CHANNELS = 16
STAGE_CHANNELS = (32, 64, 128, 256)
RESIDUAL_CONVOLUTIONS = (1, 2, 3, 3)
DOWNSAMPLING = 2 ** len(STAGE_CHANNELS)


def scaled_channels(channels: int, width: float) -> int:
    """Return ``channels`` times the width multiplier, at least 1."""
    return max(1, int(round(channels * width)))


class ResidualBlock(nn.Module):
    """``num_convs`` 3x3x3 convolution + batch norm layers with an identity shortcut.

    ``ops.N.0`` is the N-th convolution and ``ops.N.1`` its batch norm, as in the
    published checkpoints.
    """

    def __init__(self, channels: int, num_convs: int) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"num_convs must be at least 1, got {num_convs}")
        layers = []
        for index in range(num_convs):
            layer: list[nn.Module] = [
                nn.Conv3d(channels, channels, kernel_size=3, padding=1),
                nn.BatchNorm3d(channels),
            ]
            # The last ReLU comes after the shortcut is added.
            if index < num_convs - 1:
                layer.append(nn.ReLU(inplace=True))
            layers.append(nn.Sequential(*layer))
        self.ops = nn.Sequential(*layers)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``relu(x + ops(x))``."""
        return self.act(x + self.ops(x))


class DownStage(nn.Module):
    """A 2x2x2 stride-2 convolution + batch norm + ReLU, then a residual block."""

    def __init__(self, in_channels: int, out_channels: int, num_convs: int) -> None:
        super().__init__()
        self.down_conv = nn.Conv3d(in_channels, out_channels, kernel_size=2, stride=2)
        self.down_bn = nn.BatchNorm3d(out_channels)
        self.down_act = nn.ReLU(inplace=True)
        self.rblock = ResidualBlock(out_channels, num_convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Halve each spatial size and apply the residual block."""
        return self.rblock(self.down_act(self.down_bn(self.down_conv(x))))


class InputBlock(nn.Module):
    """3x3x3 convolution + batch norm + ReLU from the input channels to the stem width."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm3d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the stem features."""
        return self.act(self.bn(self.conv(x)))


class ImageEncoder(nn.Module):
    """Encode a batch of lesion crops into the joint image-text embedding space.

    Parameters
    ----------
    crop_shape
        ``(depth, height, width)`` of the input crop in voxels, that is ``(z, y, x)``;
        each must be a multiple of 16. The published coarse model uses
        ``(128, 96, 96)``, the fine model ``(64, 64, 64)``.
    in_channels
        Input channels; 3 for CT, PET and lesion mask.
    embed_dim
        Size of the output embedding; 512 matches the CLIP ViT-B/32 text encoder.
    width
        Channel multiplier; 1 gives the published shapes, smaller values small models.

    Notes
    -----
    Submodule names (``in_block``, ``down_32`` ... ``down_256``, ``fc``) do not change
    with ``width``, so a state dict of any width has the published key names.
    """

    def __init__(
        self,
        crop_shape: Sequence[int],
        in_channels: int = 3,
        embed_dim: int = 512,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        crop_shape = tuple(int(size) for size in crop_shape)
        if len(crop_shape) != 3 or any(size <= 0 or size % DOWNSAMPLING for size in crop_shape):
            raise ValueError(
                f"crop_shape must be three positive multiples of {DOWNSAMPLING} (depth, height, width), "
                f"got {crop_shape}"
            )
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        if in_channels < 1 or embed_dim < 1:
            raise ValueError(f"in_channels and embed_dim must be positive, got {in_channels}, {embed_dim}")
        self.crop_shape = crop_shape
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.width = width

        channels = scaled_channels(STEM_CHANNELS, width)
        self.in_block = InputBlock(in_channels, channels)
        for nominal, num_convs in zip(STAGE_CHANNELS, RESIDUAL_CONVOLUTIONS, strict=True):
            out_channels = scaled_channels(nominal, width)
            self.add_module(f"down_{nominal}", DownStage(channels, out_channels, num_convs))
            channels = out_channels

        feature_voxels = 1
        for size in crop_shape:
            feature_voxels *= size // DOWNSAMPLING
        self.fc = nn.Linear(channels * feature_voxels, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``(batch, embed_dim)`` embedding of ``(batch, channels, D, H, W)`` crops."""
        if x.ndim != 5 or tuple(x.shape[1:]) != (self.in_channels, *self.crop_shape):
            raise ValueError(
                f"expected input of shape (batch, {self.in_channels}, {', '.join(map(str, self.crop_shape))}), "
                f"got {tuple(x.shape)}"
            )
        x = self.in_block(x)
        for nominal in STAGE_CHANNELS:
            x = getattr(self, f"down_{nominal}")(x)
        return self.fc(torch.flatten(x, 1))
