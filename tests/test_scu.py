"""C-STORE delivery of Structured Reports against real peers on 127.0.0.1.

Peers: DCMTK storescp, a pynetdicom SCP that returns chosen statuses, raw
sockets that reject or never respond to an association, and Orthanc.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select

from dicom.network.scu import (
    DeliveryAttempt,
    SendResult,
    classify_status,
    deliver_with_retries,
    find_instance,
    open_association,
    record_delivery,
    send_dataset,
)
from dicom.sr import SrSopClass, build_measurement_report
from worker.config import Destination, Settings, load_settings
from worker.db import session as db_session
from worker.db.models import Analysis, Delivery, DeliveryStatus, Report, Study
from tests.support.sr_inputs import make_report_inputs

HOST = "127.0.0.1"
STORESCP = "/usr/bin/storescp"
ORTHANC = shutil.which("Orthanc")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout} s")


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def report() -> Dataset:
    return build_measurement_report(make_report_inputs())


@pytest.fixture
def fast_settings(tmp_path: Path) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        network_timeout=5.0,
        delivery_backoff=0.05,
        delivery_max_attempts=3,
    )


class StatusScp:
    """pynetdicom Storage SCP that returns the given C-STORE statuses in turn."""

    def __init__(self, statuses: list[int], sop_classes: list[str], **ae_options) -> None:
        self.statuses = list(statuses)
        self.received: list[str] = []
        self.port = free_port()
        self.ae = AE(ae_title="STATUSSCP")
        for name, value in ae_options.items():
            setattr(self.ae, name, value)
        for sop_class in sop_classes:
            self.ae.add_supported_context(sop_class)
        self.server = self.ae.start_server(
            (HOST, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def _on_store(self, event: evt.Event) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    @property
    def destination(self) -> Destination:
        return Destination(ae_title="STATUSSCP", host=HOST, port=self.port)

    def stop(self) -> None:
        self.server.shutdown()
        self.ae.shutdown()


@pytest.fixture
def status_scp() -> Iterator[type[StatusScp]]:
    started: list[StatusScp] = []

    def start(statuses: list[int], sop_classes: list[str] | None = None, **ae_options) -> StatusScp:
        scp = StatusScp(statuses, sop_classes or [Comprehensive3DSRStorage], **ae_options)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


class RawPeer:
    """TCP server that replies to every association request with fixed bytes (or nothing)."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind((HOST, 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)
            header = connection.recv(6)
            length = int.from_bytes(header[2:6], "big") if len(header) == 6 else 0
            while length > 0:
                chunk = connection.recv(min(length, 65536))
                if not chunk:
                    break
                length -= len(chunk)
            if self.reply is not None:
                connection.sendall(self.reply)

    def stop(self) -> None:
        self.listener.close()
        for connection in self.connections:
            connection.close()


def associate_reject_pdu(result: int, source: int = 1, reason: int = 1) -> bytes:
    """Return an A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""
    return bytes([0x03, 0x00]) + (4).to_bytes(4, "big") + bytes([0x00, result, source, reason])


def encoded_body(dataset: Dataset) -> bytes:
    """Return the data set without file meta information in Explicit VR Little Endian."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_dataset(buffer, dataset)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0x0000, DeliveryStatus.SUCCESS),
        (0xB000, DeliveryStatus.WARNING),
        (0xB007, DeliveryStatus.WARNING),
        (0x0107, DeliveryStatus.WARNING),
        (0xA700, DeliveryStatus.TRANSIENT_FAILURE),
        (0xA7FF, DeliveryStatus.TRANSIENT_FAILURE),
        (0x0213, DeliveryStatus.TRANSIENT_FAILURE),
        (0xA900, DeliveryStatus.PERMANENT_FAILURE),
        (0xC000, DeliveryStatus.PERMANENT_FAILURE),
        (0xCFFF, DeliveryStatus.PERMANENT_FAILURE),
        (0x0122, DeliveryStatus.PERMANENT_FAILURE),
    ],
    ids=lambda value: f"{value:04X}" if isinstance(value, int) else value.value,
)
def test_classify_status(status: int, expected: DeliveryStatus) -> None:
    assert classify_status(status) is expected


@pytest.mark.dcmtk
def test_storescp_receives_same_bytes(tmp_path: Path, report: Dataset, fast_settings: Settings) -> None:
    output = tmp_path / "received"
    output.mkdir()
    port = free_port()
    # NOTE: storescp 3.6.7 has no option to bind one address, so it listens on
    # all interfaces for the few seconds of this test. The SCU targets 127.0.0.1.
    process = subprocess.Popen(
        [STORESCP, "-od", str(output), "-aet", "STORESCP", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        destination = Destination(ae_title="STORESCP", host=HOST, port=port)
        result = send_dataset(report, destination, fast_settings)
    finally:
        stop_process(process)

    assert result.status is DeliveryStatus.SUCCESS
    assert result.dicom_status == 0x0000
    assert result.delivered
    files = list(output.iterdir())
    assert len(files) == 1
    received = pydicom.dcmread(files[0])
    assert received.SOPInstanceUID == report.SOPInstanceUID
    assert received.file_meta.TransferSyntaxUID == report.file_meta.TransferSyntaxUID
    assert encoded_body(received) == encoded_body(report)


def test_association_sets_tcp_nodelay(status_scp, fast_settings: Settings) -> None:
    scp = status_scp([0x0000])
    with open_association(scp.destination, fast_settings, [Comprehensive3DSRStorage]) as assoc:
        assert assoc.is_established
        sock = assoc.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.getpeername() == (HOST, scp.port)
    assert assoc.is_released


def test_send_from_file_path(tmp_path: Path, report: Dataset, status_scp, fast_settings) -> None:
    path = tmp_path / "sr.dcm"
    report.save_as(path, enforce_file_format=True)
    scp = status_scp([0x0000])
    result = send_dataset(path, scp.destination, fast_settings)
    assert result.status is DeliveryStatus.SUCCESS
    assert scp.received == [report.SOPInstanceUID]


def test_out_of_resources_retried(report: Dataset, status_scp, fast_settings: Settings) -> None:
    scp = status_scp([0xA700, 0x0000])
    attempts: list[DeliveryAttempt] = []
    delays: list[float] = []

    result = deliver_with_retries(report, scp.destination, fast_settings, attempts.append, sleep=delays.append)

    assert result.status is DeliveryStatus.SUCCESS
    assert [a.attempt for a in attempts] == [1, 2]
    assert [a.result.status for a in attempts] == [DeliveryStatus.TRANSIENT_FAILURE, DeliveryStatus.SUCCESS]
    assert [a.result.dicom_status for a in attempts] == [0xA700, 0x0000]
    assert "0xA700" in attempts[0].result.error
    assert delays == [0.05]
    assert scp.received == [report.SOPInstanceUID, report.SOPInstanceUID]


@pytest.mark.parametrize("status", [0xA900, 0xC000], ids=["A900", "C000"])
def test_permanent_status_not_retried(report: Dataset, status_scp, fast_settings, status: int) -> None:
    scp = status_scp([status])
    attempts: list[DeliveryAttempt] = []
    delays: list[float] = []

    result = deliver_with_retries(report, scp.destination, fast_settings, attempts.append, sleep=delays.append)

    assert result.status is DeliveryStatus.PERMANENT_FAILURE
    assert result.dicom_status == status
    assert not result.sop_class_rejected
    assert len(attempts) == 1
    assert delays == []
    assert len(scp.received) == 1


def test_warning_counts_as_delivered(report: Dataset, status_scp, fast_settings: Settings) -> None:
    scp = status_scp([0xB000])
    attempts: list[DeliveryAttempt] = []

    result = deliver_with_retries(report, scp.destination, fast_settings, attempts.append, sleep=lambda _: None)

    assert result.status is DeliveryStatus.WARNING
    assert result.delivered
    assert result.dicom_status == 0xB000
    assert len(attempts) == 1


def test_unaccepted_sop_class_signals_fallback(report: Dataset, status_scp, fast_settings) -> None:
    scp = status_scp([0x0000], sop_classes=[EnhancedSRStorage, ComprehensiveSRStorage, CTImageStorage])
    attempts: list[DeliveryAttempt] = []

    result = deliver_with_retries(report, scp.destination, fast_settings, attempts.append, sleep=lambda _: None)

    assert result.status is DeliveryStatus.PERMANENT_FAILURE
    assert result.sop_class_rejected
    assert set(result.accepted_sop_classes) == {EnhancedSRStorage, ComprehensiveSRStorage}
    assert len(attempts) == 1
    assert scp.received == []

    fallback_class = SrSopClass(fast_settings.sr_fallback_sop_class)
    fallback = build_measurement_report(make_report_inputs(sop_class=fallback_class))
    second = deliver_with_retries(fallback, scp.destination, fast_settings, sleep=lambda _: None)
    assert second.status is DeliveryStatus.SUCCESS
    assert second.sop_class_uid == EnhancedSRStorage
    assert scp.received == [fallback.SOPInstanceUID]


def test_rejected_permanent_not_retried(report: Dataset, status_scp, fast_settings) -> None:
    scp = status_scp([0x0000], require_calling_aet=["SOMEONEELSE"])
    attempts: list[DeliveryAttempt] = []

    result = deliver_with_retries(report, scp.destination, fast_settings, attempts.append, sleep=lambda _: None)

    assert result.status is DeliveryStatus.PERMANENT_FAILURE
    assert "rejected" in result.error
    assert result.dicom_status is None
    assert len(attempts) == 1


def test_rejected_transient_retried(report: Dataset, fast_settings: Settings) -> None:
    peer = RawPeer(associate_reject_pdu(result=0x02))
    attempts: list[DeliveryAttempt] = []
    delays: list[float] = []
    destination = Destination(ae_title="REJECTOR", host=HOST, port=peer.port)
    try:
        result = deliver_with_retries(report, destination, fast_settings, attempts.append, sleep=delays.append)
    finally:
        peer.stop()

    assert result.status is DeliveryStatus.TRANSIENT_FAILURE
    assert "rejected" in result.error
    assert len(attempts) == 3
    assert delays == [0.05, 0.1]
    assert {a.result.sop_instance_uid for a in attempts} == {report.SOPInstanceUID}


def test_connection_refused_is_transient(report: Dataset, fast_settings: Settings) -> None:
    destination = Destination(ae_title="NOBODY", host=HOST, port=free_port())
    result = send_dataset(report, destination, fast_settings)
    assert result.status is DeliveryStatus.TRANSIENT_FAILURE
    assert result.retryable
    assert "connection refused" in result.error


def test_silent_peer_times_out(report: Dataset, tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", network_timeout=1.0)
    peer = RawPeer(reply=None)
    destination = Destination(ae_title="SILENT", host=HOST, port=peer.port)
    try:
        started = time.monotonic()
        result = send_dataset(report, destination, settings)
        elapsed = time.monotonic() - started
    finally:
        peer.stop()
    assert result.status is DeliveryStatus.TRANSIENT_FAILURE
    assert "no association" in result.error
    # The ACSE timeout (1 s) ended the wait, not the 60 s default.
    assert elapsed < 10.0


def _report_row(database_url: str, report: Dataset) -> int:
    engine = db_session.get_engine(database_url, auto_migrate=True)
    with db_session.session_scope(engine) as session:
        study = Study(study_instance_uid=report.StudyInstanceUID)
        analysis = Analysis(study=study)
        row = Report(
            analysis=analysis,
            sop_instance_uid=report.SOPInstanceUID,
            series_instance_uid=report.SeriesInstanceUID,
            sop_class_uid=report.SOPClassUID,
            file_path="sr.dcm",
        )
        session.add_all([study, analysis, row])
        session.flush()
        return row.id


def test_attempts_written_as_delivery_rows(
    database_url: str, report: Dataset, status_scp, fast_settings: Settings
) -> None:
    report_id = _report_row(database_url, report)
    engine = db_session.get_engine(database_url)
    scp = status_scp([0xA702, 0x0000])

    def record(attempt: DeliveryAttempt) -> None:
        with db_session.session_scope(engine) as session:
            record_delivery(session, report_id, attempt)

    deliver_with_retries(report, scp.destination, fast_settings, record, sleep=lambda _: None)

    with db_session.session_scope(engine) as session:
        rows = session.scalars(select(Delivery).order_by(Delivery.attempt)).all()
        assert [row.attempt for row in rows] == [1, 2]
        assert [row.status for row in rows] == [DeliveryStatus.TRANSIENT_FAILURE, DeliveryStatus.SUCCESS]
        assert [row.dicom_status for row in rows] == [0xA702, 0x0000]
        assert {row.sop_class_uid for row in rows} == {Comprehensive3DSRStorage}
        assert rows[0].destination_ae_title == "STATUSSCP"
        assert rows[0].destination_port == scp.port


class Orthanc:
    """Orthanc with a fresh database in ``folder``, DICOM only, reachable from 127.0.0.1."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = folder / "orthanc.json"
        self.config.write_text(
            json.dumps(
                {
                    "Name": "hclal-test",
                    "StorageDirectory": str(folder / "storage"),
                    "IndexDirectory": str(folder / "index"),
                    "RemoteAccessAllowed": False,
                    "HttpServerEnabled": False,
                    "HttpPort": free_port(),
                    "DicomServerEnabled": True,
                    "DicomAet": "ORTHANC",
                    "DicomPort": self.port,
                    "DicomCheckCalledAet": False,
                    "DicomAlwaysAllowStore": True,
                    "DicomAlwaysAllowFind": True,
                    "Plugins": [],
                }
            )
        )
        self.process: subprocess.Popen | None = None

    @property
    def destination(self) -> Destination:
        return Destination(ae_title="ORTHANC", host=HOST, port=self.port)

    def start(self) -> None:
        log = (self.folder / "orthanc.log").open("ab")
        self.process = subprocess.Popen([ORTHANC, str(self.config)], stdout=log, stderr=log)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    if ORTHANC is None:
        pytest.skip("Orthanc is not installed (apt-get install orthanc)")
    server = Orthanc(tmp_path / "orthanc")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.orthanc
def test_orthanc_restart_during_delivery(orthanc: Orthanc, report: Dataset, tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path / "data", network_timeout=5.0, delivery_backoff=1.0, delivery_max_attempts=6
    )
    orthanc.start()
    orthanc.stop()

    attempts: list[DeliveryAttempt] = []
    outcome: list[SendResult] = []
    delivery = threading.Thread(
        target=lambda: outcome.append(
            deliver_with_retries(report, orthanc.destination, settings, attempts.append, confirm=True)
        )
    )
    delivery.start()
    time.sleep(2.5)
    orthanc.start()
    delivery.join(timeout=60)

    assert outcome, "delivery did not finish within 60 s"
    result = outcome[0]
    assert result.status is DeliveryStatus.SUCCESS
    assert result.confirmed is True
    statuses = [a.result.status for a in attempts]
    assert statuses[-1] is DeliveryStatus.SUCCESS
    assert statuses[:-1] == [DeliveryStatus.TRANSIENT_FAILURE] * (len(attempts) - 1)
    assert len(attempts) >= 2
    assert {a.result.sop_instance_uid for a in attempts} == {report.SOPInstanceUID}


@pytest.mark.orthanc
def test_find_instance_on_orthanc(orthanc: Orthanc, report: Dataset, fast_settings: Settings) -> None:
    orthanc.start()
    destination = orthanc.destination
    assert not find_instance(
        report.StudyInstanceUID, report.SeriesInstanceUID, report.SOPInstanceUID, destination, fast_settings
    )

    assert send_dataset(report, destination, fast_settings).status is DeliveryStatus.SUCCESS

    assert find_instance(
        report.StudyInstanceUID, report.SeriesInstanceUID, report.SOPInstanceUID, destination, fast_settings
    )
    assert not find_instance(
        report.StudyInstanceUID, report.SeriesInstanceUID, "1.2.3.999", destination, fast_settings
    )
