"""Contrastive training loop of one HCL-AL level (coarse or fine).

Only the image encoder learns, plus the linear projection of the sentence encoder when
training with the offline MiniLM text model. Texts are frozen, so the text features of
every site are computed once before the first step; each step projects the features of
the batch's sites and contrasts them with the batch's image embeddings.

Files in ``output_dir``:

- ``training_state.pt``: weights, optimizer, scheduler and history, written every
  ``save_every`` epochs and at the end; a later run with ``resume`` continues from it.
- ``history.json``, ``loss.png``, ``accuracy.png``: per-epoch mean loss and in-batch
  top-1 accuracy.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from models.training.config import TrainingConfig
from models.training.distributed import DistributedContext, gather_embeddings, gather_tensor
from models.training.loss import SkipTopNClipLoss
from models.training.samplers import CoarseBatchSampler, EpochBatchSampler, FineBatchSampler, SampleLabels

LOGGER = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
HISTORY_FILE = "history.json"


class ClipTrainingModel(nn.Module):
    """Image encoder and text projection trained together; the text features stay fixed."""

    def __init__(self, image_encoder: nn.Module, text_projection: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_projection = text_projection

    def forward(self, crops: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the image embeddings of ``crops`` and the projected ``text_features``."""
        return self.image_encoder(crops), self.text_projection(text_features)


@dataclass
class TrainingHistory:
    """Per-epoch mean loss and in-batch top-1 accuracy."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[float]]:
        """Return the history as JSON-ready lists."""
        return {"loss": list(self.loss), "accuracy": list(self.accuracy)}


class ShardedBatches:
    """Batch sampler that yields this rank's slice of each global batch of ``sampler``."""

    def __init__(self, sampler: EpochBatchSampler, context: DistributedContext) -> None:
        self.sampler = sampler
        self.context = context

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for batch in self.sampler:
            yield self.context.shard(batch)


def build_sampler(config: TrainingConfig, labels: Sequence[SampleLabels]) -> CoarseBatchSampler | FineBatchSampler:
    """Return the coarse or fine batch sampler of ``config.stage``."""
    if config.stage == "coarse":
        return CoarseBatchSampler(
            labels, config.batch_size, config.region_weights, config.batches_per_epoch, config.seed,
            config.regions_per_batch,
        )
    return FineBatchSampler(labels, config.batch_size, config.related_fraction, config.batches_per_epoch, config.seed)


def in_batch_accuracy(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> float:
    """Return the fraction of images whose best-scoring text in the batch is their own."""
    scores = nn.functional.normalize(image_embeddings, dim=-1) @ nn.functional.normalize(text_embeddings, dim=-1).T
    labels = torch.arange(scores.shape[0], device=scores.device)
    return float((scores.argmax(dim=1) == labels).float().mean())


def save_curves(history: TrainingHistory, output_dir: Path) -> None:
    """Write ``loss.png`` and ``accuracy.png`` (matplotlib, Agg backend) for the epochs so far."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    epochs = np.arange(1, len(history.loss) + 1)
    for name, values, label in (
        ("loss.png", history.loss, "mean loss"),
        ("accuracy.png", history.accuracy, "in-batch top-1 accuracy"),
    ):
        figure, axes = pyplot.subplots(figsize=(6, 4))
        axes.plot(epochs, values, marker="." if len(values) < 50 else None)
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
        figure.tight_layout()
        figure.savefig(output_dir / name, dpi=100)
        pyplot.close(figure)


class ContrastiveTrainer:
    """Train an image encoder against fixed text features with the HCL-AL samplers and loss.

    Parameters
    ----------
    config : TrainingConfig
        Stage, optimisation and checkpoint settings.
    dataset : torch.utils.data.Dataset
        ``dataset[i]`` returns the ``(channels, z, y, x)`` float crop of lesion ``i``,
        augmented as the dataset sees fit.
    labels : sequence of SampleLabels
        Labels of the dataset's lesions, indexed alike.
    text_ids : sequence of str
        Site ids of the rows of ``text_features``; every label's site of this stage must be
        among them.
    text_features : torch.Tensor
        ``(len(text_ids), F)`` fixed text features (MiniLM sentence embeddings, or CLIP text
        embeddings with an identity projection).
    model : ClipTrainingModel
        Image encoder and text projection to train.
    context : DistributedContext
        Rank, world size and device.
    loader_workers : int, optional
        Data-loader processes; default ``config.num_workers``. Datasets that only index
        tensors in memory run fastest with 0.
    """

    def __init__(
        self,
        config: TrainingConfig,
        dataset: Dataset,
        labels: Sequence[SampleLabels],
        text_ids: Sequence[str],
        text_features: torch.Tensor,
        model: ClipTrainingModel,
        context: DistributedContext,
        loader_workers: int | None = None,
    ) -> None:
        self.config = config
        self.loader_workers = config.num_workers if loader_workers is None else loader_workers
        self.dataset = dataset
        self.labels = list(labels)
        self.context = context
        self.output_dir = Path(config.output_dir)

        self.text_ids = list(text_ids)
        row_of = {site_id: row for row, site_id in enumerate(text_ids)}
        site_of = (lambda label: label.coarse_id) if config.stage == "coarse" else (lambda label: label.fine_id)
        missing = sorted({site_of(label) for label in self.labels} - set(row_of))
        if missing:
            raise ValueError(f"training labels name sites without a text: {missing[:10]}")
        self.text_rows = torch.tensor([row_of[site_of(label)] for label in self.labels], dtype=torch.long)
        self.text_features = text_features.to(context.device)

        if context.is_distributed and context.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(context.device)
        self.parameters = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        self.optimizer = torch.optim.Adam(
            self.parameters, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(config.lr_milestones), gamma=config.lr_gamma
        )
        self.criterion = SkipTopNClipLoss(config.skip_top, config.label_smoothing, config.logit_scale)
        self.sampler = build_sampler(config, self.labels)
        self.history = TrainingHistory()
        self.epoch = 0

        self.network: nn.Module = self.model
        if context.is_distributed:
            device_ids = [context.device.index] if context.device.type == "cuda" else None
            self.network = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)

    # Checkpoints of the training state.

    @property
    def state_path(self) -> Path:
        """Path of the resumable training state."""
        return self.output_dir / STATE_FILE

    def save_state(self) -> None:
        """Write the training state atomically (rank 0 only)."""
        if not self.context.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "epoch": self.epoch,
            "stage": self.config.stage,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history.as_dict(),
        }
        partial = self.state_path.with_suffix(".tmp")
        torch.save(state, partial)
        partial.replace(self.state_path)
        (self.output_dir / HISTORY_FILE).write_text(json.dumps(self.history.as_dict(), indent=2))
        save_curves(self.history, self.output_dir)
        LOGGER.info("saved training state at epoch %d to %s", self.epoch, self.state_path)

    def load_state(self) -> bool:
        """Resume from ``training_state.pt`` if it exists; return whether it did.

        The file is read with ``torch.load(weights_only=True)``, so it cannot run code.
        """
        if not self.state_path.is_file():
            return False
        state = torch.load(self.state_path, map_location=self.context.device, weights_only=True)
        if state.get("stage") != self.config.stage:
            raise ValueError(
                f"{self.state_path} holds a {state.get('stage')!r} run, not {self.config.stage!r}; "
                "choose another output_dir or set resume = False"
            )
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ValueError(
                f"{self.state_path} contains a model of another shape (crop_size, scales, width or embed_dim "
                f"changed since it was saved): {str(exc).splitlines()[-1].strip().rstrip('.')}; "
                "choose another output_dir or set resume = False"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = TrainingHistory(**state["history"])
        self.epoch = int(state["epoch"])
        if self.context.is_main:
            LOGGER.info("resumed %s training at epoch %d from %s", self.config.stage, self.epoch, self.state_path)
        return True

    # Training.

    def make_loader(self) -> DataLoader:
        """Return a loader that yields this rank's crops of each global batch, with their indices."""
        return DataLoader(
            IndexedDataset(self.dataset),
            batch_sampler=ShardedBatches(self.sampler, self.context),
            num_workers=self.loader_workers,
            persistent_workers=self.loader_workers > 0,
            pin_memory=self.context.device.type == "cuda",
        )

    def train_step(self, crops: torch.Tensor, global_indices: torch.Tensor) -> tuple[float, float]:
        """Run one optimiser step on a global batch; return its loss and in-batch accuracy."""
        text_features = self.text_features[self.text_rows[global_indices].to(self.context.device)]
        image_embeddings, text_embeddings = self.network(crops.to(self.context.device, non_blocking=True), text_features)
        image_embeddings = gather_embeddings(image_embeddings, self.context)

        loss = self.criterion(image_embeddings, text_embeddings)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach()), in_batch_accuracy(image_embeddings.detach(), text_embeddings.detach())

    def train(self, progress: Callable[[int, int, float], None] | None = None) -> TrainingHistory:
        """Train until ``config.epochs``, resuming first when ``config.resume`` is set.

        ``progress(epoch, step, loss)`` is called after every step on rank 0 (the CLI draws a
        rich progress bar with it).
        """
        if self.config.resume:
            self.load_state()
        loader = self.make_loader()
        self.model.train()

        while self.epoch < self.config.epochs:
            self.sampler.set_epoch(self.epoch)
            losses, accuracies = [], []
            for step, (crops, indices) in enumerate(loader):
                global_indices = self.global_indices(indices)
                loss, accuracy = self.train_step(crops, global_indices)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at epoch {self.epoch + 1}, step {step + 1}")
                losses.append(loss)
                accuracies.append(accuracy)
                if progress is not None and self.context.is_main:
                    progress(self.epoch, step, loss)

            self.scheduler.step()
            self.epoch += 1
            self.history.loss.append(float(np.mean(losses)))
            self.history.accuracy.append(float(np.mean(accuracies)))
            if self.context.is_main:
                LOGGER.info(
                    "epoch %d/%d: loss %.4f, in-batch accuracy %.3f",
                    self.epoch, self.config.epochs, self.history.loss[-1], self.history.accuracy[-1],
                )
            if self.epoch % self.config.save_every == 0 or self.epoch == self.config.epochs:
                self.save_state()
        return self.history

    def global_indices(self, local_indices: torch.Tensor) -> torch.Tensor:
        """Return the dataset indices of the whole global batch, in rank order."""
        if not self.context.is_distributed:
            return local_indices
        return gather_tensor(local_indices.to(self.context.device), self.context).cpu()


class IndexedDataset(Dataset):
    """Wrap a crop dataset so that each item also carries its index."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.dataset[index], index
