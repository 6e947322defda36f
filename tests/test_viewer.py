"""The worker's findings in a real web viewer: OHIF 3.13 over Orthanc DICOMweb in Chromium.

The test stores a CT series, its SEG and the SR in Orthanc and opens the study in
OHIF in headless Chromium. It loads the SR series and checks that the CT rendered
and that each lesion's outline is labelled with its Finding Site on its slice.
Orthanc, the web server and Chromium run in a network namespace with only the
loopback interface (``unshare -n``). The screenshot is kept as a test artifact in
``$HCLAL_TEST_ARTIFACTS/viewer`` (default ``artifacts/viewer`` at the repository root).

A faster test checks the web server alone: OHIF routes, MIME types and the
DICOMweb proxy to a real Orthanc.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

from tests.viewer.fixtures import (
    OUTLINE_POINTS,
    PIXEL_SPACING_MM,
    SR_SERIES_NUMBER,
    PhantomStudy,
    write_phantom_study,
)
from tests.viewer.server import LOOPBACK, start_viewer_server
from tests.viewer.session import free_port, running_orthanc, upload_instances

REPOSITORY = Path(__file__).resolve().parent.parent
SETUP_SCRIPT = REPOSITORY / "tests" / "viewer" / "setup.sh"
NPM_REGISTRY_UNREACHABLE = 3
FINDING_SITE_CONCEPT = "363698007"
SESSION_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def viewer_cache() -> Path:
    """The cached OHIF build and playwright-core, fetched by setup.sh when missing."""
    completed = subprocess.run(
        [str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
    )
    if completed.returncode == NPM_REGISTRY_UNREACHABLE:
        pytest.skip(f"the npm registry is unreachable, so OHIF cannot be fetched: {completed.stderr}")
    assert completed.returncode == 0, f"tests/viewer/setup.sh failed:\n{completed.stderr}"
    return Path(completed.stdout.strip().splitlines()[-1])


@pytest.fixture
def artifacts_dir() -> Path:
    """The folder that keeps the screenshot and summary after the test."""
    root = Path(os.environ.get("HCLAL_TEST_ARTIFACTS", REPOSITORY / "artifacts"))
    folder = root / "viewer"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def regular_polygon_area_mm2(radius_px: int) -> float:
    """Area of the SR outline, a regular polygon inscribed in the lesion's circle, in mm2.

    The SR stores it rounded to 0.1 mm2.
    """
    n = OUTLINE_POINTS
    area_px = n / 2 * radius_px**2 * math.sin(2 * math.pi / n)
    return round(area_px * PIXEL_SPACING_MM**2, 1)


def run_viewer_session(
    cache: Path, study: PhantomStudy, sr_series_number: int, out: Path
) -> subprocess.CompletedProcess:
    """Run tests.viewer.session inside ``unshare -n`` with only loopback up."""
    session = [
        sys.executable, "-m", "tests.viewer.session",
        "--cache", str(cache),
        "--out", str(out),
        "--study-uid", study.study_instance_uid,
        "--sr-series-number", str(sr_series_number),
    ]
    for lesion in study.lesions:
        session += ["--expect-site", lesion.finding_site.meaning]
    session += [str(path) for path in [*study.ct_paths, study.seg_path, study.sr_path]]

    inner = "ip link set lo up && exec " + shlex.join(session)
    return subprocess.run(
        ["unshare", "--net", "sh", "-c", inner],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=SESSION_TIMEOUT_S,
        check=False,
    )


def fetch(url: str) -> tuple[Message, bytes]:
    """GET ``url`` and return the response headers and body."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers, response.read()


@pytest.mark.orthanc
def test_server_proxies_dicomweb(tmp_path: Path) -> None:
    study = write_phantom_study(tmp_path / "study")
    root = tmp_path / "ohif"
    root.mkdir()
    (root / "index.html").write_text("<html>OHIF</html>")
    (root / "decoder.wasm").write_bytes(b"\0asm")

    with running_orthanc(tmp_path / "orthanc") as orthanc_port:
        upload_instances(orthanc_port, [*study.ct_paths, study.seg_path, study.sr_path])
        web_port = free_port()
        server = start_viewer_server(root, web_port, orthanc_port)
        try:
            base = f"http://{LOOPBACK}:{web_port}"
            route_body = fetch(f"{base}/viewer?StudyInstanceUIDs=1.2.3")[1]
            wasm_headers = fetch(f"{base}/decoder.wasm")[0]
            studies_headers, studies_body = fetch(f"{base}/dicom-web/studies")
            series_body = fetch(f"{base}/dicom-web/studies/{study.study_instance_uid}/series")[1]
        finally:
            server.shutdown()
            server.server_close()

    assert route_body == b"<html>OHIF</html>"
    assert wasm_headers["Content-Type"] == "application/wasm"
    assert studies_headers["Content-Type"].startswith("application/dicom+json")
    study_uids = [item["0020000D"]["Value"][0] for item in json.loads(studies_body)]
    assert study_uids == [study.study_instance_uid]
    series = json.loads(series_body)
    modalities = sorted(item["00080060"]["Value"][0] for item in series)
    assert modalities == ["CT", "SEG", "SR"]


@pytest.mark.browser
@pytest.mark.orthanc
@pytest.mark.slow
def test_ohif_labels_finding_sites(
    viewer_cache: Path, tmp_path: Path, artifacts_dir: Path
) -> None:
    study = write_phantom_study(tmp_path / "study")

    completed = run_viewer_session(viewer_cache, study, SR_SERIES_NUMBER, artifacts_dir)

    summary_path = artifacts_dir / "summary.json"
    assert summary_path.is_file(), f"no summary.json; session output:\n{completed.stderr[-4000:]}"
    summary = json.loads(summary_path.read_text())
    assert summary["blockedRequests"] == []
    assert summary["pageErrors"] == []
    assert summary["srThumbnailFound"], summary["thumbnails"]
    assert "Phantom lesion sites" in "\n".join(summary["thumbnails"])

    # The CT rendered: the water cylinder covers about half the viewport in many grey levels.
    assert summary["ct"]["found"]
    assert summary["ct"]["greyLevels"] > 8
    assert 0.2 < summary["ct"]["nonBlackFraction"] < 0.9

    # Each lesion's outline is labelled with its Finding Site and area on its own slice.
    labels_by_slice = {
        visit["slice"].split()[0]: "\n".join(visit["texts"]) for visit in summary["measurements"]
    }
    for lesion in study.lesions:
        instance = f"I:{lesion.centre[0] + 1}"
        assert instance in labels_by_slice, f"{lesion.label} slice not visited: {labels_by_slice}"
        lines = labels_by_slice[instance].split("\n")
        assert f"{FINDING_SITE_CONCEPT}: {lesion.finding_site.meaning}" in lines
        assert f"Area: {regular_polygon_area_mm2(lesion.radius):.2f} mm2" in lines

    assert summary["missingSites"] == []
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert (artifacts_dir / "ohif-findings.png").stat().st_size > 10_000
