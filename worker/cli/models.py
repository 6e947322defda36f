"""``hclal models``: import published HCL-AL checkpoints and show checkpoint metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from worker.cli.common import fail

models_app = typer.Typer(help="Import and inspect model checkpoints.", no_args_is_help=True)


@models_app.command("import-hclal")
def import_hclal_command(
    model_dir: Annotated[
        Path, typer.Argument(help="Folder with the published params.pth.", file_okay=False)
    ],
    library: Annotated[Path, typer.Option("--library", help="HCL-AL library JSON (region, coarse and fine names).")],
    descriptions: Annotated[
        Path, typer.Option("--descriptions", help="HCL-AL descriptions JSON (name to sentence).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output checkpoint folder.", file_okay=False)],
    level: Annotated[
        Optional[str],
        typer.Option("--level", help="coarse or fine; default: from the published crop sizes."),
    ] = None,
    trust_pickle: Annotated[
        bool,
        typer.Option(
            "--trust-pickle",
            help="Allow arbitrary unpickling of params.pth, which can run code; only for trusted files.",
        ),
    ] = False,
) -> None:
    """Convert a published HCL-AL model into a checkpoint mapped onto our coded sites."""
    from models.checkpoint import CheckpointError, import_hclal, prompts_from_hclal_import
    from models.networks.tokenizer import VocabularyNotFoundError
    from models.vocabulary import default_vocabulary
    from models.vocabulary.hclal_import import HclalImportError, import_hclal_files

    vocabulary = default_vocabulary()
    try:
        mapped = import_hclal_files(library, descriptions, vocabulary)
    except HclalImportError as exc:
        fail(str(exc))
    typer.echo(mapped.summary())
    for line in mapped.unmatched_lines():
        typer.echo(f"  {line}", err=True)

    try:
        metadata = import_hclal(
            model_dir,
            prompts_from_hclal_import(mapped, vocabulary),
            out,
            vocabulary.vocabulary_id,
            vocabulary.vocabulary_hash,
            level=level,
            trust_pickle=trust_pickle,
        )
    except (CheckpointError, VocabularyNotFoundError) as exc:
        fail(str(exc))
    typer.echo(
        f"wrote {metadata.level} checkpoint {out}: {len(metadata.site_ids)} prompts, "
        f"{len(set(metadata.site_ids))} sites, crop {format_triplet(metadata.crop_size)} voxels at "
        f"{format_triplet(metadata.spacing)} mm"
    )


@models_app.command("show")
def show_command(
    path: Annotated[Path, typer.Argument(help="Checkpoint folder (with model.json).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print model.json as JSON.")] = False,
) -> None:
    """Print a checkpoint's metadata."""
    from rich.console import Console
    from rich.table import Table

    from models.checkpoint import CheckpointError, read_metadata

    try:
        metadata = read_metadata(path)
    except CheckpointError as exc:
        fail(str(exc))
    data = metadata.to_json()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return

    table = Table(title=f"{metadata.level} model {path}", show_header=False)
    rows = [
        ("architecture", f"{metadata.architecture}, width {metadata.width:g}, {metadata.embed_dim}-d embedding"),
        ("crop", f"{format_triplet(metadata.crop_size)} voxels at {format_triplet(metadata.spacing)} mm (x, y, z)"),
        ("scales", ", ".join(f"{scale:g} ({format_triplet(tuple(v * scale for v in metadata.spacing))} mm)"
                             for scale in metadata.scales)),
        ("channels", ", ".join(metadata.channels)),
        ("interpolation", ", ".join(metadata.interpolation)),
        ("normalizers", "; ".join(format_normalizer(n) for n in data["normalizers"])),
        ("logit scale", f"{metadata.logit_scale:g}"),
        ("vocabulary", f"{metadata.vocabulary_id} (sha256 {metadata.vocabulary_sha256[:12]})"),
        ("prompts", f"{len(metadata.site_ids)} rows for {len(set(metadata.site_ids))} sites"),
        ("text encoder", metadata.text_encoder or "-"),
        ("training", json.dumps(metadata.training) if metadata.training else "-"),
        ("source", json.dumps({k: v for k, v in metadata.source.items() if k != "hclal_names"}) or "-"),
        ("version", str(metadata.version)),
        ("created", metadata.created or "-"),
        ("weights sha256", metadata.weights_sha256 or "-"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


def format_triplet(values: tuple[float, ...]) -> str:
    """Return ``a x b x c`` with trailing zeros removed."""
    return " x ".join(f"{value:g}" for value in values)


def format_normalizer(normalizer: dict[str, object] | None) -> str:
    """Return one channel's normaliser as ``(v - mean) / stddev``, or ``none``."""
    if normalizer is None:
        return "none"
    clip = ", clipped to [-1, 1]" if normalizer["clip"] else ""
    return f"(v - {normalizer['mean']:g}) / {normalizer['stddev']:g}{clip}"


def register(app: typer.Typer) -> None:
    """Add ``hclal models`` to ``app``."""
    app.add_typer(models_app, name="models")
