"""Store one received instance: its file in the spool and its study, series and instance rows.

The C-STORE SCP calls :meth:`InstanceStore.store` for every instance and returns Success
to the peer only after it returns, so an acknowledged instance is both on disk and
committed. The file and its folder are flushed to disk before the commit. The commit
itself does not wait for the database's log to reach the disk (SQLite
``synchronous=NORMAL``, PostgreSQL ``synchronous_commit=off``): a power failure can lose
the last rows, and :meth:`InstanceStore.record_unrecorded_files`, run before the SCP
starts, records the spool files that have no row. That saves one of three disk flushes
per instance. Concurrent associations may create the same study or series row at the
same moment; the insert skips an existing row (``ON CONFLICT DO NOTHING``) and then
reads it, so neither association fails and no duplicate row appears.
"""

from __future__ import annotations

import enum
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError

from dicom.network.spool import Spool, SpooledFile, check_uid_path_component, sha256_of
from worker.db.models import Event, Instance, Series, Study, StudyState, utcnow

LOGGER = logging.getLogger(__name__)

# SQLite raises "database is locked" when another process holds the write lock for
# longer than the busy timeout; the transaction is retried this many times.
SQLITE_LOCKED_RETRIES = 3

# Granularity of study.last_received_at, which only the quiet period reads.
LAST_RECEIVED_RESOLUTION = timedelta(seconds=1)

# Files modified up to this long before the newest recorded instance are checked for a
# row at start. Rows commit within milliseconds of their file, and a lost log tail
# contains only the newest rows.
RECOVERY_MARGIN = timedelta(minutes=5)
_RECOVERY_BATCH = 500

_LOCK_STRIPES = 64
_T = TypeVar("_T")

_SQLITE_WRITE_LOCKS: dict[str, threading.Lock] = {}
_SQLITE_WRITE_LOCKS_GUARD = threading.Lock()


def write_lock(engine: Engine) -> AbstractContextManager:
    """Return the lock that this process's writers to ``engine`` hold around a transaction.

    SQLite has one writer at a time, and a transaction that reads before it writes
    fails at once (SQLITE_BUSY) if another connection committed in between, so the
    SCP's threads take turns. Other databases get a no-op context.
    """
    if engine.dialect.name != "sqlite":
        return nullcontext()
    key = engine.url.render_as_string(hide_password=False)
    with _SQLITE_WRITE_LOCKS_GUARD:
        return _SQLITE_WRITE_LOCKS.setdefault(key, threading.Lock())


class SeriesInOtherStudyError(ValueError):
    """The instance's Series Instance UID is already recorded under another study."""


class StoreOutcome(str, enum.Enum):
    """Outcome of storing one instance."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class InstanceIdentity:
    """The attributes of a received instance that the worker records.

    Patient name, ID and birth date go to the ``study`` row only and are left out of ``repr``.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    frame_of_reference_uid: str | None = None
    patient_name: str | None = field(default=None, repr=False)
    patient_id: str | None = field(default=None, repr=False)
    patient_birth_date: str | None = field(default=None, repr=False)
    accession_number: str | None = None
    study_date: str | None = None
    study_description: str | None = None

    @classmethod
    def from_dataset(cls, dataset: Dataset, transfer_syntax_uid: str) -> InstanceIdentity:
        """Read the identity of ``dataset``.

        Raises
        ------
        ValueError
            If a Study, Series or SOP Instance UID or the SOP Class UID is missing or
            is not a valid UID (PS3.5 section 9.1).
        """
        uids = {}
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
            value = dataset.get(keyword)
            if value is None or str(value) == "":
                raise ValueError(f"{keyword} is missing")
            uids[keyword] = check_uid_path_component(str(value), keyword)

        series_number = dataset.get("SeriesNumber")
        return cls(
            study_instance_uid=uids["StudyInstanceUID"],
            series_instance_uid=uids["SeriesInstanceUID"],
            sop_instance_uid=uids["SOPInstanceUID"],
            sop_class_uid=uids["SOPClassUID"],
            transfer_syntax_uid=transfer_syntax_uid,
            modality=_text(dataset, "Modality", 16),
            series_description=_text(dataset, "SeriesDescription", 64),
            series_number=int(series_number) if series_number not in (None, "") else None,
            frame_of_reference_uid=_text(dataset, "FrameOfReferenceUID", 64),
            patient_name=_text(dataset, "PatientName", 324),
            patient_id=_text(dataset, "PatientID", 64),
            patient_birth_date=_text(dataset, "PatientBirthDate", 8),
            accession_number=_text(dataset, "AccessionNumber", 16),
            study_date=_text(dataset, "StudyDate", 8),
            study_description=_text(dataset, "StudyDescription", 64),
        )


@dataclass(frozen=True)
class StoreResult:
    """The outcome of storing one instance.

    ``study_was_receiving`` is False when the study had already been completed
    when this instance was committed, which makes the instance a late arrival.
    """

    outcome: StoreOutcome
    identity: InstanceIdentity
    path: Path
    sha256: str
    study_was_receiving: bool


class InstanceStore:
    """Spool files and their database rows, written together for each received instance.

    Parameters
    ----------
    engine
        Engine of the worker database, schema at head.
    spool
        The spool that contains the files.

    Notes
    -----
    Instances with the same SOP Instance UID are serialised by an in-process lock,
    so one SCP process must own a spool folder.
    """

    def __init__(self, engine: Engine, spool: Spool) -> None:
        self.engine = engine
        self.spool = spool
        self._sop_locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._is_sqlite = engine.dialect.name == "sqlite"
        # (Study, Series Instance UID) -> series.id; series rows never change once written.
        self._series_ids: dict[tuple[str, str], int] = {}

    def store(
        self, data: bytes, identity: InstanceIdentity, calling_ae_title: str | None
    ) -> StoreResult:
        """Store the encoded instance ``data`` (preamble, file meta and data set).

        Raises
        ------
        dicom.network.spool.SpoolFullError
            If the spool's file system is full.
        OSError
            If the file cannot be written.
        SeriesInOtherStudyError
            If the series is recorded under another study; an ``event`` row records
            the instance and its file is removed again.
        sqlalchemy.exc.SQLAlchemyError
            If the rows cannot be committed; the new file is removed again.
        """
        path = self.spool.path_for(
            identity.study_instance_uid, identity.series_instance_uid, identity.sop_instance_uid
        )
        with self._sop_lock(identity.sop_instance_uid):
            # A file at the instance's path means it was probably stored before. Checking
            # the file instead of the database keeps a query off the path of new instances.
            digest = None
            if path.exists():
                digest = sha256_of(data)
                stored = self._compare_with_stored(data, digest, identity, calling_ae_title, path)
                if stored is not None:
                    return stored

            spooled = self.spool.write(data, path, digest)
            try:
                was_receiving = self._write(
                    lambda connection: self._insert_rows(
                        connection, identity, spooled, calling_ae_title
                    ),
                    flush_log=False,
                )
            except IntegrityError:
                # The SOP Instance UID is stored under another study or series path.
                self.spool.remove(spooled.path)
                stored = self._compare_with_stored(
                    data, spooled.sha256, identity, calling_ae_title, path
                )
                if stored is None:
                    raise
                return stored
            except SeriesInOtherStudyError:
                self.spool.remove(spooled.path)
                self._record_series_in_other_study(identity, calling_ae_title)
                raise
            except BaseException:
                self.spool.remove(spooled.path)
                raise
        return StoreResult(
            StoreOutcome.STORED, identity, spooled.path, spooled.sha256, was_receiving
        )

    def record_unrecorded_files(self) -> int:
        """Add the instance rows of spool files that have none; return how many were added.

        Run it before the SCP starts. A file without a row is left by a power failure
        that lost the newest commits, or by a crash between the rename and the commit.
        When the database has instance rows, only files modified since
        ``RECOVERY_MARGIN`` before the newest one are read. Files that cannot be read
        as DICOM or do not match their place in the spool are logged and left alone.
        """
        newest = self._newest_received_at()
        since = (newest - RECOVERY_MARGIN).timestamp() if newest is not None else None
        candidates = list(self.spool.instance_files(modified_since=since))

        recorded = 0
        for start in range(0, len(candidates), _RECOVERY_BATCH):
            batch = candidates[start : start + _RECOVERY_BATCH]
            known = self._recorded_uids([path.stem for path in batch])
            recorded += sum(self._record_file(path) for path in batch if path.stem not in known)
        if recorded:
            LOGGER.warning(
                "recorded %d spool files that had no instance row (of %d checked)",
                recorded,
                len(candidates),
            )
        return recorded

    def _newest_received_at(self) -> datetime | None:
        with self.engine.connect() as connection:
            newest = connection.scalar(select(func.max(Instance.received_at)))
        if newest is not None and newest.tzinfo is None:
            newest = newest.replace(tzinfo=timezone.utc)
        return newest

    def _recorded_uids(self, sop_instance_uids: list[str]) -> set[str]:
        with self.engine.connect() as connection:
            return set(
                connection.scalars(
                    select(Instance.sop_instance_uid).where(
                        Instance.sop_instance_uid.in_(sop_instance_uids)
                    )
                )
            )

    def _record_file(self, path: Path) -> bool:
        try:
            data = path.read_bytes()
            dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            syntax = str(dataset.file_meta.TransferSyntaxUID)
            identity = InstanceIdentity.from_dataset(dataset, syntax)
        except (OSError, InvalidDicomError, AttributeError, ValueError) as exc:
            LOGGER.error("cannot record spool file %s: %s", path, exc)
            return False

        expected = self.spool.path_for(
            identity.study_instance_uid, identity.series_instance_uid, identity.sop_instance_uid
        )
        if expected != path:
            LOGGER.error(
                "cannot record spool file %s: its UIDs place it at %s", path, expected
            )
            return False

        spooled = SpooledFile(path, len(data), sha256_of(data))
        try:
            self._write(lambda connection: self._insert_rows(connection, identity, spooled, None))
        except (IntegrityError, SeriesInOtherStudyError) as exc:
            LOGGER.error(
                "cannot record spool file %s of study %s: %s",
                path,
                identity.study_instance_uid,
                str(getattr(exc, "orig", None) or exc).splitlines()[0],
            )
            return False
        return True

    def _compare_with_stored(
        self,
        data: bytes,
        digest: str,
        identity: InstanceIdentity,
        calling_ae_title: str | None,
        path: Path,
    ) -> StoreResult | None:
        """Return the duplicate or conflict result if the SOP Instance UID has a row, else None."""
        stored_digest = self._stored_digest(identity.sop_instance_uid)
        if stored_digest is None:
            # A file without a row is left from a crash between rename and commit.
            return None
        if stored_digest == digest:
            return StoreResult(StoreOutcome.DUPLICATE, identity, path, digest, True)
        return self._keep_conflict(data, identity, calling_ae_title, stored_digest)

    def _keep_conflict(
        self,
        data: bytes,
        identity: InstanceIdentity,
        calling_ae_title: str | None,
        stored_digest: str,
    ) -> StoreResult:
        spooled = self.spool.write_conflict(data, identity.sop_instance_uid)
        LOGGER.warning(
            "SOP Instance %s from %s differs from the stored copy; kept aside as %s",
            identity.sop_instance_uid,
            calling_ae_title,
            spooled.path.name,
        )
        self._add_event(
            "instance_conflict",
            identity,
            "a different data set arrived under a stored SOP Instance UID; "
            "the stored file was kept and the new one set aside",
            {
                "stored_sha256": stored_digest,
                "received_sha256": spooled.sha256,
                "conflict_file": str(spooled.path),
                "calling_ae_title": calling_ae_title,
            },
        )
        return StoreResult(StoreOutcome.CONFLICT, identity, spooled.path, spooled.sha256, True)

    def _record_series_in_other_study(
        self, identity: InstanceIdentity, calling_ae_title: str | None
    ) -> None:
        LOGGER.warning(
            "SOP Instance %s from %s names study %s, but its series %s belongs to another study",
            identity.sop_instance_uid,
            calling_ae_title,
            identity.study_instance_uid,
            identity.series_instance_uid,
        )
        self._add_event(
            "series_in_other_study",
            identity,
            "an instance named a Series Instance UID that is recorded under another study; "
            "it was rejected",
            {
                "series_instance_uid": identity.series_instance_uid,
                "calling_ae_title": calling_ae_title,
            },
        )

    def _add_event(
        self, kind: str, identity: InstanceIdentity, message: str, details: dict
    ) -> None:
        event = insert(Event).values(
            kind=kind,
            study_instance_uid=identity.study_instance_uid,
            sop_instance_uid=identity.sop_instance_uid,
            message=message,
            details=details,
        )
        self._write(lambda connection: connection.execute(event))

    def _stored_digest(self, sop_instance_uid: str) -> str | None:
        with self.engine.connect() as connection:
            return connection.execute(
                select(Instance.sha256).where(Instance.sop_instance_uid == sop_instance_uid)
            ).scalar_one_or_none()

    def _insert_rows(
        self,
        connection: Connection,
        identity: InstanceIdentity,
        spooled: SpooledFile,
        calling_ae_title: str | None,
    ) -> bool:
        """Add the instance row, creating its study and series rows if needed.

        Returns whether the study was still receiving (not yet completed).
        """
        now = utcnow()
        study_id, study_state = _upsert_study(connection, identity, now)
        series_key = (identity.study_instance_uid, identity.series_instance_uid)
        series_id = self._series_ids.get(series_key)
        if series_id is None:
            series_id = _upsert_series(connection, study_id, identity)
        connection.execute(
            insert(Instance).values(
                series_id=series_id,
                sop_instance_uid=identity.sop_instance_uid,
                sop_class_uid=identity.sop_class_uid,
                transfer_syntax_uid=identity.transfer_syntax_uid,
                file_path=str(spooled.path),
                size_bytes=spooled.size_bytes,
                sha256=spooled.sha256,
                calling_ae_title=calling_ae_title,
                received_at=now,
            )
        )
        self._series_ids[series_key] = series_id
        return study_state == StudyState.RECEIVING

    def _write(self, work: Callable[[Connection], _T], *, flush_log: bool = True) -> _T:
        """Run ``work`` in one committed transaction, taking turns on SQLite.

        With ``flush_log`` False the commit does not wait for the database's log to
        reach the disk. A foreign key error drops the cached series ids (a series
        row may have been deleted meanwhile) and runs ``work`` once more.
        """
        try:
            return self._write_once(work, flush_log)
        except IntegrityError:
            if not self._series_ids:
                raise
            self._series_ids.clear()
            return self._write_once(work, flush_log)

    def _write_once(self, work: Callable[[Connection], _T], flush_log: bool) -> _T:
        if not self._is_sqlite:
            with self.engine.begin() as connection:
                if not flush_log:
                    connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                return work(connection)

        for attempt in range(1, SQLITE_LOCKED_RETRIES + 1):
            try:
                with write_lock(self.engine), _sqlite_transaction(self.engine, flush_log) as connection:
                    return work(connection)
            except OperationalError as exc:
                if "locked" not in str(exc.orig) or attempt == SQLITE_LOCKED_RETRIES:
                    raise
                LOGGER.warning("SQLite database locked, retrying (attempt %d)", attempt)
                time.sleep(0.1 * attempt)
        raise AssertionError("unreachable")

    @contextmanager
    def _sop_lock(self, sop_instance_uid: str) -> Iterator[None]:
        with self._sop_locks[hash(sop_instance_uid) % _LOCK_STRIPES]:
            yield


@contextmanager
def _sqlite_transaction(engine: Engine, flush_log: bool) -> Iterator[Connection]:
    """Yield a connection in a transaction; without ``flush_log`` it commits with synchronous=NORMAL.

    The setting belongs to the connection, so it goes back to FULL before the
    connection returns to the pool.
    """
    if flush_log:
        with engine.begin() as connection:
            yield connection
        return

    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA synchronous=NORMAL")
        connection.commit()
        try:
            with connection.begin():
                yield connection
        finally:
            connection.exec_driver_sql("PRAGMA synchronous=FULL")
            connection.commit()


def _insert_ignoring_conflict(
    connection: Connection, table: type, unique_column: str, values: dict
) -> None:
    dialect = connection.dialect.name
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        dialect_insert(table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[unique_column])
    )
    connection.execute(statement)


def _upsert_study(
    connection: Connection, identity: InstanceIdentity, now: datetime
) -> tuple[int, StudyState]:
    """Return the id and state of the study, inserting its row first if it is new.

    ``last_received_at`` moves forward only when it is more than
    ``LAST_RECEIVED_RESOLUTION`` old. Updating it for every instance would lock
    the study row until each commit and so serialise all associations that send
    the same study.
    """
    select_study = select(Study.id, Study.state).where(
        Study.study_instance_uid == identity.study_instance_uid
    )
    row = connection.execute(select_study).one_or_none()
    if row is None:
        _insert_ignoring_conflict(
            connection,
            Study,
            "study_instance_uid",
            {
                "study_instance_uid": identity.study_instance_uid,
                "patient_name": identity.patient_name,
                "patient_id": identity.patient_id,
                "patient_birth_date": identity.patient_birth_date,
                "accession_number": identity.accession_number,
                "study_date": identity.study_date,
                "study_description": identity.study_description,
                "state": StudyState.RECEIVING.value,
                "first_received_at": now,
                "last_received_at": now,
            },
        )
        row = connection.execute(select_study).one()

    connection.execute(
        update(Study)
        .where(Study.id == row.id, Study.last_received_at < now - LAST_RECEIVED_RESOLUTION)
        .values(last_received_at=now)
    )
    return row.id, StudyState(row.state)


def _upsert_series(connection: Connection, study_id: int, identity: InstanceIdentity) -> int:
    """Return the id of the series, inserting its row first if it is new.

    Raises
    ------
    SeriesInOtherStudyError
        If the Series Instance UID is recorded under another study.
    """
    _insert_ignoring_conflict(
        connection,
        Series,
        "series_instance_uid",
        {
            "study_id": study_id,
            "series_instance_uid": identity.series_instance_uid,
            "modality": identity.modality,
            "series_description": identity.series_description,
            "series_number": identity.series_number,
            "frame_of_reference_uid": identity.frame_of_reference_uid,
        },
    )
    series = connection.execute(
        select(Series.id, Series.study_id).where(
            Series.series_instance_uid == identity.series_instance_uid
        )
    ).one()
    if series.study_id != study_id:
        raise SeriesInOtherStudyError(
            f"Series Instance UID {identity.series_instance_uid} is recorded under another "
            f"study than {identity.study_instance_uid}"
        )
    return series.id


def _text(dataset: Dataset, keyword: str, max_length: int) -> str | None:
    value = dataset.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text[:max_length] or None
