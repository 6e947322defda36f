"""Run ``python -m worker worker`` and ``python -m worker scp`` as processes of a test.

Each process runs this checkout's code (``sys.executable -m worker`` in the
repository root) with ``HCLAL_*`` variables built from a :class:`Settings`, in a
process group of its own so that a test can kill it and every child with one
signal. The Celery broker is a Redis database that the test claims for itself
and that is flushed before use::

    with claimed_redis_database() as broker_url:
        settings = load_settings(broker_url=broker_url, ...)
        worker = start_celery_worker(settings, tmp_path / "worker.log")
        try:
            ...
        finally:
            worker.stop()
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, func, select

from worker.config import ENV_PREFIX, Settings
from worker.db.models import Analysis, AnalysisState

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]

FINAL_STATES = frozenset({AnalysisState.DELIVERED, AnalysisState.DELIVERY_FAILED, AnalysisState.FAILED})
# Seconds a test waits for an analysis. Generous because two shared CPU cores may be
# busy with other work while a test runs.
ANALYSIS_TIMEOUT = 600.0

# Redis databases handed out to tests; database 0 keeps the claims and is never flushed.
BROKER_DATABASES = range(15, 0, -1)
CLAIM_KEY = "hclal-test:broker-database:{}"
CLAIM_SECONDS = 3600


class ProcessStartError(RuntimeError):
    """A worker process exited or did not log its ready line in time; the message has its log."""


@dataclass
class WorkerProcess:
    """A running ``python -m worker`` process, the leader of its own process group."""

    process: subprocess.Popen
    log_path: Path
    name: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        """Return everything the process has written to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def is_running(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """Send SIGKILL to the whole process group and wait until the leader is gone."""
        self._signal_group(signal.SIGKILL)
        self.process.wait()

    def stop(self, grace_period: float = 20.0) -> None:
        """Send SIGTERM to the process group; SIGKILL it if it has not exited after ``grace_period`` s.

        A Celery worker finishes its current task on SIGTERM (warm shutdown), so
        a test that does not wait for that passes a short ``grace_period``.
        """
        if not self.is_running():
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_period)
        except subprocess.TimeoutExpired:
            self.kill()

    def _signal_group(self, signum: signal.Signals) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass


def settings_environment(settings: Settings) -> dict[str, str]:
    """Return the ``HCLAL_*`` variables that reproduce ``settings`` in another process."""
    environment = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        if isinstance(value, list | dict | bool):
            text = json.dumps(value)
        else:
            text = str(value)
        environment[ENV_PREFIX + name.upper()] = text
    return environment


def _process_environment(settings: Settings) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    environment.update(settings_environment(settings))
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def start_worker_process(
    settings: Settings, arguments: list[str], log_path: Path, ready_text: str, name: str, timeout: float
) -> WorkerProcess:
    """Start ``python -m worker ARGUMENTS`` and wait until its log contains ``ready_text``.

    Raises
    ------
    ProcessStartError
        If the process exits or does not log ``ready_text`` within ``timeout`` seconds;
        the process group is killed first.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", *arguments],
            cwd=REPOSITORY_ROOT,
            env=_process_environment(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    started = WorkerProcess(process, log_path, name)
    deadline = time.monotonic() + timeout
    while ready_text not in started.log_text():
        if not started.is_running():
            raise ProcessStartError(
                f"{name} exited with status {process.returncode} before it was ready:\n{started.log_text()[-4000:]}"
            )
        if time.monotonic() > deadline:
            started.kill()
            raise ProcessStartError(
                f"{name} did not log {ready_text!r} within {timeout:.0f} s:\n{started.log_text()[-4000:]}"
            )
        time.sleep(0.2)
    return started


def start_celery_worker(
    settings: Settings,
    log_path: Path,
    queues: str = "localize,deliver",
    timeout: float = 180.0,
) -> WorkerProcess:
    """Start ``python -m worker worker --queues QUEUES`` and wait until Celery logs that it is ready."""
    if not settings.broker_url:
        raise ValueError("settings.broker_url is empty; a Celery worker needs a broker")
    name = f"hclal-test-{uuid.uuid4().hex[:8]}"
    arguments = ["worker", "--queues", queues, "--name", f"{name}@%h"]
    # celery.apps.worker logs "<node name> ready." once the consumer takes tasks.
    return start_worker_process(settings, arguments, log_path, f"{name}@{socket.gethostname()} ready.", name, timeout)


def start_scp_process(settings: Settings, log_path: Path, timeout: float = 120.0) -> WorkerProcess:
    """Start ``python -m worker scp`` on ``settings.scp_host``:``settings.scp_port`` and wait until it listens."""
    if settings.scp_host != "127.0.0.1":
        raise ValueError(f"test SCPs listen on 127.0.0.1 only, not {settings.scp_host}")
    arguments = ["scp", "--host", settings.scp_host, "--port", str(settings.scp_port)]
    return start_worker_process(settings, arguments, log_path, "listening on", "hclal scp", timeout)


def broker_url_of(database: int, host: str = "127.0.0.1", port: int = 6379) -> str:
    """Return the Redis URL of ``database`` on ``host``:``port``."""
    return f"redis://{host}:{port}/{database}"


@contextmanager
def claimed_redis_database(host: str = "127.0.0.1", port: int = 6379) -> Iterator[str]:
    """Claim a Redis database that no other test process uses, flush it and yield its URL.

    Claims are keys in database 0 that expire after an hour, so a test process
    that was killed does not hold its database for ever.

    Raises
    ------
    RuntimeError
        If every database from 1 to 15 is claimed.
    """
    if host != "127.0.0.1":
        raise ValueError(f"tests use the Redis server on 127.0.0.1 only, not {host}")
    claims = redis.Redis(host=host, port=port, db=0)
    token = f"{os.getpid()}-{uuid.uuid4().hex}"
    claimed = None
    try:
        for database in BROKER_DATABASES:
            if claims.set(CLAIM_KEY.format(database), token, nx=True, ex=CLAIM_SECONDS):
                claimed = database
                break
        if claimed is None:
            raise RuntimeError(
                f"every Redis database 1-15 on {host}:{port} is claimed by another test process; "
                f"delete the keys {CLAIM_KEY.format('*')} in database 0 if those processes are gone"
            )
        broker = redis.Redis(host=host, port=port, db=claimed)
        broker.flushdb()
        broker.close()
        yield broker_url_of(claimed, host, port)
    finally:
        if claimed is not None and claims.get(CLAIM_KEY.format(claimed)) == token.encode():
            claims.delete(CLAIM_KEY.format(claimed))
        claims.close()


def wait_for_analysis_state(
    engine: Engine,
    analysis_id: int,
    states: Collection[AnalysisState],
    timeout: float,
    workers: Iterable[WorkerProcess] = (),
) -> AnalysisState:
    """Poll the ``analysis`` row until its state is one of ``states``; return that state.

    Raises
    ------
    AssertionError
        If ``timeout`` seconds pass first, or one of ``workers`` exits; the message has their logs.
    """
    workers = list(workers)
    deadline = time.monotonic() + timeout
    state = None
    while True:
        with engine.connect() as connection:
            state = connection.scalar(select(Analysis.state).where(Analysis.id == analysis_id))
        if state in states:
            return state
        stopped = [worker for worker in workers if not worker.is_running()]
        if stopped or time.monotonic() > deadline:
            logs = "\n".join(f"--- {w.name} ---\n{w.log_text()[-3000:]}" for w in workers)
            reason = f"{stopped[0].name} exited" if stopped else f"{timeout:.0f} s passed"
            raise AssertionError(
                f"analysis {analysis_id} is {state} and not {sorted(s.value for s in states)}: {reason}\n{logs}"
            )
        time.sleep(0.1)


def count_rows(engine: Engine, model, *where) -> int:  # noqa: ANN001
    """Return the number of rows of ``model``'s table that match every condition in ``where``."""
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(model).where(*where))


@pytest.fixture
def broker_url() -> Iterator[str]:
    """The URL of a flushed Redis database that this test has to itself."""
    with claimed_redis_database() as url:
        yield url


@pytest.fixture
def worker_processes() -> Iterator[list[WorkerProcess]]:
    """Worker processes the test starts; every one still running is stopped at teardown."""
    started: list[WorkerProcess] = []
    yield started
    for process in reversed(started):
        process.stop(grace_period=5.0)
