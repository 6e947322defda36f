"""Start the worker's storage SCP in the test process and look at what it stored."""

from __future__ import annotations

import resource
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import Engine, func, select

from dicom.network.scp import StorageSCP, create_scp
from worker.config import Settings, load_settings
from worker.db.models import Instance
from worker.ingest import InstanceIdentity


def scp_command(port: int, ae_title: str) -> list[str]:
    """Return the command line that runs ``hclal scp`` on 127.0.0.1:``port`` from the repository."""
    options = ["--host", "127.0.0.1", "--port", str(port), "--ae-title", ae_title]
    return [sys.executable, "-m", "worker", "scp", *options]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Receiver:
    """A running SCP, its settings and the analysis ids it queued."""

    scp: StorageSCP
    settings: Settings
    queued: list[int] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.scp.port

    @property
    def engine(self) -> Engine:
        return self.scp.store.engine

    def instance_count(self) -> int:
        """Return the number of rows in ``instance``."""
        with self.engine.connect() as connection:
            return connection.scalar(select(func.count()).select_from(Instance))


def receiver_settings(data_dir: Path, database_url: str, **overrides: object) -> Settings:
    """Return settings for an SCP on 127.0.0.1 with a free port and its data under ``data_dir``."""
    values = {
        "data_dir": data_dir,
        "database_url": database_url,
        "scp_host": "127.0.0.1",
        "scp_port": free_port(),
    }
    values.update(overrides)
    return load_settings(**values)


@contextmanager
def running_receiver(settings: Settings) -> Iterator[Receiver]:
    """Run the SCP for the duration of the block; queued analysis ids are collected in a list."""
    queued: list[int] = []
    scp = create_scp(settings, enqueue=queued.append, auto_migrate=True)
    scp.start()
    try:
        yield Receiver(scp, settings, queued)
    finally:
        scp.stop()


def identity_of(dataset: Dataset) -> InstanceIdentity:
    """Return the identity the SCP would record for ``dataset``."""
    return InstanceIdentity.from_dataset(dataset, str(dataset.file_meta.TransferSyntaxUID))


@contextmanager
def file_size_limit(max_bytes: int) -> Iterator[None]:
    """Make writes past ``max_bytes`` in any file of this process fail (EFBIG), like a full disk."""
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
