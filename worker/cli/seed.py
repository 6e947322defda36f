"""Console scripts with the reference implementation's names: ``clip_coarse_train``,
``clip_fine_train`` and ``clip_apply``, each run as ``NAME -i CONFIG.py``.

They take the same Python config files as ``hclal train`` and print one error line and
exit with status 1 on a bad config or input, instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import typer

from worker.cli.common import ERROR_CONSOLE


def parse_config_argument(program: str, description: str, argv: Sequence[str] | None) -> Path:
    """Return the ``-i/--input`` config path of a console script."""
    parser = argparse.ArgumentParser(prog=program, description=description)
    parser.add_argument("-i", "--input", required=True, type=Path, help="config file (Python assignments)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    arguments = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if arguments.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return arguments.input


def exit_code_of(run) -> int:
    """Call ``run()`` and turn the CLI's error exit into a status code."""
    try:
        run()
    except typer.Exit as exc:
        return exc.exit_code
    return 0


def train_main(stage: str, argv: Sequence[str] | None) -> int:
    """Train ``stage`` from the config given with ``-i``."""
    from worker.cli.train import run_stage

    config = parse_config_argument(f"clip_{stage}_train", f"Train the HCL-AL {stage} model.", argv)

    def run() -> None:
        path = run_stage(stage, config)
        if path is not None:
            print(f"{stage} checkpoint written to {path}")

    return exit_code_of(run)


def clip_coarse_train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``clip_coarse_train -i coarse_config.py``."""
    return train_main("coarse", argv)


def clip_fine_train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``clip_fine_train -i fine_config.py``."""
    return train_main("fine", argv)


def clip_apply_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``clip_apply -i inference_config.py``: CSV of lesions in, CSV of sites out."""
    from models.apply import ApplyError, apply_csv, load_apply_config
    from models.checkpoint import CheckpointError
    from models.training.config import ConfigError

    config_path = parse_config_argument("clip_apply", "Name the anatomical site of the lesions in a CSV.", argv)
    try:
        config = load_apply_config(config_path)
        output = apply_csv(config)
    except (ConfigError, ApplyError, CheckpointError, FileNotFoundError) as exc:
        ERROR_CONSOLE.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 1
    print(f"predictions written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(clip_apply_main())
