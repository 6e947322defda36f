"""Locate the DCMTK command-line tools.

pynetdicom installs Python scripts named ``storescu``, ``storescp`` and
``findscu`` that can shadow DCMTK's programs on ``PATH``; these helpers find the
DCMTK binaries by the ``$dcmtk`` banner of ``--version``.
"""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path


@cache
def dcmtk_tool(name: str) -> str | None:
    """Return the path of DCMTK's ``name`` program, or None if DCMTK is not installed."""
    for folder in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]:
        candidate = Path(folder) / name
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        try:
            banner = subprocess.run(
                [str(candidate), "--version"], capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in banner.lower():
            return str(candidate)
    return None


def require_dcmtk_tool(name: str) -> str:
    """Return the path of DCMTK's ``name`` program or skip the calling test."""
    import pytest  # noqa: PLC0415

    path = dcmtk_tool(name)
    if path is None:
        pytest.skip(f"DCMTK {name} is not installed (apt-get install dcmtk)")
    return path
