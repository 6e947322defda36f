"""``hclal train coarse|fine``: train an HCL-AL level from a config file or options.

Several GPUs: ``torchrun --nproc_per_node N -m worker train coarse -i CONFIG.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from worker.cli.common import fail

LOGGER = logging.getLogger(__name__)

STAGE_HELP = "Level to train: 'coarse' (coarse sites) or 'fine' (fine sites under the coarse ones)."


def run_stage(stage: str, config_file: Path | None, **overrides: object) -> Path | None:
    """Load the config of ``stage``, train it with a progress bar, and return the checkpoint folder.

    Bad configs and unreadable training data end the command with one error line.
    """
    from models.training.config import ConfigError, load_training_config
    from models.training.dataset import TrainingDataError
    from models.training.distributed import init_distributed, shutdown_distributed
    from models.training.run import run_training

    try:
        config = load_training_config(config_file, stage=stage, **overrides)
    except ConfigError as exc:
        fail(str(exc))

    try:
        context = init_distributed(config.device)
    except ValueError as exc:
        fail(str(exc))
    try:
        with TrainingProgress(config.epochs, enabled=context.is_main) as progress:
            return run_training(config, progress, context)
    except (TrainingDataError, ValueError, FileNotFoundError) as exc:
        fail(f"{stage} training failed: {exc}")
    finally:
        shutdown_distributed()


class TrainingProgress:
    """Context manager yielding a ``progress(epoch, step, loss)`` callback that drives a rich bar."""

    def __init__(self, epochs: int, enabled: bool = True) -> None:
        self.epochs = epochs
        self.enabled = enabled
        self.bar = None
        self.task = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeRemainingColumn(),
        )
        self.bar.__enter__()
        self.task = self.bar.add_task("train", total=None, epoch=0, epochs=self.epochs, loss=float("nan"))
        self.last_epoch = -1
        return self.update

    def update(self, epoch: int, step: int, loss: float) -> None:
        """Advance the bar by one step of ``epoch`` (0-based)."""
        if epoch != self.last_epoch:
            self.bar.reset(self.task, total=None)
            self.last_epoch = epoch
        self.bar.update(self.task, advance=1, epoch=epoch + 1, loss=loss)

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc_info)


def train_command(
    stage: Annotated[str, typer.Argument(help=STAGE_HELP)],
    config_file: Annotated[
        Optional[Path],
        typer.Option("--input", "-i", help="Training config (a Python file of plain assignments).", dir_okay=False),
    ] = None,
    train_csv: Annotated[
        Optional[Path], typer.Option("--train-csv", help="Training list CSV (reference form).", dir_okay=False)
    ] = None,
    phantom_seeds: Annotated[
        Optional[str], typer.Option("--phantom-seeds", help="Phantom study seeds, e.g. '0-39' or '1,2,5'.")
    ] = None,
    output_dir: Annotated[Optional[Path], typer.Option("--output", "-o", help="Run folder.", file_okay=False)] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs to train in total.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=2, help="Lesions per global batch.")] = None,
    width: Annotated[Optional[float], typer.Option("--width", help="Channel multiplier of the image encoder.")] = None,
    coarse_model: Annotated[
        Optional[Path],
        typer.Option("--coarse-model", help="Fine stage: coarse checkpoint whose predictions build the fine batches."),
    ] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = None,
    resume: Annotated[
        Optional[bool], typer.Option("--resume/--restart", help="Continue from the run folder's saved state.")
    ] = None,
) -> None:
    """Train the coarse or the fine image encoder of HCL-AL (contrastive, text side frozen)."""
    if stage not in ("coarse", "fine"):
        fail(f"stage must be 'coarse' or 'fine', got {stage!r}")
    if config_file is None and train_csv is None and phantom_seeds is None:
        fail("give a config file with -i CONFIG.py, or --train-csv or --phantom-seeds")
    seeds = parse_seeds(phantom_seeds) if phantom_seeds else None
    path = run_stage(
        stage, config_file, train_csv=train_csv, phantom_seeds=seeds, output_dir=output_dir, epochs=epochs,
        batch_size=batch_size, width=width, coarse_model=coarse_model, device=device, resume=resume,
    )
    if path is not None:
        typer.echo(f"{stage} checkpoint written to {path}")


def parse_seeds(text: str) -> list[int]:
    """Parse ``'0-39'``, ``'1,2,5'`` or a mix into a list of seeds, or exit with the expected form."""
    from models.training.phantom import parse_seed_ranges

    try:
        return parse_seed_ranges(text)
    except ValueError:
        fail(f"--phantom-seeds must be numbers and ranges like '0-39,50', got {text!r}")


def register(app: typer.Typer) -> None:
    """Add ``hclal train`` to ``app``."""
    app.command("train")(train_command)
