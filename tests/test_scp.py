"""The storage SCP against real peers: DCMTK storescu and pynetdicom SCUs.

Every test starts the SCP on 127.0.0.1 with a free port and a fresh database.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import logging
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedPETImageStorage,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    Verification,
)
from sqlalchemy import func, select

from dicom.network.scp import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    accepted_transfer_syntaxes,
)
from dicom.network.spool import Spool
from tests.support.dcmtk import require_dcmtk_tool
from tests.support.dicom_factory import ct_series, dataset_bytes, encoded, write, write_all
from tests.support.receiver import (
    Receiver,
    file_size_limit,
    free_port,
    receiver_settings,
    running_receiver,
    scp_command,
)
from worker.config import Settings
from worker.db.models import Event, Instance, Series, Study
from worker.db.session import get_engine

# Transfer syntax -> storescu option that proposes it (None: sent with pynetdicom).
STORESCU_PROPOSALS = {
    dicom_uid.ImplicitVRLittleEndian: "-xi",
    dicom_uid.ExplicitVRLittleEndian: "-xe",
    dicom_uid.DeflatedExplicitVRLittleEndian: "-xd",
    dicom_uid.JPEGBaseline8Bit: "-xy",
    dicom_uid.JPEGExtended12Bit: "-xx",
    dicom_uid.JPEGLossless: None,
    dicom_uid.JPEGLosslessSV1: "-xs",
    dicom_uid.JPEGLSLossless: "-xt",
    dicom_uid.JPEGLSNearLossless: "-xu",
    dicom_uid.JPEG2000Lossless: "-xv",
    dicom_uid.JPEG2000: "-xw",
    dicom_uid.RLELossless: "-xr",
}


@pytest.fixture
def receiver(tmp_path: Path, sqlite_url: str):
    with running_receiver(receiver_settings(tmp_path / "data", sqlite_url)) as running:
        yield running


def scu(*contexts: tuple[str, list[str]], ae_title: str = "TESTSCU") -> AE:
    ae = AE(ae_title=ae_title)
    # A busy test machine can stall a response for seconds; only a lost instance should fail.
    ae.dimse_timeout = 120
    for abstract_syntax, syntaxes in contexts:
        ae.add_requested_context(abstract_syntax, syntaxes)
    return ae


def storescu(
    receiver: Receiver, paths: list[Path], *options: str, calling: str = "TESTSCU"
) -> subprocess.CompletedProcess:
    command = [
        require_dcmtk_tool("storescu"),
        "-aet", calling, "-aec", receiver.settings.ae_title, *options,
        "127.0.0.1", str(receiver.port), *map(str, paths),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _eight_bit(ds: Dataset) -> Dataset:
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = (np.frombuffer(ds.PixelData, dtype=np.int16) % 256).astype(np.uint8).tobytes()
    return ds


def _twelve_bit(ds: Dataset) -> Dataset:
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def make_file(syntax: str, folder: Path) -> Path:
    """Write a CT slice in ``syntax`` with pydicom's encoders or DCMTK's converters."""
    ds = ct_series(1, size=32)[0]
    if syntax == dicom_uid.JPEGBaseline8Bit:
        ds = _eight_bit(ds)
    if syntax in (dicom_uid.JPEGExtended12Bit, dicom_uid.JPEGLSNearLossless):
        ds = _twelve_bit(ds)
    plain = write(ds, folder / "plain.dcm")
    target = folder / f"{syntax}.dcm"

    converters = {
        dicom_uid.DeflatedExplicitVRLittleEndian: ["dcmconv", "+td"],
        dicom_uid.JPEGBaseline8Bit: ["dcmcjpeg", "+eb"],
        dicom_uid.JPEGExtended12Bit: ["dcmcjpeg", "+ee"],
        dicom_uid.JPEGLossless: ["dcmcjpeg", "+el"],
        dicom_uid.JPEGLosslessSV1: ["dcmcjpeg", "+e1"],
        dicom_uid.JPEGLSNearLossless: ["dcmcjpls", "+en", "+md", "2"],
    }
    if syntax in converters:
        tool, *options = converters[syntax]
        subprocess.run([require_dcmtk_tool(tool), *options, str(plain), str(target)], check=True)
    elif syntax in (dicom_uid.ImplicitVRLittleEndian, dicom_uid.ExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = syntax
        write(ds, target)
    elif syntax == dicom_uid.JPEG2000:
        ds.compress(syntax, j2k_cr=[5])
        write(ds, target)
    else:
        ds.compress(syntax)
        write(ds, target)
    assert dcmread(target, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    return target


def stored_bytes(receiver: Receiver, sop_instance_uid: str) -> bytes:
    with receiver.engine.connect() as connection:
        path = connection.scalar(
            select(Instance.file_path).where(Instance.sop_instance_uid == sop_instance_uid)
        )
    assert path is not None, f"SOP Instance {sop_instance_uid} was not stored"
    return Path(path).read_bytes()


def test_echo_succeeds(receiver: Receiver) -> None:
    assoc = scu((Verification, [dicom_uid.ImplicitVRLittleEndian])).associate(
        "127.0.0.1", receiver.port, ae_title="HCLAL"
    )
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    assert status.Status == STATUS_SUCCESS


def test_accepts_compressed_syntaxes_with_decoders() -> None:
    accepted = accepted_transfer_syntaxes()
    assert dicom_uid.ExplicitVRLittleEndian in accepted
    assert dicom_uid.JPEG2000Lossless in accepted
    assert dicom_uid.RLELossless in accepted
    assert dicom_uid.ExplicitVRBigEndian not in accepted


@pytest.mark.dcmtk
@pytest.mark.parametrize("syntax", list(STORESCU_PROPOSALS), ids=lambda s: s.name)
def test_syntax_round_trips_byte_exact(
    receiver: Receiver, tmp_path: Path, syntax: dicom_uid.UID
) -> None:
    path = make_file(syntax, tmp_path)
    sent = path.read_bytes()
    ds = dcmread(path)
    option = STORESCU_PROPOSALS[syntax]

    if option is None:
        assoc = scu((CTImageStorage, [syntax])).associate(
            "127.0.0.1", receiver.port, ae_title="HCLAL"
        )
        status = assoc.send_c_store(path)
        assoc.release()
        assert status.Status == STATUS_SUCCESS
    else:
        result = storescu(receiver, [path], option)
        assert result.returncode == 0, result.stderr

    received = stored_bytes(receiver, ds.SOPInstanceUID)
    assert dcmread(io.BytesIO(received)).file_meta.TransferSyntaxUID == syntax
    sent_data_set = dataset_bytes(sent)
    received_data_set = dataset_bytes(received)
    if syntax == dicom_uid.DeflatedExplicitVRLittleEndian and len(sent_data_set) % 2:
        # storescu pads an odd-length deflated stream with one trailing zero byte.
        assert received_data_set == sent_data_set + b"\x00"
    else:
        assert received_data_set == sent_data_set


def test_undecodable_syntax_rejected_at_negotiation(receiver: Receiver) -> None:
    mpeg2 = dicom_uid.MPEG2MPML
    assoc = scu(
        (CTImageStorage, [mpeg2]), (Verification, [dicom_uid.ImplicitVRLittleEndian])
    ).associate("127.0.0.1", receiver.port, ae_title="HCLAL")
    assert assoc.is_established
    rejected = assoc.rejected_contexts
    accepted = [cx.abstract_syntax for cx in assoc.accepted_contexts]
    assoc.release()

    assert accepted == [Verification]
    assert [cx.abstract_syntax for cx in rejected] == [CTImageStorage]
    # Result 4: transfer-syntaxes-not-supported (provider rejection), PS3.8 9.3.3.2.
    assert rejected[0].result == 0x04


@pytest.mark.dcmtk
def test_resend_is_idempotent(receiver: Receiver, tmp_path: Path) -> None:
    paths = write_all(ct_series(5), tmp_path / "series")

    first = storescu(receiver, paths)
    count_after_first = receiver.instance_count()
    files_after_first = sorted(receiver.settings.spool_dir.rglob("*.dcm"))
    second = storescu(receiver, paths)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert count_after_first == 5
    assert receiver.instance_count() == 5
    assert sorted(receiver.settings.spool_dir.rglob("*.dcm")) == files_after_first
    assert not (receiver.settings.spool_dir / "conflicts").exists()


def test_changed_resend_recorded_as_conflict(receiver: Receiver) -> None:
    ds = ct_series(1)[0]
    ae = scu((CTImageStorage, [dicom_uid.ExplicitVRLittleEndian]))
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="HCLAL")
    first = assoc.send_c_store(ds)
    original = stored_bytes(receiver, ds.SOPInstanceUID)
    ds.SeriesDescription = "edited after sending"
    second = assoc.send_c_store(ds)
    assoc.release()

    assert first.Status == STATUS_SUCCESS
    assert second.Status == STATUS_SUCCESS
    assert stored_bytes(receiver, ds.SOPInstanceUID) == original
    assert len(list((receiver.settings.spool_dir / "conflicts").glob("*.dcm"))) == 1
    with receiver.engine.connect() as connection:
        kinds = connection.scalars(select(Event.kind)).all()
    assert kinds == ["instance_conflict"]


def _send_series(port: int, datasets: list[Dataset], statuses: list[int]) -> None:
    assoc = scu((CTImageStorage, [dicom_uid.ExplicitVRLittleEndian])).associate(
        "127.0.0.1", port, ae_title="HCLAL"
    )
    for ds in datasets:
        statuses.append(assoc.send_c_store(ds).Status)
    assoc.release()


def test_eight_associations_lose_nothing(tmp_path: Path, database_url: str) -> None:
    study_uid = dicom_uid.generate_uid()
    series = [ct_series(100, study_uid=study_uid, size=8) for _ in range(8)]
    statuses: list[int] = []

    with running_receiver(receiver_settings(tmp_path / "data", database_url)) as receiver:
        senders = [
            threading.Thread(target=_send_series, args=(receiver.port, datasets, statuses))
            for datasets in series
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()

        with receiver.engine.connect() as connection:
            studies = connection.scalar(select(func.count()).select_from(Study))
            series_rows = connection.scalar(select(func.count()).select_from(Series))
            stored = set(connection.scalars(select(Instance.sop_instance_uid)))
        files = list(receiver.settings.spool_dir.rglob("*.dcm"))

    sent = {ds.SOPInstanceUID for datasets in series for ds in datasets}
    assert statuses == [STATUS_SUCCESS] * 800
    assert studies == 1
    assert series_rows == 8
    assert stored == sent
    assert len(files) == 800


@pytest.mark.dcmtk
def test_unknown_calling_ae_rejected(tmp_path: Path, sqlite_url: str) -> None:
    settings = receiver_settings(tmp_path / "data", sqlite_url, allowed_calling_ae_titles=["PACS"])
    paths = write_all(ct_series(1), tmp_path / "series")
    with running_receiver(settings) as receiver:
        rejected = storescu(receiver, paths, calling="INTRUDER")
        accepted = storescu(receiver, paths, calling="PACS")
        count = receiver.instance_count()

    assert rejected.returncode != 0
    assert "Calling AE Title Not Recognized" in rejected.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert count == 1


@pytest.mark.dcmtk
def test_unknown_source_address_rejected(tmp_path: Path, sqlite_url: str) -> None:
    paths = write_all(ct_series(1), tmp_path / "series")
    outside = receiver_settings(tmp_path / "a", sqlite_url, allowed_source_addresses=["10.0.0.0/8"])
    with running_receiver(outside) as receiver:
        rejected = storescu(receiver, paths)
        rejected_count = receiver.instance_count()
    inside = receiver_settings(tmp_path / "b", sqlite_url, allowed_source_addresses=["127.0.0.1"])
    with running_receiver(inside) as receiver:
        accepted = storescu(receiver, paths)

    assert "Rejected Permanent" in rejected.stderr
    assert "No Reason" in rejected.stderr
    assert rejected_count == 0
    assert accepted.returncode == 0, accepted.stderr


def test_truncated_pixel_data_fails_with_c000(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    good, bad = ct_series(2)
    bad.PixelData = bad.PixelData[:100]
    ae = scu((CTImageStorage, [dicom_uid.ExplicitVRLittleEndian]))
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="HCLAL")
    with caplog.at_level(logging.WARNING, logger="dicom.network.scp"):
        bad_status = assoc.send_c_store(bad)
    good_status = assoc.send_c_store(good)
    assoc.release()

    assert bad_status.Status == STATUS_CANNOT_UNDERSTAND
    assert good_status.Status == STATUS_SUCCESS
    assert receiver.instance_count() == 1
    assert bad.SOPInstanceUID in caplog.text
    assert "Pixel Data has 100 bytes" in caplog.text
    assert "Test^Patient" not in caplog.text


def test_full_disk_fails_with_a700_then_recovers(tmp_path: Path, postgres_url: str) -> None:
    # PostgreSQL writes its files in its own processes, outside this process's file size limit.
    small, large = ct_series(2, size=256)
    with running_receiver(receiver_settings(tmp_path / "data", postgres_url)) as receiver:
        assoc = scu((CTImageStorage, [dicom_uid.ExplicitVRLittleEndian])).associate(
            "127.0.0.1", receiver.port, ae_title="HCLAL"
        )
        with file_size_limit(64 * 1024):
            full = assoc.send_c_store(large)
        after = assoc.send_c_store(small)
        assoc.release()
        count = receiver.instance_count()

    assert full.Status == STATUS_OUT_OF_RESOURCES
    assert after.Status == STATUS_SUCCESS
    assert count == 1


def _certificate_authority(folder: Path) -> dict[str, Path]:
    """Write a test CA and a server and a client certificate signed by it (PEM files)."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def build(
        subject: str, key, issuer: str, issuer_key, *, ca: bool
    ) -> x509.Certificate:  # noqa: ANN001
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_certificate = build("HCLAL test CA", ca_key, "HCLAL test CA", ca_key, ca=True)
    paths = {"ca": folder / "ca.pem"}
    paths["ca"].write_bytes(ca_certificate.public_bytes(serialization.Encoding.PEM))
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = build(f"hclal {role}", key, "HCLAL test CA", ca_key, ca=False)
        paths[f"{role}_cert"] = folder / f"{role}.pem"
        paths[f"{role}_key"] = folder / f"{role}.key"
        paths[f"{role}_cert"].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        paths[f"{role}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return paths


def _tls_settings(tmp_path: Path, database_url: str, pki: dict[str, Path]) -> Settings:
    """Return SCP settings that require TLS with client certificates signed by the test CA."""
    return receiver_settings(
        tmp_path / "data",
        database_url,
        tls_certificate=pki["server_cert"],
        tls_key=pki["server_key"],
        tls_ca=pki["ca"],
    )


def test_tls_association_with_test_ca(tmp_path: Path, sqlite_url: str) -> None:
    pki = _certificate_authority(tmp_path)
    settings = _tls_settings(tmp_path, sqlite_url, pki)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki["ca"])
    client.load_cert_chain(pki["client_cert"], pki["client_key"])
    anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki["ca"])
    ds = ct_series(1)[0]
    ae = scu((CTImageStorage, [dicom_uid.ExplicitVRLittleEndian]))

    with running_receiver(settings) as receiver:
        assoc = ae.associate(
            "127.0.0.1", receiver.port, ae_title="HCLAL", tls_args=(client, "127.0.0.1")
        )
        status = assoc.send_c_store(ds)
        assoc.release()
        without_certificate = ae.associate(
            "127.0.0.1", receiver.port, ae_title="HCLAL", tls_args=(anonymous, "127.0.0.1")
        )
        count = receiver.instance_count()

    assert status.Status == STATUS_SUCCESS
    assert count == 1
    assert not without_certificate.is_established


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    environment = {
        **os.environ,
        "HCLAL_DATA_DIR": str(tmp_path / "data"),
        "HCLAL_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.sqlite3'}",
    }
    # A file that a power failure left in the spool without its database row.
    unrecorded = ct_series(1)[0]
    Spool(tmp_path / "data" / "spool").write_instance(
        encoded(unrecorded),
        unrecorded.StudyInstanceUID,
        unrecorded.SeriesInstanceUID,
        unrecorded.SOPInstanceUID,
    )
    command = scp_command(port, "CLITEST")
    process = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True)
    try:
        ae = scu((Verification, [dicom_uid.ImplicitVRLittleEndian]))
        deadline = time.monotonic() + 60
        assoc = ae.associate("127.0.0.1", port, ae_title="CLITEST")
        while not assoc.is_established and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            assoc = ae.associate("127.0.0.1", port, ae_title="CLITEST")
        status = assoc.send_c_echo()
        assoc.release()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert status.Status == STATUS_SUCCESS
    assert process.returncode == 0
    assert f"storage SCP CLITEST listening on 127.0.0.1:{port}" in stderr
    assert "received SIGTERM, stopping" in stderr
    assert "storage SCP CLITEST stopped" in stderr
    assert "recorded 1 spool files that had no instance row (of 1 checked)" in stderr
    engine = get_engine(environment["HCLAL_DATABASE_URL"])
    with engine.connect() as connection:
        recorded = connection.scalars(select(Instance.sop_instance_uid)).all()
    assert recorded == [unrecorded.SOPInstanceUID]


def test_cli_reports_port_in_use(tmp_path: Path, sqlite_url: str) -> None:
    environment = {
        **os.environ,
        "HCLAL_DATA_DIR": str(tmp_path / "data"),
        "HCLAL_DATABASE_URL": sqlite_url,
    }
    with running_receiver(receiver_settings(tmp_path / "data", sqlite_url)) as receiver:
        port = receiver.port
        result = subprocess.run(
            [sys.executable, "-m", "worker", "scp", "--port", str(port)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "choose another --port" in result.stderr


def test_cli_reports_invalid_host(tmp_path: Path, sqlite_url: str) -> None:
    environment = {
        **os.environ,
        "HCLAL_DATA_DIR": str(tmp_path / "data"),
        "HCLAL_DATABASE_URL": sqlite_url,
    }
    result = subprocess.run(
        [sys.executable, "-m", "worker", "scp", "--host", "256.1.1.1", "--port", "11112"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "cannot listen on 256.1.1.1:11112" in result.stderr
    assert "set --host or HCLAL_SCP_HOST" in result.stderr
    assert "choose another --port" not in result.stderr


def test_database_error_fails_without_phi(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    with receiver.engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TRIGGER refuse_study BEFORE INSERT ON study "
            "BEGIN SELECT RAISE(ABORT, 'study table is read-only'); END"
        )
    ds = ct_series(1)[0]
    ae = scu((CTImageStorage, [dicom_uid.ExplicitVRLittleEndian]))

    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="HCLAL")
    with caplog.at_level(logging.WARNING, logger="dicom.network.scp"):
        status = assoc.send_c_store(ds)
    assoc.release()

    assert status.Status == STATUS_OUT_OF_RESOURCES
    assert "study table is read-only" in caplog.text
    assert ds.SOPInstanceUID in caplog.text
    assert "Test^Patient" not in caplog.text
    assert "TEST-0001" not in caplog.text
    assert list(receiver.settings.spool_dir.rglob("*.dcm")) == []


def _as_multiframe(ds: Dataset, sop_class_uid: str, frames: int) -> Dataset:
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.NumberOfFrames = frames
    ds.PixelData = ds.PixelData * frames
    return ds


@pytest.mark.parametrize(
    "sop_class_uid",
    [
        CTImageStorage,
        EnhancedCTImageStorage,
        PositronEmissionTomographyImageStorage,
        EnhancedPETImageStorage,
    ],
    ids=["ct", "enhanced-ct", "pet", "enhanced-pet"],
)
def test_image_sop_classes_stored(receiver: Receiver, sop_class_uid: str) -> None:
    ds = ct_series(1)[0]
    if sop_class_uid in (EnhancedCTImageStorage, EnhancedPETImageStorage):
        ds = _as_multiframe(ds, sop_class_uid, frames=3)
    else:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ae = scu((sop_class_uid, [dicom_uid.ExplicitVRLittleEndian]))

    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="HCLAL")
    status = assoc.send_c_store(ds)
    assoc.release()

    assert status.Status == STATUS_SUCCESS
    assert stored_bytes(receiver, ds.SOPInstanceUID)[128:132] == b"DICM"


def test_other_sop_class_rejected_at_negotiation(receiver: Receiver) -> None:
    ae = scu(
        (MRImageStorage, [dicom_uid.ExplicitVRLittleEndian]),
        (Verification, [dicom_uid.ImplicitVRLittleEndian]),
    )

    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="HCLAL")
    rejected = [cx.abstract_syntax for cx in assoc.rejected_contexts]
    assoc.release()

    assert rejected == [MRImageStorage]
    # Result 3: abstract-syntax-not-supported (provider rejection), PS3.8 9.3.3.2.
    assert assoc.rejected_contexts[0].result == 0x03


@pytest.mark.dcmtk
def test_dcmtk_tls_store_with_test_ca(tmp_path: Path, sqlite_url: str) -> None:
    pki = _certificate_authority(tmp_path)
    settings = _tls_settings(tmp_path, sqlite_url, pki)
    paths = write_all(ct_series(2), tmp_path / "series")
    tls = ["+tls", str(pki["client_key"]), str(pki["client_cert"]), "+cf", str(pki["ca"])]

    with running_receiver(settings) as receiver:
        result = storescu(receiver, paths, *tls)
        count = receiver.instance_count()

    assert result.returncode == 0, result.stderr
    assert count == 2
