"""Run a real Orthanc server for a test: a PACS that sends, receives and answers queries.

Orthanc 1.10 listens on every interface and has no bind-address option, so the
server gets ``"RemoteAccessAllowed": false`` (its REST API serves 127.0.0.1
only), free ports, a fresh folder for its database and storage, and only
modalities on 127.0.0.1. Use it as::

    server = start_orthanc(tmp_path, {"HCLAL": ("HCLAL", "127.0.0.1", port)})
    try:
        instance_id = server.upload(path)
        server.store_to_modality("HCLAL", [instance_id])
    finally:
        server.stop()
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.receiver import free_port

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost"})


class OrthancError(RuntimeError):
    """Orthanc did not start, or a REST call failed."""


@dataclass
class OrthancServer:
    """A running Orthanc process and the addresses of its REST API and DICOM server."""

    process: subprocess.Popen
    http_url: str
    dicom_port: int
    aet: str
    folder: Path

    def request(self, method: str, path: str, body: bytes | dict | list | None = None) -> Any:
        """Call the REST API and return the decoded JSON response (None if empty)."""
        data = json.dumps(body).encode() if isinstance(body, dict | list) else body
        request = urllib.request.Request(f"{self.http_url}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise OrthancError(
                f"{method} {path} failed with HTTP {exc.code}: {exc.read()[:500]!r}"
            ) from exc
        return json.loads(payload) if payload else None

    def upload(self, path: Path) -> str:
        """Upload a DICOM file (``POST /instances``) and return its Orthanc instance id."""
        response = self.request("POST", "/instances", Path(path).read_bytes())
        return response["ID"]

    def store_to_modality(self, name: str, resource_ids: list[str]) -> dict:
        """Send resources to a configured modality by C-STORE (``POST /modalities/{name}/store``).

        Orthanc responds after the association ends; a failed C-STORE raises :class:`OrthancError`.
        """
        return self.request(
            "POST", f"/modalities/{name}/store", {"Resources": resource_ids, "Synchronous": True}
        )

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL after 20 s) and wait for it to exit."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_orthanc(
    tmp_dir: Path,
    modalities: dict[str, tuple[str, str, int]],
    aet: str = "ORTHANC",
    extra_config: dict[str, Any] | None = None,
    timeout: float = 60.0,
) -> OrthancServer:
    """Start Orthanc in ``tmp_dir`` and wait until ``/system`` responds.

    Parameters
    ----------
    tmp_dir
        Fresh folder for the configuration, database, storage and log.
    modalities
        ``DicomModalities``: name -> ``(AE title, host, port)``; hosts must be 127.0.0.1.
    aet
        Orthanc's own AE title.
    extra_config
        More configuration keys, e.g. ``{"Plugins": [...]}``.

    Raises
    ------
    OrthancError
        If Orthanc is not installed, exits early or does not answer within ``timeout``.
    ValueError
        If a modality is not on 127.0.0.1.
    """
    binary = shutil.which("Orthanc")
    if binary is None:
        raise OrthancError("Orthanc is not installed (apt-get install orthanc)")
    for name, (_, host, _) in modalities.items():
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"modality {name} must be on 127.0.0.1, not {host}")

    folder = Path(tmp_dir) / "orthanc"
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "hclal-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": {name: list(entry) for name, entry in modalities.items()},
        "Plugins": [],
    }
    config.update(extra_config or {})
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))

    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen(
        [binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=folder
    )
    server = OrthancServer(process, f"http://127.0.0.1:{http_port}", dicom_port, aet, folder)
    try:
        _wait_until_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    finally:
        log.close()
    return server


def _wait_until_ready(server: OrthancServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = (server.folder / "orthanc.log").read_text(errors="replace")[-2000:]
            raise OrthancError(f"Orthanc exited with status {server.process.returncode}:\n{tail}")
        try:
            server.request("GET", "/system")
            return
        except (OSError, OrthancError):
            time.sleep(0.2)
    raise OrthancError(f"Orthanc did not respond on {server.http_url} within {timeout:.0f} s")
