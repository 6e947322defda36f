"""Read a TID 1500 document back with dcmqi's ``tid1500reader`` (an independent SR parser)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def read_tid1500(path: Path, work_dir: Path) -> dict[str, Any]:
    """Read a TID 1500 document with dcmqi's ``tid1500reader`` and return its JSON.

    Raises
    ------
    RuntimeError
        If the reader fails or writes no JSON.
    """
    output = work_dir / f"{path.stem}-tid1500.json"
    completed = subprocess.run(
        ["tid1500reader", "--inputDICOM", str(path), "--outputMetadata", str(output)],
        capture_output=True, text=True, errors="replace", timeout=180, check=False,
    )
    if completed.returncode != 0 or not output.exists():
        raise RuntimeError(
            f"tid1500reader failed on {path} (exit {completed.returncode}):\n{completed.stdout}{completed.stderr}"
        )
    return json.loads(output.read_text())
