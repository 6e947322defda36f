"""Start the worker's storage SCP in the test process and look at what it stored."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, func, select

from dicom.network.scp import StorageSCP, create_scp
from worker.config import Settings, load_settings
from worker.db.models import Instance


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
