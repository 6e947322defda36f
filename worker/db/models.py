"""SQLAlchemy ORM tables that the worker writes and administrators query.

Patient name, ID and birth date are stored in ``study`` only; no other table and
no log line holds them. Times are timezone-aware UTC.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names so that Alembic migrations match on PostgreSQL and SQLite.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

UID = String(64)


def utcnow() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class StudyState(str, enum.Enum):
    """Where a study stands between its first instance and its last analysis."""

    RECEIVING = "receiving"
    COMPLETE = "complete"
    ANALYSED = "analysed"


class AnalysisState(str, enum.Enum):
    """State of one analysis run; ``delivery_failed`` and ``failed`` are final until resent."""

    QUEUED = "queued"
    STARTED = "started"
    LOCALISED = "localised"
    REPORTED = "reported"
    DELIVERED = "delivered"
    DELIVERY_FAILED = "delivery_failed"
    FAILED = "failed"


class DeliveryStatus(str, enum.Enum):
    """Outcome of one C-STORE attempt of a report."""

    SUCCESS = "success"
    WARNING = "warning"
    TRANSIENT_FAILURE = "transient_failure"
    PERMANENT_FAILURE = "permanent_failure"


def _enum(enum_class: type[enum.Enum], name: str) -> Enum:
    return Enum(
        enum_class,
        name=name,
        native_enum=False,
        length=24,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Study(Base):
    __tablename__ = "study"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_name: Mapped[str | None] = mapped_column(String(324))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_description: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[StudyState] = mapped_column(_enum(StudyState, "study_state"), default=StudyState.RECEIVING)
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column()
    completion_reason: Mapped[str | None] = mapped_column(String(64))

    series: Mapped[list[Series]] = relationship(back_populates="study", passive_deletes=True)
    analyses: Mapped[list[Analysis]] = relationship(back_populates="study", passive_deletes=True)

    __table_args__ = (Index(None, "state", "last_received_at"),)


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_description: Mapped[str | None] = mapped_column(String(64))
    series_number: Mapped[int | None] = mapped_column(Integer)
    frame_of_reference_uid: Mapped[str | None] = mapped_column(UID)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series", passive_deletes=True)


class Instance(Base):
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    file_path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    series: Mapped[Series] = relationship(back_populates="instances")


class Analysis(Base):
    __tablename__ = "analysis"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    state: Mapped[AnalysisState] = mapped_column(
        _enum(AnalysisState, "analysis_state"), default=AnalysisState.QUEUED
    )
    trigger: Mapped[str] = mapped_column(String(32), default="complete")
    coarse_model: Mapped[str | None] = mapped_column(String(128))
    fine_model: Mapped[str | None] = mapped_column(String(128))
    ct_series_uid: Mapped[str | None] = mapped_column(UID)
    pet_series_uid: Mapped[str | None] = mapped_column(UID)
    seg_series_uid: Mapped[str | None] = mapped_column(UID)
    suv_factor: Mapped[float | None] = mapped_column(Float)
    suv_reason: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime | None] = mapped_column()
    complete_at: Mapped[datetime | None] = mapped_column()
    queued_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column()
    lesions_extracted_at: Mapped[datetime | None] = mapped_column()
    localised_at: Mapped[datetime | None] = mapped_column()
    report_written_at: Mapped[datetime | None] = mapped_column()
    delivered_at: Mapped[datetime | None] = mapped_column()
    worker_name: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)

    study: Mapped[Study] = relationship(back_populates="analyses")
    lesions: Mapped[list[Lesion]] = relationship(back_populates="analysis", passive_deletes=True)
    reports: Mapped[list[Report]] = relationship(back_populates="analysis", passive_deletes=True)

    __table_args__ = (Index(None, "state", "queued_at"),)


class Lesion(Base):
    __tablename__ = "lesion"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("analysis.id", ondelete="CASCADE"), index=True)
    segment_number: Mapped[int] = mapped_column(Integer)
    segment_label: Mapped[str | None] = mapped_column(String(64))
    component: Mapped[int] = mapped_column(Integer)
    tracking_uid: Mapped[str] = mapped_column(UID)
    centroid_x_mm: Mapped[float] = mapped_column(Float)
    centroid_y_mm: Mapped[float] = mapped_column(Float)
    centroid_z_mm: Mapped[float] = mapped_column(Float)
    bbox_mm: Mapped[list[float]] = mapped_column(JSON)
    volume_ml: Mapped[float] = mapped_column(Float)
    voxels: Mapped[int] = mapped_column(Integer)
    suv_max: Mapped[float | None] = mapped_column(Float)
    suv_mean: Mapped[float | None] = mapped_column(Float)
    suv_peak: Mapped[float | None] = mapped_column(Float)
    hu_mean: Mapped[float | None] = mapped_column(Float)

    analysis: Mapped[Analysis] = relationship(back_populates="lesions")
    finding: Mapped[Finding | None] = relationship(back_populates="lesion", passive_deletes=True)

    __table_args__ = (UniqueConstraint("analysis_id", "segment_number", "component"),)


class Finding(Base):
    __tablename__ = "finding"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lesion_id: Mapped[int] = mapped_column(ForeignKey("lesion.id", ondelete="CASCADE"), unique=True)
    site_id: Mapped[str] = mapped_column(String(64), index=True)
    site_name: Mapped[str] = mapped_column(String(128))
    laterality: Mapped[str | None] = mapped_column(String(16))
    code_value: Mapped[str] = mapped_column(String(32))
    code_scheme: Mapped[str] = mapped_column(String(16))
    code_meaning: Mapped[str] = mapped_column(String(128))
    probability: Mapped[float] = mapped_column(Float)
    uncertain: Mapped[bool] = mapped_column(default=False)
    coarse_topk: Mapped[list[Any]] = mapped_column(JSON)
    fine_topk: Mapped[list[Any]] = mapped_column(JSON)

    lesion: Mapped[Lesion] = relationship(back_populates="finding")


class Report(Base):
    __tablename__ = "report"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("analysis.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    predecessor_sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    file_path: Mapped[str] = mapped_column(Text)
    # The fallback document (same content, fallback SOP class) and the outline document
    # (planar groups only, for viewers) are written beside the report.
    fallback_sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    fallback_file_path: Mapped[str | None] = mapped_column(Text)
    outline_sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    outline_file_path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    analysis: Mapped[Analysis] = relationship(back_populates="reports")
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="report", passive_deletes=True)


class Delivery(Base):
    __tablename__ = "delivery"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("report.id", ondelete="CASCADE"), index=True)
    destination_ae_title: Mapped[str] = mapped_column(String(16))
    destination_host: Mapped[str] = mapped_column(String(255))
    destination_port: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[DeliveryStatus] = mapped_column(_enum(DeliveryStatus, "delivery_status"))
    dicom_status: Mapped[int | None] = mapped_column(Integer)
    sop_class_uid: Mapped[str | None] = mapped_column(UID)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    error: Mapped[str | None] = mapped_column(Text)
    confirmed: Mapped[bool | None] = mapped_column()
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    report: Mapped[Report] = relationship(back_populates="deliveries")


class Event(Base):
    """Audit trail: one row per notable thing that happened to a study or analysis."""

    __tablename__ = "event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(48), index=True)
    study_instance_uid: Mapped[str | None] = mapped_column(UID, index=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    analysis_id: Mapped[int | None] = mapped_column(ForeignKey("analysis.id", ondelete="SET NULL"))
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
