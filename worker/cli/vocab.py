"""``hclal vocab``: print, check, export and import the anatomical site vocabulary."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Optional, TextIO

import typer

from worker.cli.common import fail

vocab_app = typer.Typer(help="Inspect the coded anatomical site vocabulary.", no_args_is_help=True)

VocabularyOption = Annotated[
    Optional[Path],
    typer.Option(
        "--vocabulary",
        help="Vocabulary JSON file to use instead of the built-in one.",
        dir_okay=False,
    ),
]

EXPORT_COLUMNS = (
    "site_id",
    "region",
    "coarse",
    "fine",
    "name",
    "laterality",
    "code_value",
    "code_scheme",
    "code_meaning",
    "modifier_value",
    "modifier_meaning",
)


def _load(path: Path | None):  # noqa: ANN202 - the return type imports lazily
    from models.vocabulary import VocabularyError, default_vocabulary, load_vocabulary

    try:
        return default_vocabulary() if path is None else load_vocabulary(path)
    except VocabularyError as exc:
        fail(f"{exc}; fix the file or omit --vocabulary to use the built-in vocabulary")


@vocab_app.command("show")
def show_command(
    vocabulary_file: VocabularyOption = None,
    region: Annotated[Optional[str], typer.Option(help="Print only this region id.")] = None,
    coarse_only: Annotated[bool, typer.Option("--coarse-only", help="Omit the fine sites.")] = False,
) -> None:
    """Print the region, coarse and fine site tree with site ids and codes."""
    vocabulary = _load(vocabulary_file)
    region_ids = [r.id for r in vocabulary.regions]
    if region is not None and region not in region_ids:
        fail(f"region {region!r} not found; regions are {', '.join(region_ids)}")

    typer.echo(
        f"{vocabulary.vocabulary_id} {vocabulary.version} (sha256 {vocabulary.vocabulary_hash[:16]}): "
        f"{len(vocabulary.coarse_sites)} coarse, {len(vocabulary.fine_sites)} fine sites"
    )
    for entry in vocabulary.regions:
        if region is not None and entry.id != region:
            continue
        typer.echo(f"{entry.id}  {entry.name}")
        for coarse_id in entry.coarse_ids:
            typer.echo(f"  {_site_line(vocabulary.site(coarse_id))}")
            if not coarse_only:
                for fine in vocabulary.children(coarse_id):
                    typer.echo(f"    {_site_line(fine)}")


def _site_line(site) -> str:  # noqa: ANN001 - Site imports lazily
    code = f"{site.code.scheme} {site.code.value} {site.code.meaning}"
    if site.modifier is not None:
        code += f" + {site.modifier.meaning}"
    if site.laterality != "none":
        code += f" ({site.laterality})"
    return f"{site.id}  {site.name}  [{code}]"


@vocab_app.command("check")
def check_command(vocabulary_file: VocabularyOption = None) -> None:
    """Check ids, tree, laterality and every code against pydicom's code tables.

    Exits with status 1 and lists the problems if there is any.
    """
    from models.vocabulary.check import check_vocabulary

    vocabulary = _load(vocabulary_file)
    problems = check_vocabulary(vocabulary)
    for problem in problems:
        typer.echo(problem, err=True)
    if problems:
        fail(f"{len(problems)} problem(s) in {vocabulary.vocabulary_id} {vocabulary.version}")
    typer.echo(
        f"{vocabulary.vocabulary_id} {vocabulary.version}: {len(vocabulary.coarse_sites)} coarse and "
        f"{len(vocabulary.fine_sites)} fine sites, no problems"
    )


@vocab_app.command("export")
def export_command(
    vocabulary_file: VocabularyOption = None,
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="CSV file to write; standard output when omitted.", dir_okay=False),
    ] = None,
) -> None:
    """Write one CSV row per fine (leaf) site with its region, coarse site and code."""
    vocabulary = _load(vocabulary_file)
    if output is None:
        write_csv(vocabulary, sys.stdout)
        return
    with output.open("w", newline="", encoding="utf-8") as stream:
        write_csv(vocabulary, stream)
    typer.echo(f"wrote {len(vocabulary.fine_sites)} sites to {output}", err=True)


def write_csv(vocabulary, stream: TextIO) -> None:  # noqa: ANN001 - Vocabulary imports lazily
    """Write the leaf-site table of ``vocabulary`` to ``stream`` as CSV."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    for fine in vocabulary.fine_sites:
        modifier = fine.modifier
        writer.writerow(
            [
                fine.id,
                fine.region,
                fine.parent,
                fine.id,
                fine.name,
                fine.laterality,
                fine.code.value,
                fine.code.scheme,
                fine.code.meaning,
                modifier.value if modifier else "",
                modifier.meaning if modifier else "",
            ]
        )


@vocab_app.command("import-hclal")
def import_hclal_command(
    library: Annotated[Path, typer.Argument(help="HCL-AL library JSON: coarse names to lists of fine names.", dir_okay=False)],
    descriptions: Annotated[
        Path, typer.Argument(help="HCL-AL descriptions JSON: names to descriptive sentences.", dir_okay=False)
    ],
    vocabulary_file: VocabularyOption = None,
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="Write the name-to-site-id mapping to this JSON file.", dir_okay=False),
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit with status 1 if any name is unmatched.")] = False,
) -> None:
    """Map the names of published HCL-AL vocabulary files onto this vocabulary's site ids."""
    from models.vocabulary.hclal_import import HclalImportError, import_hclal_files

    vocabulary = _load(vocabulary_file)
    try:
        result = import_hclal_files(library, descriptions, vocabulary)
    except HclalImportError as exc:
        fail(str(exc))

    typer.echo(result.summary())
    for line in result.unmatched_lines():
        typer.echo(line, err=True)
    if output is not None:
        output.write_text(json.dumps(result.as_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        typer.echo(f"wrote the mapping to {output}", err=True)
    if strict and result.unmatched_count:
        fail(f"{result.unmatched_count} name(s) unmatched; add them to the synonym table or rename them")


def register(app: typer.Typer) -> None:
    """Add ``hclal vocab`` to ``app``."""
    app.add_typer(vocab_app, name="vocab")
