"""``hclal localize``: name the site of every SEG lesion of a study folder, offline."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from worker.cli.common import fail, settings_of

LOGGER = logging.getLogger(__name__)


def localize_command(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="Folder with the DICOM files of one study (CT, PET, SEG).")],
    model: Annotated[
        Optional[Path],
        typer.Option(
            "--model",
            help="Model folder with coarse/ and fine/ checkpoints, or one coarse checkpoint; "
            "default: HCLAL_COARSE_MODEL and HCLAL_FINE_MODEL, else the shipped demo model.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    per_segment: Annotated[
        bool,
        typer.Option("--per-segment", help="Treat each segment as one lesion, not each connected component."),
    ] = False,
) -> None:
    """Print the anatomical site of every lesion, without network or database."""
    from pydicom.errors import InvalidDicomError

    from dicom.study import load_study
    from models.checkpoint import CheckpointError
    from models.inference import Localizer
    from worker.cli.lesions import study_summary

    if not folder.is_dir():
        fail(f"{folder} is not a folder; pass the folder that holds the study's DICOM files")
    settings = settings_of(ctx)
    try:
        localizer = Localizer.from_model_dir(
            model, device=settings.device, top_k=settings.coarse_top_k, uncertain_below=settings.uncertain_below
        ) if model else Localizer.from_settings(settings)
    except (CheckpointError, ValueError) as exc:
        fail(f"cannot load the model: {exc}")

    try:
        study = load_study([folder], one_lesion_per_segment=per_segment)
    except (ValueError, InvalidDicomError, OSError) as exc:
        fail(str(exc))

    pet = study.pet if study.suv.factor is not None else None
    if study.pet is not None and pet is None:
        LOGGER.warning(
            "PET series %s has no SUV factor (%s); its channel is left empty", study.pet_series_uid, study.suv.reason
        )
    predictions = localizer.localize(study.ct, pet, study.lesions)

    summary = study_summary(study)
    for lesion, prediction in zip(summary["lesions"], predictions, strict=True):
        lesion.update(prediction.as_dict())
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        print_table(summary)


def print_table(summary: dict) -> None:
    """Print one row per lesion: segment, component, site, code, probability."""
    from rich.console import Console
    from rich.table import Table

    table = Table("segment", "comp.", "site", "code", "laterality", "probability", "note")
    for lesion in summary["lesions"]:
        code = lesion["site_code"]
        notes = [word for word, flag in (("uncertain", lesion["uncertain"]), ("coarse", lesion["coarse_only"])) if flag]
        table.add_row(
            str(lesion["segment_number"]),
            str(lesion["component"]),
            lesion["site_id"],
            f"{code['scheme']} {code['value']} {code['meaning']}",
            lesion["laterality"],
            f"{lesion['probability']:.3f}",
            ", ".join(notes),
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add ``hclal localize`` to ``app``."""
    app.command("localize")(localize_command)
