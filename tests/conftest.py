"""Fixtures shared by the whole suite: real PostgreSQL and SQLite databases, settings."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from worker.config import Settings, load_settings
from worker.db import session as db_session

POSTGRES_ADMIN_URL = os.environ.get(
    "HCLAL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("HCLAL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep HCLAL_* variables of the caller's shell out of the tests."""
    for name in list(os.environ):
        if name.startswith("HCLAL_") and not name.startswith("HCLAL_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on 127.0.0.1, dropped after the test."""
    name = f"hclal_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        db_session.dispose_engines()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """A SQLite database file in the test's folder."""
    yield f"sqlite:///{tmp_path / 'test.sqlite3'}"
    db_session.dispose_engines()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs once on SQLite and once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return request.getfixturevalue(fixture)


@pytest.fixture
def settings(tmp_path: Path, sqlite_url: str) -> Settings:
    """Embedded-default settings with every folder under the test's tmp_path."""
    return load_settings(data_dir=tmp_path / "data", database_url=sqlite_url)


@pytest.fixture(scope="session")
def phantom_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom PET/CT study (CT, PET, SEG with 3 lesions, truth.json), made once per run."""
    from dicom.phantom import generate_study

    folder = tmp_path_factory.mktemp("phantom-study")
    generate_study(folder, seed=5, lesions=3)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Random-weight coarse and fine checkpoints over the whole vocabulary."""
    from tests.support.tiny_models import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("tiny-models"))
