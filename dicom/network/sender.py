"""Send a folder of DICOM files by C-STORE, as a PACS forwards a study.

Used by ``hclal demo`` and the end-to-end benchmark; the worker's own reports go
out through :mod:`dicom.network.scu`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import Verification

LOGGER = logging.getLogger(__name__)

SUCCESS = 0x0000


class SendError(RuntimeError):
    """The peer could not be reached or refused an instance."""


@dataclass(frozen=True)
class SentFile:
    """One file and the C-STORE status the peer returned."""

    path: Path
    sop_instance_uid: str
    status: int


def dicom_files(folder: Path) -> list[Path]:
    """Return the DICOM files below ``folder`` (those with the ``DICM`` preamble), sorted."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with path.open("rb") as handle:
            handle.seek(128)
            if handle.read(4) == b"DICM":
                files.append(path)
    return files


def send_files(
    paths: Iterable[Path],
    host: str,
    port: int,
    called_ae_title: str,
    calling_ae_title: str = "HCLALSEND",
    on_sent: Callable[[SentFile], None] | None = None,
    dimse_timeout: float = 30.0,
    attempts: int = 3,
) -> list[SentFile]:
    """Send every file, proposing each file's own SOP class and transfer syntax.

    The files go over one association. When a response does not arrive or the
    association breaks, a new association resends from the file that failed, up to
    ``attempts`` times for that file: a storage SCP treats a resend of the same
    bytes as a duplicate, so nothing is stored twice.

    Raises
    ------
    SendError
        If the peer cannot be reached, answers a failure status, or a file still
        fails after ``attempts`` associations.
    """
    _config.LOG_REQUEST_IDENTIFIERS = False
    headers = [(Path(p), pydicom.dcmread(p, stop_before_pixels=True)) for p in paths]
    contexts = {}
    for _, header in headers:
        key = (str(header.SOPClassUID), str(header.file_meta.TransferSyntaxUID))
        contexts[key] = build_context(*key)
    ae = AE(ae_title=calling_ae_title)
    ae.requested_contexts = [build_context(Verification), *contexts.values()][:128]
    # A busy receiver (fsync of every instance) can take seconds to respond.
    ae.dimse_timeout = dimse_timeout
    ae.network_timeout = dimse_timeout

    sent: list[SentFile] = []
    failures = 0
    while len(sent) < len(headers):
        try:
            _send_over_one_association(ae, headers[len(sent):], host, port, called_ae_title, sent, on_sent)
        except _ResponseMissing as missing:
            failures += 1
            if failures >= attempts:
                raise SendError(str(missing)) from None
            LOGGER.warning("%s; sending again from that instance on a new association", missing)
    LOGGER.info("sent %d instances to %s at %s:%d", len(sent), called_ae_title, host, port)
    return sent


class _ResponseMissing(SendError):
    """No C-STORE response arrived, or the association broke, during one file."""


def _send_over_one_association(
    ae: AE,
    headers: list[tuple[Path, pydicom.Dataset]],
    host: str,
    port: int,
    called_ae_title: str,
    sent: list[SentFile],
    on_sent: Callable[[SentFile], None] | None,
) -> None:
    association = ae.associate(host, port, ae_title=called_ae_title)
    if not association.is_established:
        raise SendError(f"association with {called_ae_title} at {host}:{port} was rejected or failed")
    try:
        for path, header in headers:
            if not association.is_established:
                raise _ResponseMissing(f"association with {called_ae_title} ended before {header.SOPInstanceUID}")
            status = association.send_c_store(path)
            if "Status" not in status:
                raise _ResponseMissing(f"no C-STORE response for {header.SOPInstanceUID} from {called_ae_title}")
            code = int(status.Status)
            if code != SUCCESS and (code >> 12) != 0xB:
                raise SendError(f"{called_ae_title} returned status 0x{code:04X} for {header.SOPInstanceUID}")
            item = SentFile(path, str(header.SOPInstanceUID), code)
            sent.append(item)
            if on_sent is not None:
                on_sent(item)
    finally:
        if association.is_established:
            association.release()
        else:
            association.abort()
