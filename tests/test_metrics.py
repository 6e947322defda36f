"""Prometheus endpoints of ``hclal scp`` and ``hclal worker``, scraped over HTTP from real processes.

Each process runs as a subprocess so that its counters start at zero and the
test process's own registry does not mix in. Both use a Redis database number
of their own as the Celery broker, emptied after the test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from pydicom import uid as dicom_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, SegmentationStorage

from dicom.network.scp import STATUS_CANNOT_UNDERSTAND, STATUS_SUCCESS
from tests.conftest import REDIS_URL
from tests.support.dicom_factory import ct_series, segmentation
from tests.support.receiver import free_port
from tests.test_scu import stop_process

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_AE_TITLE = "METRICSSCU"
SCP_AE_TITLE = "METRICSSCP"
SCP_REDIS_DB = 13
WORKER_REDIS_DB = 14
START_TIMEOUT = 90.0

METRIC_FAMILIES = {
    "hclal_instances_received": "counter",
    "hclal_instances_rejected": "counter",
    "hclal_analyses": "counter",
    "hclal_deliveries": "counter",
    "hclal_stage_seconds": "histogram",
}


def redis_url(database: int) -> str:
    """Return the test Redis server's URL with ``database`` as its database number."""
    return f"{REDIS_URL.rsplit('/', 1)[0]}/{database}"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def wait_for_metrics(process: subprocess.Popen, port: int) -> str:
    """Return the first scrape that succeeds while ``process`` runs."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process exited with status {process.returncode} before serving metrics")
        try:
            return scrape(port)
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise AssertionError(f"nothing served http://127.0.0.1:{port}/metrics within {START_TIMEOUT:.0f} s")


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Map (sample name, labels) to value for every sample in a Prometheus text exposition."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return values


def families(text: str) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(text)}


@pytest.fixture
def scp_redis() -> Iterator[str]:
    url = redis_url(SCP_REDIS_DB)
    yield url
    redis.Redis.from_url(url).flushdb()


@pytest.fixture
def worker_redis() -> Iterator[str]:
    url = redis_url(WORKER_REDIS_DB)
    yield url
    redis.Redis.from_url(url).flushdb()


def environment(tmp_path: Path, broker_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "HCLAL_DATA_DIR": str(tmp_path / "data"),
        "HCLAL_DATABASE_URL": f"sqlite:///{tmp_path / 'metrics.sqlite3'}",
        "HCLAL_BROKER_URL": broker_url,
        **extra,
    }


@pytest.fixture
def scp_process(tmp_path: Path, scp_redis: str) -> Iterator[tuple[int, int]]:
    """Run ``hclal scp`` that accepts only ALLOWED_AE_TITLE; yield its DICOM and metrics ports."""
    port, metrics_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "worker", "scp", "--host", "127.0.0.1", "--port", str(port),
        "--ae-title", SCP_AE_TITLE, "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    extra = {"HCLAL_ALLOWED_CALLING_AE_TITLES": f'["{ALLOWED_AE_TITLE}"]'}
    log = (tmp_path / "scp.log").open("w")
    process = subprocess.Popen(command, cwd=ROOT, env=environment(tmp_path, scp_redis, **extra), stderr=log)
    try:
        wait_for_metrics(process, metrics_port)
        yield port, metrics_port
    finally:
        stop_process(process)
        log.close()


def test_scp_counts_received_and_rejected(scp_process: tuple[int, int]) -> None:
    port, metrics_port = scp_process
    ct = ct_series(3)
    seg = segmentation(ct)
    seg.StudyInstanceUID = ct[0].StudyInstanceUID
    invalid = ct_series(1, study_uid=ct[0].StudyInstanceUID)[0]
    invalid.PixelData = invalid.PixelData[:100]
    changed = ct_series(1)[0]
    changed.SOPInstanceUID = ct[0].SOPInstanceUID
    changed.StudyInstanceUID = ct[0].StudyInstanceUID
    changed.SeriesInstanceUID = ct[0].SeriesInstanceUID
    changed.PixelData = np.full(256, 7, dtype=np.int16).tobytes()

    intruder = AE(ae_title="INTRUDER")
    intruder.add_requested_context(CTImageStorage, dicom_uid.ExplicitVRLittleEndian)
    refused = intruder.associate("127.0.0.1", port, ae_title=SCP_AE_TITLE)

    sender = AE(ae_title=ALLOWED_AE_TITLE)
    sender.add_requested_context(CTImageStorage, dicom_uid.ExplicitVRLittleEndian)
    sender.add_requested_context(SegmentationStorage, dicom_uid.ExplicitVRLittleEndian)
    assoc = sender.associate("127.0.0.1", port, ae_title=SCP_AE_TITLE)
    assert assoc.is_established
    study_statuses = [int(assoc.send_c_store(ds).Status) for ds in [*ct, seg]]
    invalid_status = int(assoc.send_c_store(invalid).Status)
    duplicate_status = int(assoc.send_c_store(ct[1]).Status)
    conflict_status = int(assoc.send_c_store(changed).Status)
    assoc.release()

    values = samples(scrape(metrics_port))

    assert refused.is_rejected
    assert study_statuses == [STATUS_SUCCESS] * 4
    assert invalid_status == STATUS_CANNOT_UNDERSTAND
    assert duplicate_status == STATUS_SUCCESS
    assert conflict_status == STATUS_SUCCESS
    # The duplicate is acknowledged and kept, so it counts as received.
    assert values[("hclal_instances_received_total", frozenset({("modality", "CT")}))] == 4
    assert values[("hclal_instances_received_total", frozenset({("modality", "SEG")}))] == 1
    assert values[("hclal_instances_rejected_total", frozenset({("reason", "disallowed_ae")}))] == 1
    assert values[("hclal_instances_rejected_total", frozenset({("reason", "invalid")}))] == 1
    assert values[("hclal_instances_rejected_total", frozenset({("reason", "conflict")}))] == 1
    assert ("hclal_instances_rejected_total", frozenset({("reason", "undecodable")})) not in values
    assert values[("hclal_analyses_total", frozenset({("state", "queued")}))] == 1
    assert values[("hclal_stage_seconds_count", frozenset({("stage", "receive_to_complete")}))] == 1
    assert ("hclal_stage_seconds_count", frozenset({("stage", "complete_to_start")})) not in values


def test_scp_queues_complete_study_on_broker(scp_process: tuple[int, int], scp_redis: str) -> None:
    port, _ = scp_process
    ct = ct_series(2)
    seg = segmentation(ct)
    seg.StudyInstanceUID = ct[0].StudyInstanceUID
    sender = AE(ae_title=ALLOWED_AE_TITLE)
    sender.add_requested_context(CTImageStorage, dicom_uid.ExplicitVRLittleEndian)
    sender.add_requested_context(SegmentationStorage, dicom_uid.ExplicitVRLittleEndian)
    assoc = sender.associate("127.0.0.1", port, ae_title=SCP_AE_TITLE)
    statuses = [int(assoc.send_c_store(ds).Status) for ds in [*ct, seg]]
    assoc.release()

    assert statuses == [STATUS_SUCCESS] * 3
    assert redis.Redis.from_url(scp_redis).llen("localize") == 1


def test_worker_serves_metric_families(tmp_path: Path, worker_redis: str) -> None:
    metrics_port = free_port()
    command = [
        sys.executable, "-m", "worker", "worker", "--queues", "deliver", "--metrics-port", str(metrics_port),
        "--name", f"metrics-test-{metrics_port}@%h",
    ]  # fmt: skip
    log = (tmp_path / "worker.log").open("w")
    process = subprocess.Popen(command, cwd=ROOT, env=environment(tmp_path, worker_redis), stderr=log)
    try:
        text = wait_for_metrics(process, metrics_port)
    finally:
        stop_process(process)
        log.close()

    exposed = families(text)
    for name, kind in METRIC_FAMILIES.items():
        assert exposed.get(name) == kind, f"{name} missing or not a {kind}"


def test_scp_reports_metrics_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        taken = occupant.getsockname()[1]
        command = [
            sys.executable, "-m", "worker", "scp", "--host", "127.0.0.1", "--port", str(free_port()),
            "--metrics-port", str(taken),
        ]  # fmt: skip
        result = subprocess.run(
            command, cwd=ROOT, env=environment(tmp_path, ""), capture_output=True, text=True, timeout=120
        )

    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{taken}" in result.stderr
    assert "choose another --metrics-port" in result.stderr
    assert "listening on" not in result.stderr
