"""``hclal evaluate PRED.csv TRUTH.csv``: top-1 accuracy of site predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from worker.cli.common import fail


def evaluate_command(
    predictions: Annotated[Path, typer.Argument(help="Predictions CSV written by clip_apply.", dir_okay=False)],
    truth: Annotated[Path, typer.Argument(help="Ground truth CSV with a GT or fine_gt column.", dir_okay=False)],
    confused: Annotated[int, typer.Option("--confused", min=0, help="Most-confused pairs to list.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
) -> None:
    """Match predictions to ground-truth lesions (box IoU > 0.5) and report top-1 accuracy."""
    from models.evaluate import EvaluationError, evaluate

    for path in (predictions, truth):
        if not path.is_file():
            fail(f"{path} not found")
    try:
        report = evaluate(predictions, truth)
    except EvaluationError as exc:
        fail(str(exc))

    if as_json:
        typer.echo(json.dumps(report.as_dict(confused)))
        return
    print_report(report, confused)


def percent(correct: int, total: int) -> str:
    """Return ``'93.75 % (15/16)'``, or ``'n/a'`` without lesions."""
    return f"{100 * correct / total:.2f} % ({correct}/{total})" if total else "n/a"


def print_report(report, confused: int) -> None:
    """Print the accuracy tables with rich."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"predictions {report.predictions}, ground-truth lesions {report.truths}, "
        f"matched (IoU > 0.5) {report.matched}"
    )
    console.print(f"[bold]top-1 accuracy: {percent(report.overall.correct, report.overall.total)}")

    for title, groups in (("level", report.levels), ("region", report.regions)):
        if not groups:
            continue
        table = Table(title=f"top-1 accuracy per {title}")
        table.add_column(title)
        table.add_column("accuracy", justify="right")
        for name, accuracy in sorted(groups.items()):
            table.add_row(name, percent(accuracy.correct, accuracy.total))
        console.print(table)

    pairs = report.most_confused(confused)
    if pairs:
        table = Table(title="most-confused pairs")
        for column in ("truth", "prediction", "errors"):
            table.add_column(column, justify="right" if column == "errors" else "left")
        for truth, prediction, errors in pairs:
            table.add_row(truth, prediction, str(errors))
        console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``hclal evaluate`` to ``app``."""
    app.command("evaluate")(evaluate_command)
