"""``hclal lesions``: measure the SEG lesions of a study folder without network or database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from worker.cli.common import fail

if TYPE_CHECKING:
    from dicom.study import StudyInputs


def lesions_command(
    folder: Annotated[Path, typer.Argument(help="Folder with the DICOM files of one study (CT, PET, SEG).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    per_segment: Annotated[
        bool,
        typer.Option("--per-segment", help="Measure each segment as one lesion, not each connected component."),
    ] = False,
) -> None:
    """Print the volume, HU and SUV of every lesion in the study's SEG."""
    from pydicom.errors import InvalidDicomError

    from dicom.study import load_study

    if not folder.is_dir():
        fail(f"{folder} is not a folder; pass the folder that holds the study's DICOM files")
    try:
        study = load_study([folder], one_lesion_per_segment=per_segment)
    except (ValueError, InvalidDicomError, OSError) as exc:
        fail(str(exc))

    if as_json:
        typer.echo(json.dumps(study_summary(study)))
    else:
        _print_table(study)


def study_summary(study: StudyInputs) -> dict[str, Any]:
    """Return the JSON-ready summary of a loaded study."""
    suv: dict[str, Any] = {"factor": study.suv.factor}
    if study.suv.factor is None:
        suv["reason"] = study.suv.reason
    return {
        "ct_series_uid": study.ct_series_uid,
        "pet_series_uid": study.pet_series_uid,
        "suv": suv,
        "choices": study.choices,
        "lesions": [
            {
                "segment_number": lesion.segment_number,
                "segment_label": lesion.segment_label,
                "component": lesion.component,
                "centroid_mm": list(lesion.centroid_mm),
                "bbox_mm": list(lesion.bbox_mm),
                "volume_ml": lesion.volume_ml,
                "voxels": lesion.voxels,
                "suv_max": lesion.suv_max,
                "suv_mean": lesion.suv_mean,
                "suv_peak": lesion.suv_peak,
                "hu_mean": lesion.hu_mean,
            }
            for lesion in study.lesions
        ],
    }


def _print_table(study: StudyInputs) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"CT series  {study.ct_series_uid}")
    console.print(f"PET series {study.pet_series_uid or '(none)'}")
    if study.suv.factor is None:
        console.print(f"SUV        not computed: {study.suv.reason}")
    else:
        console.print(f"SUV factor {study.suv.factor:.6g}")

    table = Table("segment", "label", "comp.", "centroid LPS mm", "ml", "voxels", "SUVmax", "SUVmean", "SUVpeak", "HU mean")
    for lesion in study.lesions:
        table.add_row(
            str(lesion.segment_number),
            lesion.segment_label,
            str(lesion.component),
            ", ".join(f"{value:.1f}" for value in lesion.centroid_mm),
            f"{lesion.volume_ml:.2f}",
            str(lesion.voxels),
            _number(lesion.suv_max),
            _number(lesion.suv_mean),
            _number(lesion.suv_peak),
            _number(lesion.hu_mean, digits=1),
        )
    console.print(table)


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def register(app: typer.Typer) -> None:
    """Add ``hclal lesions`` to ``app``."""
    app.command("lesions")(lesions_command)
