"""Adversarial C-STOREs against the storage SCP: data sets that contradict themselves.

Each test sends one crafted instance from a pynetdicom SCU to the real SCP on
127.0.0.1. The promise under test: an undecodable or inconsistent data set gets
a 0xC000-class failure status, and the patient's name, ID and birth date
never reach the log.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import select

from dicom.network.scp import STATUS_CANNOT_UNDERSTAND, STATUS_SUCCESS
from tests.support.dcmtk import require_dcmtk_tool
from tests.support.dicom_factory import ct_series
from tests.support.receiver import Receiver, receiver_settings, running_receiver
from worker.db.models import Event, Instance, Series, Study


@pytest.fixture
def receiver(tmp_path: Path, sqlite_url: str):
    with running_receiver(receiver_settings(tmp_path / "data", sqlite_url)) as running:
        yield running


def encode_body(dataset: Dataset, *, implicit_vr: bool) -> bytes:
    """Return ``dataset`` encoded little endian, without preamble or File Meta Information."""
    stream = DicomBytesIO()
    stream.is_little_endian = True
    stream.is_implicit_VR = implicit_vr
    write_dataset(stream, dataset)
    return stream.getvalue()


def crafted_file(path: Path, dataset: Dataset, transfer_syntax: str, body: bytes) -> Path:
    """Write a PS3.10 file whose File Meta Information names ``transfer_syntax`` before ``body``.

    The body is written as given, so it may contradict the declared transfer syntax.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = dicom_uid.PYDICOM_IMPLEMENTATION_UID
    stream = DicomBytesIO()
    stream.is_little_endian = True
    stream.is_implicit_VR = False
    stream.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(stream, meta, enforce_standard=True)
    path.write_bytes(stream.getvalue() + body)
    return path


def send_file_bytes(port: int, path: Path, transfer_syntax: str) -> int:
    """Send the bytes after the File Meta Information of ``path`` unchanged and return the status.

    pynetdicom sends a file's data set without decoding it only when
    ``STORE_SEND_CHUNKED_DATASET`` is set.
    """
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, [transfer_syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="HCLAL")
    assert assoc.is_established
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
    return status.Status


def send_dataset(port: int, dataset: Dataset) -> int:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, [dicom_uid.ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="HCLAL")
    assert assoc.is_established
    status = assoc.send_c_store(dataset)
    assoc.release()
    return status.Status


def study_of(receiver: Receiver, sop_instance_uid: str) -> str | None:
    """Return the Study Instance UID that the database files an instance under."""
    statement = (
        select(Study.study_instance_uid)
        .join(Series, Series.study_id == Study.id)
        .join(Instance, Instance.series_id == Series.id)
        .where(Instance.sop_instance_uid == sop_instance_uid)
    )
    with receiver.engine.connect() as connection:
        return connection.scalar(statement)


def test_invalid_birth_date_not_logged(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    # DA allows only YYYYMMDD (PS3.5 6.2), but PACS exports often contain hyphenated dates.
    ds = ct_series(1)[0]
    ds.PatientBirthDate = "1970-01-01"
    caplog.clear()  # pydicom logs the invalid value once here, in the SCU's own process.
    with caplog.at_level(logging.INFO):
        status = send_dataset(receiver.port, ds)

    assert status == STATUS_SUCCESS
    assert receiver.instance_count() == 1
    assert "1970-01-01" not in caplog.text


def test_undecodable_jpeg_fails_with_c000(receiver: Receiver, tmp_path: Path) -> None:
    # Well-formed encapsulation (offset table and one fragment) around bytes that are no JPEG stream.
    ds = ct_series(1)[0]
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(range(200)) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    syntax = dicom_uid.JPEGLosslessSV1
    path = crafted_file(tmp_path / "garbage-jpeg.dcm", ds, syntax, encode_body(ds, implicit_vr=False))

    status = send_file_bytes(receiver.port, path, syntax)

    assert status == STATUS_CANNOT_UNDERSTAND
    assert receiver.instance_count() == 0


@pytest.mark.dcmtk
def test_body_contradicting_syntax_rejected(receiver: Receiver, tmp_path: Path) -> None:
    # An SCU that encodes Explicit VR on a context negotiated as Implicit VR Little Endian.
    ds = ct_series(1)[0]
    syntax = dicom_uid.ImplicitVRLittleEndian
    path = crafted_file(tmp_path / "mislabelled.dcm", ds, syntax, encode_body(ds, implicit_vr=False))

    status = send_file_bytes(receiver.port, path, syntax)

    if status == STATUS_SUCCESS:
        # Accepted: then the spooled file must be readable as the syntax its meta declares.
        stored = next(receiver.settings.spool_dir.rglob("*.dcm"))
        dump = subprocess.run(
            [require_dcmtk_tool("dcmdump"), str(stored)], capture_output=True, text=True
        )
        assert dump.returncode == 0, dump.stderr
    else:
        assert status == STATUS_CANNOT_UNDERSTAND


def test_series_uid_reused_across_studies(receiver: Receiver) -> None:
    first, second = ct_series(1)[0], ct_series(1)[0]
    second.SeriesInstanceUID = first.SeriesInstanceUID
    assert second.StudyInstanceUID != first.StudyInstanceUID

    first_status = send_dataset(receiver.port, first)
    second_status = send_dataset(receiver.port, second)

    assert first_status == STATUS_SUCCESS
    if second_status == STATUS_SUCCESS:
        # Accepted: then the instance must be filed under the study its data set names.
        assert study_of(receiver, second.SOPInstanceUID) == second.StudyInstanceUID
    else:
        assert second_status == STATUS_CANNOT_UNDERSTAND
        assert event_kinds(receiver, second.SOPInstanceUID) == ["series_in_other_study"]


def event_kinds(receiver: Receiver, sop_instance_uid: str) -> list[str]:
    """Return the kinds of the ``event`` rows recorded for an instance."""
    statement = select(Event.kind).where(Event.sop_instance_uid == sop_instance_uid)
    with receiver.engine.connect() as connection:
        return list(connection.scalars(statement))


def associate_request(calling_ae_title: bytes, called_ae_title: bytes = b"HCLAL") -> bytes:
    """Return an A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) that proposes Verification, AE titles as given."""

    def pdu_item(item_type: int, value: bytes) -> bytes:
        return struct.pack(">BBH", item_type, 0, len(value)) + value

    application_context = pdu_item(0x10, b"1.2.840.10008.3.1.1.1")
    presentation_context = pdu_item(
        0x20,
        bytes([1, 0, 0, 0])
        + pdu_item(0x30, Verification.encode())
        + pdu_item(0x40, dicom_uid.ImplicitVRLittleEndian.encode()),
    )
    user_information = pdu_item(
        0x50, pdu_item(0x51, struct.pack(">I", 16384)) + pdu_item(0x52, b"1.2.3.4")
    )
    body = (
        struct.pack(">HH", 1, 0)
        + called_ae_title.ljust(16)
        + calling_ae_title.ljust(16)
        + bytes(32)
        + application_context
        + presentation_context
        + user_information
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def test_malformed_ae_title_frees_slot(receiver: Receiver) -> None:
    # A calling AE title with a byte outside the Default Character Repertoire (PS3.5 6.2).
    # The SCP accepts at most 64 associations at once.
    request = associate_request("PÄCS".encode("latin-1"))
    for _ in range(70):
        with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as peer:
            peer.sendall(request)
            with contextlib.suppress(OSError):
                peer.recv(64)

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = 10
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="HCLAL")
    established = assoc.is_established
    if established:
        assoc.release()

    assert established, "a valid association was rejected after peers that already hung up"
