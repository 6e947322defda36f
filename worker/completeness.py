"""Decide when a study's inputs have all arrived and queue its analysis.

DICOM has no "study complete" message (PS3.4 Annex B ends at single C-STOREs), so
routers usually wait for a quiet period. The worker's studies carry a
Segmentation, and a SEG lists the images it was drawn on: the Common Instance
Reference module (PS3.3 C.12.2, ``ReferencedSeriesSequence`` >
``ReferencedInstanceSequence``) and each frame's ``DerivationImageSequence`` >
``SourceImageSequence`` (PS3.3 C.7.6.16.2.6). The study is complete the moment
the last referenced instance is stored, whichever arrives first, SEG or images.

Studies whose SEG references cannot all be resolved, and studies without a SEG,
fall back to a quiet period (``Settings.quiet_period``) after their last
instance, checked by :class:`QuietPeriodMonitor` in the SCP process. An instance
that arrives after its study was completed queues a re-analysis (trigger
``late_instance``) unless an analysis of the study is still waiting in the queue,
because that one will read the new instance too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import Engine, select

from worker import metrics
from worker.config import Settings
from worker.db.models import (
    Analysis,
    AnalysisState,
    Event,
    Instance,
    Series,
    Study,
    StudyState,
    utcnow,
)
from worker.db.session import session_scope
from worker.ingest import StoreOutcome, StoreResult, write_lock

LOGGER = logging.getLogger(__name__)

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

TRIGGER_COMPLETE = "complete"
TRIGGER_QUIET_PERIOD = "quiet_period"
TRIGGER_LATE_INSTANCE = "late_instance"

# Study.completion_reason values.
REASON_REFERENCES_STORED = "seg_references_stored"
REASON_QUIET_PERIOD = "quiet_period"
REASON_NO_SEGMENTATION = "no_segmentation"

EnqueueFunction = Callable[[int], None]

_UID_QUERY_CHUNK = 500


def referenced_instances(segmentation: Dataset) -> set[str]:
    """Return the SOP Instance UIDs of the images a Segmentation was derived from.

    Reads the Common Instance Reference module (PS3.3 C.12.2) and the Derivation
    Image macro of the shared and per-frame functional groups (PS3.3 C.7.6.16.2.6).
    References to other studies (``StudiesContainingOtherReferencedInstancesSequence``)
    are left out because they are not sent with this study.
    """
    references: set[str] = set()
    for series in segmentation.get("ReferencedSeriesSequence", []):
        for instance in series.get("ReferencedInstanceSequence", []):
            _add_uid(references, instance)

    groups = list(segmentation.get("SharedFunctionalGroupsSequence", []))
    groups += list(segmentation.get("PerFrameFunctionalGroupsSequence", []))
    for group in groups:
        for derivation in group.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                _add_uid(references, source)
    return references


def _add_uid(references: set[str], item: Dataset) -> None:
    uid = item.get("ReferencedSOPInstanceUID")
    if uid:
        references.add(str(uid))


def default_enqueue(settings: Settings) -> EnqueueFunction:
    """Return a function that queues an analysis through the worker's task interface."""

    def enqueue(analysis_id: int) -> None:
        from worker.queue import enqueue_analysis  # noqa: PLC0415 - imported when first used

        enqueue_analysis(settings, analysis_id)

    return enqueue


class CompletenessTracker:
    """Track stored instances and queue each study's analysis once its inputs are stored.

    Parameters
    ----------
    engine
        Engine of the worker database.
    settings
        Worker settings; ``quiet_period`` is read from them.
    enqueue
        Called with the id of every new ``analysis`` row after it is committed.
        Defaults to :func:`worker.queue.enqueue_analysis` with ``settings``.

    Notes
    -----
    The missing references of each SEG are kept in memory; :meth:`resume` rebuilds
    them from the spool after a restart. All methods are thread-safe.
    """

    def __init__(
        self, engine: Engine, settings: Settings, enqueue: EnqueueFunction | None = None
    ) -> None:
        self.engine = engine
        self.quiet_period = timedelta(seconds=settings.quiet_period)
        self._enqueue = enqueue or default_enqueue(settings)
        self._lock = threading.Lock()
        self._queue_lock = threading.Lock()
        # SEG SOP Instance UID -> referenced SOP Instance UIDs not stored yet.
        self._missing: dict[str, set[str]] = {}
        # Referenced SOP Instance UID -> the SEGs that wait for it.
        self._waiting_segs: dict[str, set[str]] = {}
        # SEG SOP Instance UID -> (Study Instance UID, SEG Series Instance UID).
        self._seg_study: dict[str, tuple[str, str]] = {}

    def instance_stored(self, result: StoreResult, dataset: Dataset) -> int | None:
        """Update the study of a stored instance; return the id of an analysis queued now."""
        if result.outcome is not StoreOutcome.STORED:
            return None

        identity = result.identity
        if not result.study_was_receiving:
            return self._queue_analysis(
                identity.study_instance_uid, TRIGGER_LATE_INSTANCE, TRIGGER_LATE_INSTANCE
            )

        completed = self._mark_reference_stored(identity.sop_instance_uid)
        if identity.sop_class_uid == SEGMENTATION_STORAGE:
            completed += self.track_segmentation(
                identity.study_instance_uid,
                identity.series_instance_uid,
                identity.sop_instance_uid,
                referenced_instances(dataset),
            )
        return self._queue_completed(completed)

    def track_segmentation(
        self, study_uid: str, seg_series_uid: str, seg_sop_uid: str, references: set[str]
    ) -> list[str]:
        """Start waiting for the references of a SEG; return it if they are all stored already."""
        if not references:
            LOGGER.warning(
                "SEG %s of study %s references no images; the study waits for the quiet period",
                seg_sop_uid,
                study_uid,
            )
            return []

        # Register before reading the database: an image committed after the read
        # then finds the SEG in _waiting_segs, one committed before is in the read.
        with self._lock:
            self._missing[seg_sop_uid] = set(references)
            self._seg_study[seg_sop_uid] = (study_uid, seg_series_uid)
            for uid in references:
                self._waiting_segs.setdefault(uid, set()).add(seg_sop_uid)

        stored = self._stored_among(references)
        completed: list[str] = []
        with self._lock:
            for uid in stored:
                completed += self._remove_waiting(uid, only_seg=seg_sop_uid)
            missing = len(self._missing.get(seg_sop_uid, ()))
        LOGGER.info(
            "SEG %s of study %s references %d instances, %d not stored yet",
            seg_sop_uid,
            study_uid,
            len(references),
            missing,
        )
        return completed

    def check_quiet_studies(self, now: datetime | None = None) -> list[int]:
        """Complete the studies that received nothing for the quiet period; return queued ids."""
        cutoff = (now or utcnow()) - self.quiet_period
        with session_scope(self.engine) as session:
            quiet = session.scalars(
                select(Study.study_instance_uid).where(
                    Study.state == StudyState.RECEIVING, Study.last_received_at < cutoff
                )
            ).all()

        queued = []
        for study_uid in quiet:
            self._forget_study(study_uid)
            analysis_id = self._queue_analysis(study_uid, TRIGGER_QUIET_PERIOD, REASON_QUIET_PERIOD)
            if analysis_id is not None:
                queued.append(analysis_id)
        return queued

    def resume(self) -> int:
        """Rebuild the SEG references of receiving studies from the spool; return the SEG count.

        Studies whose references turn out to be stored already are queued at once.
        """
        with session_scope(self.engine) as session:
            rows = session.execute(
                select(Study.study_instance_uid, Series.series_instance_uid, Instance.file_path)
                .join(Series, Series.study_id == Study.id)
                .join(Instance, Instance.series_id == Series.id)
                .where(
                    Study.state == StudyState.RECEIVING,
                    Instance.sop_class_uid == SEGMENTATION_STORAGE,
                )
            ).all()

        completed: list[str] = []
        for study_uid, series_uid, file_path in rows:
            try:
                seg = pydicom.dcmread(file_path, stop_before_pixels=True)
            except (OSError, InvalidDicomError) as exc:
                LOGGER.error(
                    "cannot read spooled SEG %s of study %s: %s", file_path, study_uid, exc
                )
                continue
            completed += self.track_segmentation(
                study_uid, series_uid, str(seg.SOPInstanceUID), referenced_instances(seg)
            )
        self._queue_completed(completed)
        return len(rows)

    def _mark_reference_stored(self, sop_instance_uid: str) -> list[str]:
        with self._lock:
            return self._remove_waiting(sop_instance_uid)

    def _remove_waiting(self, uid: str, only_seg: str | None = None) -> list[str]:
        """Mark ``uid`` stored for its waiting SEGs; return the SEGs that now miss nothing.

        The caller holds ``self._lock``.
        """
        segs = self._waiting_segs.get(uid, set())
        completed = []
        for seg_uid in list(segs):
            if only_seg is not None and seg_uid != only_seg:
                continue
            segs.discard(seg_uid)
            missing = self._missing.get(seg_uid)
            if missing is None:
                continue
            missing.discard(uid)
            if not missing:
                del self._missing[seg_uid]
                completed.append(seg_uid)
        if not segs:
            self._waiting_segs.pop(uid, None)
        return completed

    def _queue_completed(self, seg_uids: Iterable[str]) -> int | None:
        analysis_id = None
        for seg_uid in seg_uids:
            with self._lock:
                entry = self._seg_study.pop(seg_uid, None)
            if entry is None:
                continue
            study_uid, series_uid = entry
            LOGGER.info(
                "study %s complete: every instance SEG %s references is stored", study_uid, seg_uid
            )
            queued = self._queue_analysis(
                study_uid, TRIGGER_COMPLETE, REASON_REFERENCES_STORED, seg_series_uid=series_uid
            )
            analysis_id = queued if queued is not None else analysis_id
        return analysis_id

    def _forget_study(self, study_uid: str) -> None:
        with self._lock:
            segs = [seg for seg, (study, _) in self._seg_study.items() if study == study_uid]
            for seg_uid in segs:
                del self._seg_study[seg_uid]
                for uid in self._missing.pop(seg_uid, set()):
                    waiting = self._waiting_segs.get(uid)
                    if waiting is not None:
                        waiting.discard(seg_uid)
                        if not waiting:
                            del self._waiting_segs[uid]

    def _stored_among(self, uids: set[str]) -> set[str]:
        ordered = sorted(uids)
        stored: set[str] = set()
        with self.engine.connect() as connection:
            for start in range(0, len(ordered), _UID_QUERY_CHUNK):
                chunk = ordered[start : start + _UID_QUERY_CHUNK]
                stored.update(
                    connection.scalars(
                        select(Instance.sop_instance_uid).where(
                            Instance.sop_instance_uid.in_(chunk)
                        )
                    )
                )
        return stored

    def _queue_analysis(
        self, study_uid: str, trigger: str, reason: str, seg_series_uid: str | None = None
    ) -> int | None:
        """Complete the study and add a queued analysis, at most once per completion."""
        with self._queue_lock, write_lock(self.engine), session_scope(self.engine) as session:
            study = session.scalars(
                select(Study).where(Study.study_instance_uid == study_uid).with_for_update()
            ).one()
            if not _may_queue(session, study, trigger):
                return None
            if trigger == TRIGGER_LATE_INSTANCE and _follow_newest_seg(session, study.id):
                return None

            now = utcnow()
            seg_series_uid = seg_series_uid or _latest_seg_series(session, study.id)
            if seg_series_uid is None:
                if trigger != TRIGGER_LATE_INSTANCE:
                    _record_not_analysable(session, study, now)
                return None

            study.state = StudyState.COMPLETE
            study.completed_at = now
            study.completion_reason = reason
            analysis = Analysis(
                study_id=study.id,
                state=AnalysisState.QUEUED,
                trigger=trigger,
                seg_series_uid=seg_series_uid,
                received_at=study.first_received_at,
                complete_at=now,
                queued_at=now,
            )
            session.add(analysis)
            session.flush()
            session.add(
                Event(
                    kind="analysis_queued",
                    study_instance_uid=study_uid,
                    analysis_id=analysis.id,
                    message=f"analysis queued ({trigger})",
                    details={"trigger": trigger, "seg_series_uid": seg_series_uid},
                )
            )
            analysis_id = analysis.id
            received_at = study.first_received_at

        LOGGER.info("analysis %d of study %s queued (%s)", analysis_id, study_uid, trigger)
        metrics.ANALYSES.labels(state=AnalysisState.QUEUED.value).inc()
        if trigger != TRIGGER_LATE_INSTANCE:
            # A late instance's study was first received long before, so the interval
            # would not measure receiving.
            metrics.observe_stage("receive_to_complete", metrics.seconds_between(received_at, now))
        self._call_enqueue(analysis_id, study_uid)
        return analysis_id

    def _call_enqueue(self, analysis_id: int, study_uid: str) -> None:
        try:
            self._enqueue(analysis_id)
        except Exception as exc:  # noqa: BLE001 - the instance is stored; the row stays queued
            LOGGER.exception("could not enqueue analysis %d of study %s", analysis_id, study_uid)
            with write_lock(self.engine), session_scope(self.engine) as session:
                session.add(
                    Event(
                        kind="enqueue_failed",
                        study_instance_uid=study_uid,
                        analysis_id=analysis_id,
                        message="the analysis row is queued but could not be sent to the "
                        f"task queue: {exc}",
                    )
                )


def _may_queue(session, study: Study, trigger: str) -> bool:  # noqa: ANN001
    if trigger != TRIGGER_LATE_INSTANCE:
        return study.state == StudyState.RECEIVING
    return True


def _follow_newest_seg(session, study_id: int) -> bool:  # noqa: ANN001
    """Point a queued analysis of the study at its newest SEG; return whether one was waiting.

    A late instance needs no second analysis while one still waits in the queue: that
    one reads the study's files when it starts. It measures the SEG it names, so a
    SEG that arrived late becomes its SEG.
    """
    waiting = session.scalars(
        select(Analysis).where(Analysis.study_id == study_id, Analysis.state == AnalysisState.QUEUED)
    ).first()
    if waiting is None:
        return False
    waiting.seg_series_uid = _latest_seg_series(session, study_id) or waiting.seg_series_uid
    return True


def _latest_seg_series(session, study_id: int) -> str | None:  # noqa: ANN001
    return session.scalar(
        select(Series.series_instance_uid)
        .join(Instance, Instance.series_id == Series.id)
        .where(Series.study_id == study_id, Instance.sop_class_uid == SEGMENTATION_STORAGE)
        .order_by(Instance.received_at.desc(), Instance.id.desc())
        .limit(1)
    )


def _record_not_analysable(session, study: Study, now: datetime) -> None:  # noqa: ANN001
    study.state = StudyState.COMPLETE
    study.completed_at = now
    study.completion_reason = REASON_NO_SEGMENTATION
    session.add(
        Event(
            kind="analysis_skipped",
            study_instance_uid=study.study_instance_uid,
            message="study has no Segmentation instance; nothing to analyse",
        )
    )
    LOGGER.warning("study %s has no SEG instance; not analysed", study.study_instance_uid)


class QuietPeriodMonitor:
    """Background thread that runs :meth:`CompletenessTracker.check_quiet_studies`.

    Parameters
    ----------
    tracker
        The tracker to drive.
    interval
        Seconds between checks; defaults to a fifth of the quiet period, at most 5 s.
    """

    def __init__(self, tracker: CompletenessTracker, interval: float | None = None) -> None:
        quiet = tracker.quiet_period.total_seconds()
        self.tracker = tracker
        self.interval = interval if interval is not None else min(max(quiet / 5, 0.05), 5.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="quiet-period-monitor", daemon=True)

    def start(self) -> None:
        """Start checking in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop checking and wait for a check in progress to finish."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tracker.check_quiet_studies()
            except Exception:  # noqa: BLE001 - keep checking; a database outage is transient
                LOGGER.exception("quiet-period check failed; retrying in %.1f s", self.interval)
