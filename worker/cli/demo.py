"""``hclal demo``: send a phantom study through the whole data path and show the findings."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from worker.cli.common import fail


def demo_command(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Folder for the study, database, reports and preview; "
                     "default: a new temporary folder."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Phantom seed; the same seed gives the same study.")] = 7,
    lesions: Annotated[int, typer.Option(min=1, max=40, help="Number of lesions in the phantom.")] = 8,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the report at the PACS.")] = 600.0,
) -> None:
    """Generate a phantom PET/CT study, send it to the worker's SCP, and receive its SR."""
    from worker.demo import DemoError, run_demo

    console = Console()
    root_logger = logging.getLogger()
    if root_logger.level > logging.DEBUG:
        # The steps are shown by the status line; per-instance INFO lines would bury them.
        root_logger.setLevel(logging.WARNING)
    output_dir = output or Path(tempfile.mkdtemp(prefix="hclal-demo-"))
    with console.status("starting") as status:
        try:
            result = run_demo(output_dir, seed, lesions, progress=lambda text: _step(console, status, text),
                              timeout=timeout)
        except DemoError as exc:
            fail(f"{exc}; the worker's files are in {output_dir}")

    table = Table(title=f"Lesions of the phantom study (seed {seed})", expand=True)
    for column in ("Segment", "True site", "Predicted site", "Probability", "SUVmax", "Volume (ml)"):
        table.add_column(column, justify="right" if column not in ("True site", "Predicted site") else "left")
    for row in result.rows:
        mark = "[green]✓[/]" if row["correct"] else "[red]✗[/]"
        table.add_row(
            str(row["segment"]), str(row["true_site"]), f"{mark} {row['predicted_site']}",
            f"{row['probability']:.2f}" + (" ?" if row["uncertain"] else ""),
            "-" if row["suv_max"] is None else f"{row['suv_max']:.2f}", f"{row['volume_ml']:.2f}",
        )
    console.print(table)
    correct = sum(row["correct"] for row in result.rows)
    console.print(f"{correct} of {len(result.rows)} lesions at the true site; finished in {result.seconds:.1f} s")
    console.print(f"Structured Report received by the PACS: {result.report_path}")
    console.print(f"Preview: {result.preview_path}")


def _step(console: Console, status, text: str) -> None:  # noqa: ANN001
    console.log(text)
    status.update(text)


def register(app: typer.Typer) -> None:
    """Add ``hclal demo`` to ``app``."""
    app.command("demo")(demo_command)
