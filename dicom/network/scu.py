"""C-STORE and C-FIND SCU that delivers Structured Reports to the PACS.

Each send opens one association, stores one SR and releases. Outcomes are
classified so that the caller knows whether to retry, give up or rebuild the
report in another SOP class:

- success (0x0000) and warning (0xBxxx, 0x0001, 0x0107, 0x0116): delivered;
- transient failure: association rejected (transient), aborted, timed out,
  connection refused, out of resources (0xA7xx), and the general failures
  0x0110, 0x0210, 0x0213 and 0xFE00 (processing failure, duplicate invocation,
  resource limitation, cancel): retried with exponential backoff;
- permanent failure: association rejected (permanent), data set does not
  match the SOP class (0xA9xx), cannot understand (0xCxxx), SOP class not
  supported (0x0122) or not accepted in negotiation, and any other failure
  status: not retried.

Status values are those of PS3.4 GG.4 (Storage Service Class) and PS3.7 C.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from worker.config import Destination, Settings
from worker.db.models import DeliveryStatus

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from worker.db.models import Delivery

logger = logging.getLogger(__name__)

# DIMSE status values (PS3.7 C, PS3.4 GG.4).
STATUS_SUCCESS = 0x0000
STATUS_PENDING = 0xFF00
STATUS_PENDING_WARNING = 0xFF01
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_DUPLICATE_INVOCATION = 0x0210
STATUS_RESOURCE_LIMITATION = 0x0213
STATUS_CANCEL = 0xFE00
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
WARNING_STATUSES = frozenset({0x0001, 0x0107, 0x0116})
TRANSIENT_FAILURE_STATUSES = frozenset(
    {STATUS_PROCESSING_FAILURE, STATUS_DUPLICATE_INVOCATION, STATUS_RESOURCE_LIMITATION, STATUS_CANCEL}
)

# A-ASSOCIATE-RJ Result values (PS3.8 9.3.4).
REJECTED_PERMANENT = 0x01
REJECTED_TRANSIENT = 0x02

SR_STORAGE_CLASSES = (Comprehensive3DSRStorage, EnhancedSRStorage, ComprehensiveSRStorage)
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


@dataclass(frozen=True)
class SendResult:
    """Outcome of one C-STORE attempt.

    Attributes
    ----------
    status : DeliveryStatus
        Success, warning, transient or permanent failure.
    sop_class_uid, sop_instance_uid : str
        The SR that was sent.
    dicom_status : int or None
        Status of the C-STORE response; None when no response arrived.
    error : str or None
        What went wrong, for logs and the ``delivery`` table.
    sop_class_rejected : bool
        The destination did not accept the SR's SOP class. Rebuild the report
        in ``Settings.sr_fallback_sop_class`` and send that.
    accepted_sop_classes : tuple[str, ...]
        SR SOP classes the destination accepted during negotiation.
    confirmed : bool or None
        Result of the C-FIND check when one was made.
    """

    status: DeliveryStatus
    sop_class_uid: str
    sop_instance_uid: str
    dicom_status: int | None = None
    error: str | None = None
    sop_class_rejected: bool = False
    accepted_sop_classes: tuple[str, ...] = ()
    confirmed: bool | None = None

    @property
    def delivered(self) -> bool:
        """Whether the destination stored the SR (success or warning)."""
        return self.status in (DeliveryStatus.SUCCESS, DeliveryStatus.WARNING)

    @property
    def retryable(self) -> bool:
        """Whether a later attempt may succeed."""
        return self.status is DeliveryStatus.TRANSIENT_FAILURE


@dataclass(frozen=True)
class DeliveryAttempt:
    """One attempt of :func:`deliver_with_retries`, handed to the caller's recorder."""

    destination: Destination
    attempt: int
    result: SendResult
    attempted_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def classify_status(status: int) -> DeliveryStatus:
    """Return the delivery outcome of a C-STORE response status.

    Parameters
    ----------
    status : int
        Status (0000,0900) of the C-STORE-RSP.
    """
    if status == STATUS_SUCCESS:
        return DeliveryStatus.SUCCESS
    if status in WARNING_STATUSES or status & 0xF000 == 0xB000:
        return DeliveryStatus.WARNING
    if status & 0xFF00 == 0xA700 or status in TRANSIENT_FAILURE_STATUSES:
        return DeliveryStatus.TRANSIENT_FAILURE
    return DeliveryStatus.PERMANENT_FAILURE


def _set_tcp_nodelay(event: evt.Event) -> None:
    """Send each PDU at once instead of waiting for Nagle's algorithm to batch it."""
    transport = event.assoc.dul.socket
    if transport is not None and transport.socket is not None:
        transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@contextmanager
def open_association(
    destination: Destination, settings: Settings, abstract_syntaxes: Iterable[str]
) -> Iterator[Association]:
    """Request an association with ``destination`` and release it on exit.

    The yielded association may be rejected or aborted: check ``is_established``.
    """
    ae = AE(ae_title=settings.ae_title)
    ae.acse_timeout = settings.network_timeout
    ae.dimse_timeout = settings.network_timeout
    ae.network_timeout = settings.network_timeout
    ae.connection_timeout = settings.network_timeout
    ae.maximum_pdu_size = settings.max_pdu_size
    for abstract_syntax in abstract_syntaxes:
        ae.add_requested_context(abstract_syntax, TRANSFER_SYNTAXES)

    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        max_pdu=settings.max_pdu_size,
        evt_handlers=[(evt.EVT_CONN_OPEN, _set_tcp_nodelay)],
    )
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def _association_failure(assoc: Association, destination: Destination) -> tuple[DeliveryStatus, str]:
    """Classify an association that was not established."""
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    response = assoc.acceptor.primitive
    if assoc.is_rejected and response is not None:
        reason = f"result {response.result_str}, source {response.source_str}, reason {response.reason_str}"
        if response.result == REJECTED_PERMANENT:
            return DeliveryStatus.PERMANENT_FAILURE, f"association rejected by {where} ({reason})"
        return DeliveryStatus.TRANSIENT_FAILURE, f"association rejected by {where} ({reason})"
    if response is None:
        return (
            DeliveryStatus.TRANSIENT_FAILURE,
            f"no association with {where}: connection refused, timed out or aborted",
        )
    return DeliveryStatus.TRANSIENT_FAILURE, f"association with {where} aborted"


def load_dataset(dataset_or_path: Dataset | str | Path) -> Dataset:
    """Return the dataset, reading it from disk when given a path."""
    if isinstance(dataset_or_path, Dataset):
        return dataset_or_path
    return dcmread(dataset_or_path)


def _store(assoc: Association, dataset: Dataset, destination: Destination) -> tuple[DeliveryStatus, int | None, str | None]:
    response = assoc.send_c_store(dataset)
    if "Status" not in response:
        if assoc.is_aborted:
            return DeliveryStatus.TRANSIENT_FAILURE, None, "association aborted during C-STORE"
        return DeliveryStatus.TRANSIENT_FAILURE, None, "no C-STORE response (DIMSE timeout or invalid response)"

    status = int(response.Status)
    outcome = classify_status(status)
    error = None
    if outcome is not DeliveryStatus.SUCCESS:
        comment = response.get("ErrorComment", "")
        error = f"C-STORE status 0x{status:04X} from {destination.ae_title}" + (f": {comment}" if comment else "")
    return outcome, status, error


def send_dataset(
    dataset_or_path: Dataset | str | Path, destination: Destination, settings: Settings
) -> SendResult:
    """Store one SR on ``destination`` by C-STORE (PS3.4 B.2).

    The association proposes the SR's SOP class and the other SR storage
    classes, each with Explicit and Implicit VR Little Endian, so that a
    rejection also reports which classes the destination does accept.

    Parameters
    ----------
    dataset_or_path : pydicom.dataset.Dataset or str or pathlib.Path
        The SR document or its file.
    destination : worker.config.Destination
        Storage SCP to send to.
    settings : worker.config.Settings
        Own AE title, timeouts (``network_timeout``) and maximum PDU size.

    Returns
    -------
    SendResult
        The classified outcome; this function does not raise on network or
        DIMSE failures.
    """
    dataset = load_dataset(dataset_or_path)
    sop_class = str(dataset.SOPClassUID)
    sop_instance = str(dataset.SOPInstanceUID)
    proposed = [sop_class, *(uid for uid in SR_STORAGE_CLASSES if uid != sop_class)]
    result = SendResult(DeliveryStatus.TRANSIENT_FAILURE, sop_class, sop_instance)

    with open_association(destination, settings, proposed) as assoc:
        if not assoc.is_established:
            status, error = _association_failure(assoc, destination)
            return replace(result, status=status, error=error)

        accepted = tuple(
            sorted({str(cx.abstract_syntax) for cx in assoc.accepted_contexts} & set(SR_STORAGE_CLASSES))
        )
        result = replace(result, accepted_sop_classes=accepted)
        if sop_class not in accepted:
            return replace(
                result,
                status=DeliveryStatus.PERMANENT_FAILURE,
                sop_class_rejected=True,
                error=f"{destination.ae_title} does not accept SOP class {sop_class}; "
                f"accepted SR classes: {', '.join(accepted) or 'none'}",
            )

        status, dicom_status, error = _store(assoc, dataset, destination)
        return replace(
            result,
            status=status,
            dicom_status=dicom_status,
            error=error,
            sop_class_rejected=dicom_status == STATUS_SOP_CLASS_NOT_SUPPORTED,
        )


def find_instance(
    study_instance_uid: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    destination: Destination,
    settings: Settings,
) -> bool:
    """Check by C-FIND at IMAGE level whether ``destination`` stores an instance.

    Uses the Study Root Query/Retrieve Information Model with the unique keys
    of all three levels (PS3.4 C.4.1.3.1.1, hierarchical search).

    Returns
    -------
    bool
        True if a pending response names the instance; False if none does or
        the query failed (the failure is logged).
    """
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study_instance_uid
    query.SeriesInstanceUID = series_instance_uid
    query.SOPInstanceUID = sop_instance_uid

    with open_association(destination, settings, [StudyRootQueryRetrieveInformationModelFind]) as assoc:
        if not assoc.is_established:
            _, error = _association_failure(assoc, destination)
            logger.warning("C-FIND for %s failed: %s", sop_instance_uid, error)
            return False

        found = False
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            code = int(status.Status) if "Status" in status else None
            if code in (STATUS_PENDING, STATUS_PENDING_WARNING) and identifier is not None:
                found = found or identifier.get("SOPInstanceUID") == sop_instance_uid
            elif code != STATUS_SUCCESS:
                logger.warning(
                    "C-FIND for %s on %s ended with status %s",
                    sop_instance_uid, destination.ae_title, "none" if code is None else f"0x{code:04X}",
                )
        return found


def _confirm(dataset: Dataset, destination: Destination, settings: Settings) -> bool:
    return find_instance(
        str(dataset.StudyInstanceUID),
        str(dataset.SeriesInstanceUID),
        str(dataset.SOPInstanceUID),
        destination,
        settings,
    )


def deliver_with_retries(
    dataset_or_path: Dataset | str | Path,
    destination: Destination,
    settings: Settings,
    record_attempt: Callable[[DeliveryAttempt], None] | None = None,
    confirm: bool | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> SendResult:
    """Send one SR to ``destination``, retrying transient failures with backoff.

    Up to ``settings.delivery_max_attempts`` attempts; the n-th retry waits
    ``settings.delivery_backoff * 2 ** (n - 1)`` seconds. Permanent failures
    and a SOP class the destination does not accept end the loop at once. The
    same dataset, and so the same SOP Instance UID, is sent every time.

    Parameters
    ----------
    dataset_or_path : pydicom.dataset.Dataset or str or pathlib.Path
        The SR document or its file.
    destination : worker.config.Destination
        Storage SCP to send to.
    settings : worker.config.Settings
        Retry limits, backoff, timeouts and ``confirm_delivery``.
    record_attempt : callable, optional
        Called after every attempt, for example to write a ``delivery`` row
        with :func:`record_delivery`.
    confirm : bool, optional
        Check the delivered SR by C-FIND; defaults to ``settings.confirm_delivery``.
    sleep : callable
        Waits between attempts; tests pass a recorder.

    Returns
    -------
    SendResult
        The result of the last attempt.
    """
    dataset = load_dataset(dataset_or_path)
    confirm = settings.confirm_delivery if confirm is None else confirm
    attempts = settings.delivery_max_attempts
    result: SendResult | None = None

    for attempt in range(1, attempts + 1):
        result = send_dataset(dataset, destination, settings)
        if result.delivered and confirm:
            result = replace(result, confirmed=_confirm(dataset, destination, settings))
        if record_attempt is not None:
            record_attempt(DeliveryAttempt(destination, attempt, result))

        if result.delivered:
            logger.info(
                "delivered SR %s to %s (attempt %d/%d, %s)",
                result.sop_instance_uid, destination.ae_title, attempt, attempts, result.status.value,
            )
            return result
        if not result.retryable:
            logger.error(
                "delivery of SR %s to %s failed permanently (attempt %d/%d): %s",
                result.sop_instance_uid, destination.ae_title, attempt, attempts, result.error,
            )
            return result
        if attempt < attempts:
            delay = settings.delivery_backoff * 2 ** (attempt - 1)
            logger.warning(
                "delivery of SR %s to %s failed (attempt %d/%d): %s; retrying in %.1f s",
                result.sop_instance_uid, destination.ae_title, attempt, attempts, result.error, delay,
            )
            sleep(delay)

    assert result is not None
    logger.error(
        "delivery of SR %s to %s failed after %d attempts: %s",
        result.sop_instance_uid, destination.ae_title, attempts, result.error,
    )
    return result


def record_delivery(session: Session, report_id: int, attempt: DeliveryAttempt) -> Delivery:
    """Add one ``delivery`` row for ``attempt`` to ``session`` (not committed)."""
    from worker.db.models import Delivery

    row = Delivery(
        report_id=report_id,
        destination_ae_title=attempt.destination.ae_title,
        destination_host=attempt.destination.host,
        destination_port=attempt.destination.port,
        attempt=attempt.attempt,
        status=attempt.result.status,
        dicom_status=attempt.result.dicom_status,
        sop_class_uid=attempt.result.sop_class_uid,
        sop_instance_uid=attempt.result.sop_instance_uid,
        error=attempt.result.error,
        confirmed=attempt.result.confirmed,
        attempted_at=attempt.attempted_at,
    )
    session.add(row)
    return row
