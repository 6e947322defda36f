"""Invalid settings given to ``hclal scp``: one error line and a non-zero exit, no traceback.

The README promises that an invalid value stops the process with one message
naming the variable, the value and the fix.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.receiver import free_port, scp_command

INVALID_SETTINGS = {
    # A list setting written as a plain word instead of a JSON list.
    "HCLAL_ALLOWED_CALLING_AE_TITLES": "PACS",
    "HCLAL_ALLOWED_SOURCE_ADDRESSES": '["10.0.0.300"]',
    # A certificate without its private key.
    "HCLAL_TLS_CERTIFICATE": "/nonexistent/worker.pem",
}


@pytest.mark.parametrize("variable", list(INVALID_SETTINGS))
def test_scp_invalid_setting_one_line(tmp_path: Path, variable: str) -> None:
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("HCLAL_")
    }
    environment["HCLAL_DATA_DIR"] = str(tmp_path / "data")
    environment[variable] = INVALID_SETTINGS[variable]
    repository = Path(__file__).resolve().parents[1]

    try:
        result = subprocess.run(
            scp_command(free_port(), "HCLAL"),
            cwd=repository,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hclal scp started with {variable}={INVALID_SETTINGS[variable]}: {exc}")

    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert last_line.startswith("error:"), last_line
    assert variable in last_line
