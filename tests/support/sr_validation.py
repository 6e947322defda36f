"""Run external DICOM validators on a Structured Report file.

- ``dciodvfy`` (dicom3tools): IOD and attribute checks; a line starting with
  "Error" fails.
- ``dsrdump`` (DCMTK): must read and render the document tree.
- PixelMed ``DicomSRValidator``: SR template checks (TID 1500 and below); a
  line starting with "Error" fails.
- ``tid1500reader`` (pip package dcmqi): reads a TID 1500 document into JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")

# PixelMed evaluates large XPath expressions on TID 1500, and the default JDK
# limits stop it part-way, so they are lifted.
PIXELMED_COMMAND = [
    "java",
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
    "-cp",
    str(PIXELMED_JAR),
    "com.pixelmed.validate.DicomSRValidator",
]


@dataclass(frozen=True)
class ValidatorResult:
    """Output of one validator run and the lines that count as errors."""

    tool: str
    returncode: int
    output: str
    errors: list[str]

    @property
    def ok(self) -> bool:
        """Whether the tool exited with 0 and printed no error line."""
        return self.returncode == 0 and not self.errors


def _run(tool: str, command: list[str], timeout: float = 180.0) -> ValidatorResult:
    completed = subprocess.run(
        command, capture_output=True, text=True, errors="replace", timeout=timeout, check=False
    )
    output = completed.stdout + completed.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    return ValidatorResult(tool, completed.returncode, output, errors)


def run_dciodvfy(path: Path) -> ValidatorResult:
    """Validate the IOD with dicom3tools' ``dciodvfy``."""
    return _run("dciodvfy", ["dciodvfy", str(path)])


def run_dsrdump(path: Path) -> ValidatorResult:
    """Render the document tree with DCMTK's ``dsrdump``."""
    return _run("dsrdump", ["/usr/bin/dsrdump", str(path)])


def run_pixelmed(path: Path) -> ValidatorResult:
    """Validate the SR templates with PixelMed's ``DicomSRValidator``."""
    return _run("pixelmed", [*PIXELMED_COMMAND, str(path)])


def validate_sr(path: Path) -> list[ValidatorResult]:
    """Run dciodvfy, dsrdump and PixelMed on ``path`` and return their results."""
    return [run_dciodvfy(path), run_dsrdump(path), run_pixelmed(path)]


def validators_available() -> bool:
    """Whether dciodvfy, dsrdump, java and the PixelMed jar are installed."""
    tools = ("dciodvfy", "/usr/bin/dsrdump", "java")
    return all(shutil.which(tool) for tool in tools) and PIXELMED_JAR.exists()


def read_tid1500(path: Path, work_dir: Path) -> dict[str, Any]:
    """Read a TID 1500 document with dcmqi's ``tid1500reader`` and return its JSON.

    Raises
    ------
    RuntimeError
        If the reader fails or writes no JSON.
    """
    output = work_dir / f"{path.stem}-tid1500.json"
    result = _run(
        "tid1500reader",
        ["tid1500reader", "--inputDICOM", str(path), "--outputMetadata", str(output)],
    )
    if result.returncode != 0 or not output.exists():
        raise RuntimeError(f"tid1500reader failed on {path} (exit {result.returncode}):\n{result.output}")
    return json.loads(output.read_text())
