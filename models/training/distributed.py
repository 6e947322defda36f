"""Process group setup for training on CPU, one GPU, or several GPUs under ``torchrun``.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without them training runs
in one process. Every rank draws the same global batch (the samplers are seeded alike)
and encodes its own slice; the image embeddings are all-gathered so the contrastive
loss sees the whole batch, not one shard.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Rank, world size and device of this training process."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on the rank that writes checkpoints, curves and progress."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    def shard(self, batch: list[int]) -> list[int]:
        """Return this rank's contiguous slice of a global batch trimmed to a multiple of the world size."""
        per_rank = len(batch) // self.world_size
        return batch[self.rank * per_rank : (self.rank + 1) * per_rank]

    def global_batch(self, batch: list[int]) -> list[int]:
        """Return the part of ``batch`` that the ranks encode together (all of it on one process)."""
        per_rank = len(batch) // self.world_size
        return batch[: per_rank * self.world_size]


def resolve_device(name: str) -> torch.device:
    """Return the torch device for ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises
    ------
    ValueError
        If CUDA is requested but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    return device


def init_distributed(device_name: str) -> DistributedContext:
    """Join the ``torchrun`` process group if one is set up, else return a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(0, 1, resolve_device(device_name))

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    LOGGER.info("training process %d of %d on %s", rank, world_size, device)
    return DistributedContext(rank, world_size, device)


def gather_embeddings(embeddings: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Concatenate the embeddings of all ranks in rank order, keeping gradients.

    Every rank then computes the same whole-batch loss. The backward of the all-gather
    sums the gradients of all ranks into each shard, which is ``world_size`` times the
    gradient of that shard; the mean that DistributedDataParallel takes over ranks
    cancels the factor, so the update equals the single-process one.
    """
    if not context.is_distributed:
        return embeddings
    return GatherWithGradient.apply(embeddings, context)


class GatherWithGradient(torch.autograd.Function):
    """All-gather of equal shards whose backward returns this rank's rows of the summed gradient.

    It replaces ``torch.distributed.nn.functional.all_gather``, which warns that it is
    deprecated in PyTorch 2.13, with the same gradient: each rank's loss depends on every
    shard, so the gradient of a shard is the sum over ranks of that shard's rows.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:  # type: ignore[override]
        ctx.rows = tensor.shape[0]
        ctx.rank = context.rank
        return gather_tensor(tensor, context)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        summed = gradient.contiguous().clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return summed[start : start + ctx.rows], None


def gather_tensor(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Concatenate a tensor of equal shape on every rank in rank order, without gradients."""
    if not context.is_distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(context.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def shutdown_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()
