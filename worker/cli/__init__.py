"""The ``hclal`` command; each subcommand lives in a module of this package."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from worker.cli import db
from worker.cli import evaluate
from worker.cli import localize
from worker.cli import models
from worker.cli import phantom
from worker.cli import train
from worker.cli import vocab
from worker.cli.common import CliState

app = typer.Typer(
    name="hclal",
    help="Name the anatomical site of every lesion in PET/CT studies forwarded by a PACS (HCL-AL).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Optional[Path],
        typer.Option(
            "--config",
            "-c",
            help="TOML file with settings (names as the HCLAL_* variables without the prefix). "
            "Environment variables override it.",
            exists=False,
            dir_okay=False,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG level.")] = False,
) -> None:
    """Name the anatomical site of every lesion in PET/CT studies (HCL-AL)."""
    ctx.obj = CliState(config)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


db.register(app)
evaluate.register(app)
localize.register(app)
models.register(app)
phantom.register(app)
train.register(app)
vocab.register(app)


def main() -> None:
    """Entry point of the ``hclal`` console script."""
    app()
