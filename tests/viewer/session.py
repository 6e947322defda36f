"""One viewer check: Orthanc, the web server and Chromium with OHIF, all on 127.0.0.1.

Run it inside a network namespace that has only the loopback interface, so that
nothing it starts can reach another host::

    unshare -n sh -c 'ip link set lo up && exec python -m tests.viewer.session \\
        --cache "$(tests/viewer/setup.sh)" --out artifacts/viewer \\
        --study-uid 1.2.3 --sr-series-number 9001 --expect-site Liver --expect-site Spleen \\
        files/*.dcm'

It starts Orthanc with its DICOMweb plugin on a fresh database, uploads the files
with ``POST /instances``, serves OHIF with a DICOMweb proxy, runs ``open_sr.js`` in
Node with playwright-core, and stops everything it started by PID. The browser
script writes ``summary.json`` and one ``ohif-sr-<SeriesNumber>.png`` per SR to
``--out``; the exit status is the browser script's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.viewer.server import LOOPBACK, start_viewer_server

logger = logging.getLogger(__name__)

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
BROWSER_SCRIPT = Path(__file__).with_name("open_sr.js")
# The browser script launches this executable; playwright-core never downloads one.
CHROMIUM = "/usr/bin/chromium"
ORTHANC_START_TIMEOUT_S = 30.0
BROWSER_TIMEOUT_S = 150.0
SESSION_TIMEOUT_S = 240.0
REPOSITORY = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = Path(__file__).with_name("setup.sh")
# Exit status of setup.sh when the npm registry cannot be reached.
SETUP_REGISTRY_UNREACHABLE = 3


class RegistryUnreachableError(RuntimeError):
    """setup.sh could not reach the npm registry, so OHIF could not be fetched."""


def prepare_viewer_cache() -> Path:
    """Run ``setup.sh`` (a no-op when the cache is complete) and return the cache folder.

    Raises
    ------
    RegistryUnreachableError
        If the cache is missing and the npm registry cannot be reached.
    RuntimeError
        If ``setup.sh`` fails for another reason; the message has its output.
    """
    completed = subprocess.run(
        [str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
    )
    if completed.returncode == SETUP_REGISTRY_UNREACHABLE:
        raise RegistryUnreachableError(completed.stderr.strip())
    if completed.returncode != 0:
        raise RuntimeError(f"{SETUP_SCRIPT} failed ({completed.returncode}):\n{completed.stderr}")
    return Path(completed.stdout.strip().splitlines()[-1])


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def write_orthanc_config(folder: Path, http_port: int) -> Path:
    """Write an Orthanc 1.10 configuration: HTTP on loopback only, no DICOM port."""
    config = {
        "Name": "HCLAL-VIEWER-TEST",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                     "WadoRoot": "/wado", "Ssl": False, "StudiesMetadata": "Full",
                     "SeriesMetadata": "Full"},
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def http_request(url: str, data: bytes | None = None, timeout: float = 10.0) -> bytes:
    """Send a GET (or a POST when ``data`` is given) to a loopback URL and return the body."""
    if not url.startswith(f"http://{LOOPBACK}:"):
        raise ValueError(f"request to {url} rejected: only http://{LOOPBACK} is allowed")
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


@contextmanager
def running_orthanc(folder: Path) -> Iterator[int]:
    """Start Orthanc with the DICOMweb plugin, yield its HTTP port, stop it by PID."""
    for required in (ORTHANC, DICOMWEB_PLUGIN):
        if not Path(required).exists():
            raise FileNotFoundError(
                f"{required} is missing; install the Debian packages orthanc and orthanc-dicomweb"
            )

    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = write_orthanc_config(folder, port)
    log_path = folder / "orthanc.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [ORTHANC, "--logdir=" + str(folder), str(config)], stdout=log, stderr=log
        )
    try:
        wait_for_orthanc(port, process, log_path)
        logger.info("Orthanc PID %d on http://%s:%d", process.pid, LOOPBACK, port)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        logger.info("Orthanc PID %d stopped", process.pid)


def wait_for_orthanc(port: int, process: subprocess.Popen, log_path: Path) -> None:
    """Wait until Orthanc responds to ``GET /system``; raise with its log if it exits or hangs."""
    deadline = time.monotonic() + ORTHANC_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"Orthanc exited with status {process.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        try:
            http_request(f"http://{LOOPBACK}:{port}/system", timeout=1.0)
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise TimeoutError(f"Orthanc did not respond on port {port} within {ORTHANC_START_TIMEOUT_S} s")


def upload_instances(orthanc_port: int, paths: list[Path]) -> None:
    """Store each DICOM file in Orthanc with ``POST /instances``."""
    url = f"http://{LOOPBACK}:{orthanc_port}/instances"
    for path in paths:
        reply = json.loads(http_request(url, data=path.read_bytes()))
        if reply.get("Status") not in ("Success", "AlreadyStored"):
            raise RuntimeError(f"Orthanc rejected {path.name}: {reply}")
    logger.info("uploaded %d instances to Orthanc", len(paths))


def run_browser(cache: Path, settings: dict, out: Path) -> int:
    """Run ``open_sr.js`` with ``settings`` as JSON; return its exit status."""
    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing; install the Debian package chromium")
    if not (cache / "node_modules" / "playwright-core").is_dir():
        raise FileNotFoundError(f"{cache} has no playwright-core; run tests/viewer/setup.sh")

    settings_path = out / "browser-settings.json"
    settings_path.write_text(json.dumps(settings, indent=2))
    environment = {**os.environ, "NODE_PATH": str(cache / "node_modules")}
    command = ["node", str(BROWSER_SCRIPT), str(settings_path)]
    try:
        completed = subprocess.run(command, env=environment, timeout=BROWSER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        logger.error("the browser script ran past %.0f s and was stopped", BROWSER_TIMEOUT_S)
        return 124
    return completed.returncode


def check_loopback_only() -> None:
    """Raise unless the only network interface is loopback, as inside ``unshare -n``."""
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if interfaces != ["lo"]:
        raise RuntimeError(
            f"network interfaces {interfaces} found; run this inside a loopback-only namespace: "
            "unshare -n sh -c 'ip link set lo up && exec python -m tests.viewer.session ...'"
        )


def run_session(arguments: argparse.Namespace) -> int:
    """Start the servers, upload, run the browser script and stop everything."""
    check_loopback_only()
    arguments.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hclal-viewer-"))
    try:
        with running_orthanc(work) as orthanc_port:
            upload_instances(orthanc_port, arguments.files)

            web_port = free_port()
            server = start_viewer_server(arguments.cache / "ohif", web_port, orthanc_port)
            try:
                settings = {
                    "baseUrl": f"http://{LOOPBACK}:{web_port}",
                    "studyInstanceUid": arguments.study_uid,
                    "srSeriesNumbers": arguments.sr_series_number,
                    "expectedSites": arguments.expect_site,
                    "outDir": str(arguments.out.resolve()),
                    "userDataDir": str(work / "chromium-profile"),
                }
                return run_browser(arguments.cache, settings, arguments.out)
            finally:
                server.shutdown()
                server.server_close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_isolated_session(
    cache: Path,
    study_instance_uid: str,
    files: list[Path],
    sr_series_numbers: list[int],
    expected_sites: list[str],
    out: Path,
) -> tuple[subprocess.CompletedProcess, dict | None]:
    """Run a session in a new network namespace (``unshare -n``).

    Returns the completed process and the browser script's summary, or None when the
    session ended before the browser script wrote one (the process output says why).
    """
    command = [
        sys.executable, "-m", "tests.viewer.session",
        "--cache", str(cache),
        "--out", str(out),
        "--study-uid", study_instance_uid,
    ]
    for series_number in sr_series_numbers:
        command += ["--sr-series-number", str(series_number)]
    for site in expected_sites:
        command += ["--expect-site", site]
    command += [str(path) for path in files]

    # Without root, a user namespace (--map-root-user) grants the right to create
    # the network namespace, where the kernel allows unprivileged user namespaces.
    # NOTE: only the namespace set-up was tried without root, not a whole session.
    unshare = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--map-root-user", "--net"]
    inner = "ip link set lo up && exec " + shlex.join(command)
    completed = subprocess.run(
        [*unshare, "sh", "-c", inner],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=SESSION_TIMEOUT_S,
        check=False,
    )
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    return completed, summary


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, required=True,
                        help="folder printed by tests/viewer/setup.sh")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for summary.json and the screenshots")
    parser.add_argument("--study-uid", required=True, help="StudyInstanceUID to open")
    parser.add_argument("--sr-series-number", type=int, action="append", required=True,
                        help="SeriesNumber of an SR series to open; repeat for several")
    parser.add_argument("--expect-site", action="append", default=[],
                        help="a Finding Site code meaning that must be drawn; repeat per lesion")
    parser.add_argument("files", type=Path, nargs="+", help="DICOM files to upload")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run_session(parse_arguments(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
