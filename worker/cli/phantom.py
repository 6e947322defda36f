"""``hclal phantom``: write a synthetic whole-body PET/CT study with ground truth."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from worker.cli.common import fail


def phantom_command(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write ct/, pet/, seg/ and truth.json into.", file_okay=False)],
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the anatomy, lesions and noise.")] = 0,
    lesions: Annotated[int, typer.Option("--lesions", min=0, help="Number of lesions, each in a different site.")] = 10,
) -> None:
    """Write a synthetic whole-body PET/CT study (CT, PET, SEG) and its truth.json."""
    from dicom.phantom import generate_study

    if out_dir.exists() and any(out_dir.iterdir()):
        fail(f"{out_dir} is not empty; choose a new folder so that no study is mixed with another")
    started = time.monotonic()
    try:
        truth = generate_study(out_dir, seed, lesions)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(
        f"wrote {len(truth.ct_paths)} CT, {len(truth.pet_paths)} PET and "
        f"{1 if truth.seg_path else 0} SEG instances with {len(truth.lesions)} lesions to {out_dir} "
        f"in {time.monotonic() - started:.1f} s (study {truth.uids.study})"
    )


def register(app: typer.Typer) -> None:
    """Add ``hclal phantom`` to ``app``."""
    app.command("phantom")(phantom_command)
