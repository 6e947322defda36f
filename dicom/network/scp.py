"""DICOM Storage SCP of the worker: C-ECHO and C-STORE of CT, PET and Segmentation instances.

The PACS forwards each PET/CT study and its SEG here. Every instance is stored
exactly as received (:mod:`dicom.network.spool`) with its database row
(:mod:`worker.ingest`), and only then is Success returned, so an acknowledged
instance survives a crash. Then :mod:`worker.completeness` decides whether the
study is ready for analysis.

Access control happens at association negotiation (PS3.8 section 7.1.1.9):
an unknown calling AE title is rejected permanently with reason 3 "calling-AE-title-not-recognized",
a source address outside ``Settings.allowed_source_addresses`` with reason 1 "no-reason-given".
Presentation contexts are accepted only with transfer syntaxes that the
installed pydicom pixel data decoders can read, so an instance in a syntax
without a decoder is refused at negotiation instead of failing after transfer.
A compressed stream that the decoder rejects still fails after transfer with
0xC000, because the first frame is decoded before Success is returned.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import socket
import ssl
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.filebase import DicomBytesIO
from pydicom.pixels import get_decoder
from pydicom.pixels.utils import get_expected_length
from pynetdicom import AE, _config, evt, sop_class
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE, A_P_ABORT
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError

from dicom.network.spool import Spool, SpoolFullError
from worker import metrics
from worker.completeness import CompletenessTracker
from worker.config import Settings
from worker.ingest import (
    InstanceIdentity,
    InstanceStore,
    SeriesInOtherStudyError,
    StoreOutcome,
    StoreResult,
)

LOGGER = logging.getLogger(__name__)

# C-STORE response statuses, PS3.4 Table B.2-1 and PS3.7 Annex C.
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A-ASSOCIATE-RJ fields, PS3.8 section 9.3.4.
RESULT_REJECTED_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
DIAGNOSTIC_NO_REASON_GIVEN = 0x01

# Label ``reason`` of hclal_instances_rejected_total for each A-ASSOCIATE-RJ
# (source, diagnostic) pair; other pairs count as "association_rejected". The
# source address check is the only sender of "service user, no reason given".
ASSOCIATION_REJECT_REASONS = {
    (SOURCE_SERVICE_USER, DIAGNOSTIC_NO_REASON_GIVEN): "disallowed_address",
    (SOURCE_SERVICE_USER, 0x03): "disallowed_ae",  # calling-AE-title-not-recognized
    (0x03, 0x02): "too_many_associations",  # presentation related, local-limit-exceeded
}

# Label ``reason`` of hclal_instances_rejected_total for each C-STORE failure.
REASON_INVALID = "invalid"
REASON_UNDECODABLE = "undecodable"
REASON_OUT_OF_RESOURCES = "out_of_resources"
REASON_CONFLICT = "conflict"

STORAGE_SOP_CLASSES = (
    sop_class.CTImageStorage,
    sop_class.EnhancedCTImageStorage,
    sop_class.PositronEmissionTomographyImageStorage,
    sop_class.EnhancedPETImageStorage,
    sop_class.SegmentationStorage,
)

UNCOMPRESSED_TRANSFER_SYNTAXES = (
    dicom_uid.ExplicitVRLittleEndian,
    dicom_uid.ImplicitVRLittleEndian,
    dicom_uid.DeflatedExplicitVRLittleEndian,
)

# Compressed syntaxes a PACS sends; each is offered only if a decoder is installed.
COMPRESSED_TRANSFER_SYNTAXES = (
    dicom_uid.JPEGBaseline8Bit,
    dicom_uid.JPEGExtended12Bit,
    dicom_uid.JPEGLossless,
    dicom_uid.JPEGLosslessSV1,
    dicom_uid.JPEGLSLossless,
    dicom_uid.JPEGLSNearLossless,
    dicom_uid.JPEG2000Lossless,
    dicom_uid.JPEG2000,
    dicom_uid.HTJ2KLossless,
    dicom_uid.HTJ2KLosslessRPCL,
    dicom_uid.HTJ2K,
    dicom_uid.RLELossless,
)


def accepted_transfer_syntaxes() -> list[str]:
    """Return the accepted transfer syntaxes: uncompressed and decodable compressed ones."""
    accepted = list(UNCOMPRESSED_TRANSFER_SYNTAXES)
    for syntax in COMPRESSED_TRANSFER_SYNTAXES:
        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if available:
            accepted.append(syntax)
        else:
            LOGGER.info("no pixel data decoder installed for %s; it is not accepted", syntax.name)
    return accepted


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """Return the TLS context of the SCP, or None when no certificate is configured.

    With ``tls_ca`` set, peers must present a certificate signed by that CA
    (DICOM Secure Transport Connection Profile, PS3.15 B.1).

    Raises
    ------
    ValueError
        If only one of certificate and key is set or a file cannot be loaded; the
        message names the setting.
    """
    if settings.tls_certificate is None and settings.tls_key is None:
        return None
    if settings.tls_certificate is None or settings.tls_key is None:
        raise ValueError("DICOM TLS needs both HCLAL_TLS_CERTIFICATE and HCLAL_TLS_KEY")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_certificate, settings.tls_key)
    except OSError as exc:  # ssl.SSLError is an OSError too
        raise ValueError(
            f"cannot load the TLS certificate {settings.tls_certificate} with the key "
            f"{settings.tls_key}: {exc.strerror or exc}; set HCLAL_TLS_CERTIFICATE and "
            "HCLAL_TLS_KEY to a readable PEM certificate and its private key"
        ) from exc
    if settings.tls_ca is not None:
        try:
            context.load_verify_locations(cafile=settings.tls_ca)
        except OSError as exc:
            raise ValueError(
                f"cannot load the TLS CA bundle {settings.tls_ca}: {exc.strerror or exc}; "
                "set HCLAL_TLS_CA to a readable PEM file"
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class InvalidInstanceError(ValueError):
    """A received data set cannot be stored; ``status`` is the C-STORE failure status to send."""

    def __init__(self, message: str, status: int = STATUS_CANNOT_UNDERSTAND) -> None:
        super().__init__(message)
        self.status = status


def check_instance(dataset: Dataset, request_sop_class: str, request_sop_instance: str) -> None:
    """Check that a data set matches its C-STORE request and that its pixel data is complete.

    Raises
    ------
    InvalidInstanceError
        With status 0xA900 if the SOP Class UID differs from the request's
        Affected SOP Class UID, else 0xC000 with the reason.
    """
    if str(dataset.SOPClassUID) != str(request_sop_class):
        raise InvalidInstanceError(
            f"SOPClassUID {dataset.SOPClassUID} differs from the request's {request_sop_class}",
            STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    if str(dataset.SOPInstanceUID) != str(request_sop_instance):
        raise InvalidInstanceError(
            f"SOPInstanceUID {dataset.SOPInstanceUID} differs from the request's "
            f"{request_sop_instance}"
        )
    if "PixelData" not in dataset:
        raise InvalidInstanceError("Pixel Data (7FE0,0010) is missing")

    syntax = dataset.file_meta.TransferSyntaxUID
    if syntax.is_encapsulated:
        _check_encapsulated_pixel_data(dataset.PixelData)
        _check_first_frame_decodes(dataset, syntax)
    else:
        _check_native_pixel_data(dataset)


def _check_native_pixel_data(dataset: Dataset) -> None:
    for keyword in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel"):
        if keyword not in dataset:
            raise InvalidInstanceError(f"{keyword} is missing from an image with Pixel Data")
    expected = get_expected_length(dataset, unit="bytes")
    actual = len(dataset.PixelData)
    if actual < expected:
        raise InvalidInstanceError(
            f"Pixel Data has {actual} bytes but Rows, Columns, Bits Allocated, Samples per "
            f"Pixel and Number of Frames need {expected}"
        )


def _check_encapsulated_pixel_data(value: bytes) -> None:
    """Check that encapsulated Pixel Data is a sequence of items with a frame (PS3.5 A.4)."""
    stream = DicomBytesIO(value)
    stream.is_little_endian = True
    try:
        fragments = sum(1 for _ in generate_fragments(stream))
    except ValueError as exc:
        raise InvalidInstanceError(f"encapsulated Pixel Data is malformed: {exc}") from exc
    if fragments < 2:
        # The first item is the Basic Offset Table, so an image needs at least two.
        raise InvalidInstanceError("encapsulated Pixel Data has no compressed frame")


def _start_of(stream: io.BytesIO) -> bytes:
    """Return the first bytes of ``stream``, enough for a tag and a VR, without copying the rest."""
    with stream.getbuffer() as view:
        return bytes(view[:64])


def _check_first_frame_decodes(dataset: Dataset, syntax: dicom_uid.UID) -> None:
    """Decode the first frame, so that a compressed stream the decoders reject fails now.

    The other frames are not decoded, to keep the cost per instance at one frame.
    """
    try:
        get_decoder(syntax).as_array(dataset, index=0)
    except Exception as exc:  # noqa: BLE001 - each decoder plugin raises its own types
        raise InvalidInstanceError(
            f"frame 1 of the Pixel Data cannot be decoded as {syntax.name}: {exc}"
        ) from exc


def check_encoding(encoded: bytes, transfer_syntax: dicom_uid.UID) -> None:
    """Check that a data set's first element uses the VR encoding of the negotiated syntax.

    ``encoded`` is the start of the data set as received, at least its first 6 bytes.
    When the first element contradicts the context's VR encoding, pydicom reads the
    data set with the encoding it finds, so the data set decodes. The SCP stores
    the received bytes under File Meta Information that names the negotiated
    syntax, though, and that file could not be read back. Explicit VR is detected
    as pydicom 3.0 does it: two uppercase letters after the first tag.

    Raises
    ------
    InvalidInstanceError
        With status 0xC000 if the encodings differ.
    """
    if transfer_syntax.is_deflated:
        encoded = zlib.decompressobj(-zlib.MAX_WBITS).decompress(encoded, 6)
    if len(encoded) < 6:
        return
    found_explicit = all(0x40 < byte < 0x5B for byte in encoded[4:6])
    if found_explicit != transfer_syntax.is_implicit_VR:
        return
    found = "explicit" if found_explicit else "implicit"
    raise InvalidInstanceError(
        f"data set is encoded with {found} VR, but the presentation context's transfer "
        f"syntax is {transfer_syntax.name}"
    )


@dataclass
class _AssociationCounts:
    calling_ae_title: str
    address: str
    outcomes: Counter = field(default_factory=Counter)


class _AccessControlledACSE(ACSE):
    """ACSE that rejects association requests from source addresses outside the allowed networks."""

    def __init__(self, assoc: Association, allowed_networks: list[IPNetwork]) -> None:
        super().__init__(assoc)
        self._allowed_networks = allowed_networks

    def _negotiate_as_acceptor(self) -> None:
        address = self.assoc.requestor.address
        if not isinstance(self.requestor.primitive, A_ASSOCIATE):
            # _end_on_invalid_request() put an A-P-ABORT in place of the request.
            LOGGER.warning(
                "closing connection from %s: its first PDU was no valid A-ASSOCIATE-RQ "
                "(pynetdicom.dul logs why)",
                address,
            )
            self.assoc.is_aborted = True
            self.assoc.kill()
            return
        if not _address_allowed(address, self._allowed_networks):
            calling = self.requestor.primitive.calling_ae_title if self.requestor.primitive else "?"
            LOGGER.warning(
                "rejecting association from %s (AE %s): source address not allowed",
                address,
                calling,
            )
            self.send_reject(
                RESULT_REJECTED_PERMANENT, SOURCE_SERVICE_USER, DIAGNOSTIC_NO_REASON_GIVEN
            )
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        super()._negotiate_as_acceptor()

    def send_reject(self, result: int, source: int, diagnostic: int) -> None:
        reason = ASSOCIATION_REJECT_REASONS.get((source, diagnostic), "association_rejected")
        metrics.INSTANCES_REJECTED.labels(reason=reason).inc()
        super().send_reject(result, source, diagnostic)


def _end_on_invalid_request(event: evt.Event) -> None:
    """Wake the acceptor's wait for an A-ASSOCIATE-RQ when the DUL has aborted the request.

    When the first PDU cannot be decoded (an AE title outside the Default Character
    Repertoire, for example), pynetdicom 3.0.4's DUL sends an A-ABORT and moves from
    Sta2 to Sta13 without telling the association thread. That thread waits for the
    request until the ACSE timeout and occupies one of the ``maximum_associations``
    slots meanwhile, so this handler puts an A-P-ABORT on its queue.
    """
    if event.current_state == "Sta2" and event.next_state == "Sta13":
        event.assoc.dul.to_user_queue.put(A_P_ABORT())


def _address_allowed(address: str, networks: list[IPNetwork]) -> bool:
    if not networks:
        return True
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(peer in network for network in networks)


class _RequestHandler(RequestHandler):
    """Per-connection handler: sets TCP_NODELAY and installs the address check."""

    def handle(self) -> None:
        # Small DIMSE responses must not wait for Nagle's algorithm (up to 40 ms each).
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle()

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        assoc.acse = _AccessControlledACSE(assoc, self.server.allowed_networks)
        assoc.bind(evt.EVT_FSM_TRANSITION, _end_on_invalid_request)
        return assoc


class _Server(ThreadedAssociationServer):
    """Association server that carries the allowed source networks to its request handlers."""

    allowed_networks: list[IPNetwork]


class StorageSCP:
    """The worker's C-ECHO and C-STORE service provider.

    Parameters
    ----------
    settings
        AE title, address, port, access lists, TLS files and timeouts are read from them.
    store
        Writes each instance's file and rows.
    tracker
        Told about every stored instance; None disables completeness tracking.
    """

    def __init__(
        self, settings: Settings, store: InstanceStore, tracker: CompletenessTracker | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.tracker = tracker
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._counts: dict[int, _AssociationCounts] = {}
        self._counts_lock = threading.Lock()
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        # Identifier data sets of C-FIND/C-MOVE can hold patient names; keep them out of the log.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False

        ae = AE(ae_title=self.settings.ae_title)
        ae.maximum_pdu_size = self.settings.max_pdu_size
        ae.network_timeout = self.settings.network_timeout
        ae.dimse_timeout = self.settings.network_timeout
        ae.acse_timeout = self.settings.network_timeout
        ae.require_calling_aet = list(self.settings.allowed_calling_ae_titles)
        ae.maximum_associations = 64

        syntaxes = accepted_transfer_syntaxes()
        ae.add_supported_context(sop_class.Verification, list(UNCOMPRESSED_TRANSFER_SYNTAXES[:2]))
        for storage_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(storage_class, syntaxes)
        return ae

    @property
    def port(self) -> int:
        """The TCP port the server listens on (useful when started with port 0)."""
        if self._server is None:
            raise RuntimeError("the SCP is not running")
        return self._server.server_address[1]

    def start(self) -> None:
        """Start listening in a background thread."""
        handlers = [
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_RELEASED, self._handle_end),
            (evt.EVT_ABORTED, self._handle_end),
            (evt.EVT_REJECTED, self._handle_rejected),
        ]
        address = (self.settings.scp_host, self.settings.scp_port)
        server = self.ae.make_server(
            address,
            ssl_context=server_ssl_context(self.settings),
            evt_handlers=handlers,
            server_class=_Server,
            request_handler=_RequestHandler,
        )
        server.allowed_networks = [
            ipaddress.ip_network(entry, strict=False)
            for entry in self.settings.allowed_source_addresses
        ]
        # pynetdicom's shutdown() expects its servers in this list, as start_server() leaves them.
        self.ae._servers.append(server)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="storage-scp", daemon=True
        )
        self._thread.start()
        LOGGER.info(
            "storage SCP %s listening on %s:%d%s",
            self.settings.ae_title,
            self.settings.scp_host,
            self.port,
            " with TLS" if server.ssl_context else "",
        )

    def stop(self, grace_period: float = 10.0) -> None:
        """Stop accepting associations and close the socket.

        Open associations get ``grace_period`` seconds to finish; the ones still
        open after that are aborted (A-ABORT), so their unacknowledged instances
        are sent again by the peer.
        """
        if self._server is None:
            return
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join()
        self._server = None

        open_associations = [a for a in self.ae.active_associations if a.is_acceptor]
        if open_associations:
            LOGGER.info(
                "waiting up to %.0f s for %d open associations",
                grace_period,
                len(open_associations),
            )
        deadline = time.monotonic() + grace_period
        for assoc in open_associations:
            assoc.join(max(deadline - time.monotonic(), 0))
            if assoc.is_alive():
                LOGGER.warning("aborting association from %s at shutdown", assoc.requestor.ae_title)
                assoc.abort()
        LOGGER.info("storage SCP %s stopped", self.settings.ae_title)

    def _handle_echo(self, event: evt.Event) -> int:
        LOGGER.debug("C-ECHO from %s", event.assoc.requestor.ae_title)
        return STATUS_SUCCESS

    def _handle_store(self, event: evt.Event) -> int:
        """Store one instance; return Success only once its file and row are committed."""
        calling = event.assoc.requestor.ae_title
        request = event.request
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            check_encoding(_start_of(event.request.DataSet), event.context.transfer_syntax)
            check_instance(dataset, request.AffectedSOPClassUID, request.AffectedSOPInstanceUID)
            identity = InstanceIdentity.from_dataset(dataset, str(event.context.transfer_syntax))
        except InvalidInstanceError as exc:
            return self._fail(event, exc.status, REASON_INVALID, str(exc))
        except Exception as exc:  # noqa: BLE001 - pydicom's deferred decoding raises many types
            return self._fail(
                event, STATUS_CANNOT_UNDERSTAND, REASON_UNDECODABLE, f"data set cannot be decoded: {exc}"
            )

        try:
            result = self.store.store(event.encoded_dataset(), identity, calling)
        except SeriesInOtherStudyError as exc:
            return self._fail(event, STATUS_CANNOT_UNDERSTAND, REASON_INVALID, str(exc))
        except SpoolFullError as exc:
            return self._fail(
                event, STATUS_OUT_OF_RESOURCES, REASON_OUT_OF_RESOURCES, str(exc), error=True
            )
        except OSError as exc:
            return self._fail(
                event,
                STATUS_OUT_OF_RESOURCES,
                REASON_OUT_OF_RESOURCES,
                f"cannot write to the spool: {exc}",
                error=True,
            )
        except SQLAlchemyError as exc:
            # The driver's message only: SQLAlchemy's own text lists the bound parameters,
            # which include the patient's name for a new study.
            reason = str(getattr(exc, "orig", None) or type(exc).__name__).splitlines()[0]
            return self._fail(
                event,
                STATUS_OUT_OF_RESOURCES,
                REASON_OUT_OF_RESOURCES,
                f"cannot record the instance: {reason}",
                error=True,
            )

        self._count(event, result.outcome.value)
        if result.outcome is StoreOutcome.CONFLICT:
            # Answered with Success (the peer must not resend it), but kept out of the study.
            metrics.INSTANCES_REJECTED.labels(reason=REASON_CONFLICT).inc()
        else:
            metrics.INSTANCES_RECEIVED.labels(modality=identity.modality or "unknown").inc()
        LOGGER.debug(
            "%s SOP Instance %s from %s", result.outcome.value, identity.sop_instance_uid, calling
        )
        if self.tracker is not None and result.outcome is StoreOutcome.STORED:
            self._track(result, dataset)
        return STATUS_SUCCESS

    def _track(self, result: StoreResult, dataset: Dataset) -> None:
        try:
            self.tracker.instance_stored(result, dataset)
        except Exception:  # noqa: BLE001 - stored anyway; the quiet period completes the study
            LOGGER.exception(
                "completeness check failed after storing SOP Instance %s of study %s",
                result.identity.sop_instance_uid,
                result.identity.study_instance_uid,
            )

    def _fail(
        self, event: evt.Event, status: int, metric_reason: str, reason: str, *, error: bool = False
    ) -> int:
        request = event.request
        log = LOGGER.error if error else LOGGER.warning
        log(
            "C-STORE of SOP Instance %s (class %s) from %s failed with status 0x%04X: %s",
            request.AffectedSOPInstanceUID,
            request.AffectedSOPClassUID,
            event.assoc.requestor.ae_title,
            status,
            reason,
        )
        self._count(event, "failed")
        metrics.INSTANCES_REJECTED.labels(reason=metric_reason).inc()
        return status

    def _count(self, event: evt.Event, outcome: str) -> None:
        key = id(event.assoc)
        with self._counts_lock:
            counts = self._counts.get(key)
            if counts is None:
                requestor = event.assoc.requestor
                counts = self._counts[key] = _AssociationCounts(
                    requestor.ae_title, requestor.address
                )
            counts.outcomes[outcome] += 1

    def _handle_end(self, event: evt.Event) -> None:
        with self._counts_lock:
            counts = self._counts.pop(id(event.assoc), None)
        if counts is None:
            return
        ending = "released" if event.event is evt.EVT_RELEASED else "aborted"
        LOGGER.info(
            "association from %s (%s) %s: %d stored, %d duplicate, %d conflict, %d failed",
            counts.calling_ae_title,
            counts.address,
            ending,
            counts.outcomes[StoreOutcome.STORED.value],
            counts.outcomes[StoreOutcome.DUPLICATE.value],
            counts.outcomes[StoreOutcome.CONFLICT.value],
            counts.outcomes["failed"],
        )

    def _handle_rejected(self, event: evt.Event) -> None:
        LOGGER.info(
            "association from %s (%s) rejected",
            event.assoc.requestor.ae_title,
            event.assoc.requestor.address,
        )


def create_scp(
    settings: Settings,
    *,
    enqueue: Callable[[int], None] | None = None,
    auto_migrate: bool | None = None,
) -> StorageSCP:
    """Build the SCP with its spool, database store and completeness tracker from ``settings``.

    ``enqueue`` receives the id of each queued analysis; the default is
    :func:`worker.queue.enqueue_analysis`. The database must be at the migration
    head (SQLite is migrated automatically unless ``auto_migrate`` is False).
    """
    from worker.db.session import get_engine  # noqa: PLC0415

    engine = get_engine(settings.effective_database_url, auto_migrate=auto_migrate)
    store = InstanceStore(engine, Spool(settings.spool_dir))
    tracker = CompletenessTracker(engine, settings, enqueue)
    return StorageSCP(settings, store, tracker)
