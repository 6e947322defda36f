"""Prometheus metrics of the SCP and the workers, served by ``--metrics-port``."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from prometheus_client import Counter, Histogram, start_http_server

LOGGER = logging.getLogger(__name__)

# Stage latencies run from under a second (localisation) to minutes (quiet period).
STAGE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)

INSTANCES_RECEIVED = Counter(
    "hclal_instances_received_total",
    "Instances the SCP answered with Success and kept, new or identical to a stored copy.",
    ["modality"],
)
INSTANCES_REJECTED = Counter(
    "hclal_instances_rejected_total",
    "C-STORE requests failed or set aside as conflicts, and associations rejected (one each).",
    ["reason"],
)
ANALYSES = Counter("hclal_analyses_total", "Analyses that reached a state.", ["state"])
DELIVERIES = Counter("hclal_deliveries_total", "Report send attempts by outcome.", ["status"])
STAGE_SECONDS = Histogram(
    "hclal_stage_seconds",
    "Seconds spent between two stages of an analysis.",
    ["stage"],
    buckets=STAGE_BUCKETS,
)

STAGES = ("receive_to_complete", "complete_to_start", "start_to_report", "report_to_delivered")


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    """Return ``end - start`` in seconds, or None when either is missing.

    SQLite returns naive datetimes for timezone-aware columns; they were written
    in UTC, so they are read as UTC.
    """
    if start is None or end is None:
        return None
    return (_as_utc(end) - _as_utc(start)).total_seconds()


def _as_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def observe_stage(stage: str, seconds: float | None) -> None:
    """Record one stage latency; ``None`` (a stage that did not happen) is skipped."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    if seconds is not None and seconds >= 0:
        STAGE_SECONDS.labels(stage=stage).observe(seconds)


def serve_metrics(port: int | None, host: str = "127.0.0.1") -> None:
    """Start the Prometheus HTTP endpoint on ``host:port`` when a port is configured."""
    if port is None:
        return
    start_http_server(port, addr=host)
    LOGGER.info("metrics served on http://%s:%d/metrics", host, port)
