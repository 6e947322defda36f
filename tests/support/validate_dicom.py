"""Validate DICOM files with the standard's reference checkers.

Every file goes through ``dciodvfy`` (dicom3tools). Structured Report files (Modality
``SR``) also go through ``dsrdump`` (DCMTK) and PixelMed's ``DicomSRValidator``. A file
fails when any of these reports an error; warnings are kept in the report but pass.

Use from tests::

    ok, report = validate(paths)
    assert ok, report

or from the shell: ``python -m tests.support.validate_dicom FILE...`` (exit status 0 when
every file passes, 1 otherwise).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pydicom

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
# PixelMed evaluates the SR templates with XPath; the JDK's default limits on expression
# size stop it on large templates such as TID 1500.
PIXELMED_COMMAND = [
    "java",
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
    "-cp",
    str(PIXELMED_JAR),
    "com.pixelmed.validate.DicomSRValidator",
]
TIMEOUT_S = 120


def validate(paths: Iterable[Path | str]) -> tuple[bool, str]:
    """Validate every file in ``paths``; return whether all passed and the combined report."""
    ok = True
    sections = []
    for path in map(Path, paths):
        file_ok, lines = validate_file(path)
        ok = ok and file_ok
        sections.append(f"{'PASS' if file_ok else 'FAIL'} {path}\n" + "".join(f"  {line}\n" for line in lines))
    if not sections:
        return False, "no files given\n"
    return ok, "".join(sections)


def validate_file(path: Path) -> tuple[bool, list[str]]:
    """Validate one file; return whether it passed and the validators' output lines."""
    if not path.is_file():
        return False, [f"error: {path} not found"]
    ok, lines = _run_dciodvfy(path)
    if _is_structured_report(path):
        for check in (_run_dsrdump, _run_pixelmed):
            check_ok, check_lines = check(path)
            ok = ok and check_ok
            lines += check_lines
    return ok, lines


def _is_structured_report(path: Path) -> bool:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality") == "SR"
    except Exception:  # noqa: BLE001 - an unreadable file is reported by dciodvfy
        return False


def _run(command: list[str], tool: str) -> tuple[int | None, list[str]]:
    if shutil.which(command[0]) is None:
        return None, [f"error: {tool} not installed ({command[0]} not on PATH)"]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return None, [f"error: {tool} timed out after {TIMEOUT_S} s"]
    output = (completed.stdout + completed.stderr).splitlines()
    return completed.returncode, [f"{tool}: {line}" for line in output if line.strip()]


def _run_dciodvfy(path: Path) -> tuple[bool, list[str]]:
    returncode, lines = _run(["dciodvfy", str(path)], "dciodvfy")
    errors = [line for line in lines if line.removeprefix("dciodvfy: ").startswith("Error")]
    return returncode is not None and not errors, lines


def _run_dsrdump(path: Path) -> tuple[bool, list[str]]:
    returncode, lines = _run(["dsrdump", "--quiet", str(path)], "dsrdump")
    messages = [line for line in lines if line.removeprefix("dsrdump: ").startswith(("E:", "F:", "W:"))]
    errors = [line for line in messages if not line.removeprefix("dsrdump: ").startswith("W:")]
    return returncode == 0 and not errors, messages


def _run_pixelmed(path: Path) -> tuple[bool, list[str]]:
    if not PIXELMED_JAR.is_file():
        return False, [f"error: PixelMed not installed ({PIXELMED_JAR} not found)"]
    returncode, lines = _run([*PIXELMED_COMMAND, str(path)], "DicomSRValidator")
    errors = [line for line in lines if line.removeprefix("DicomSRValidator: ").startswith("Error")]
    return returncode is not None and not errors, lines


def main(argv: list[str]) -> int:
    """Validate the files named on the command line; return the exit status."""
    if not argv:
        print("usage: python -m tests.support.validate_dicom FILE...", file=sys.stderr)
        return 2
    ok, report = validate(argv)
    print(report, end="")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
