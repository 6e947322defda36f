"""Orthanc as the sending PACS: studies forwarded with ``/modalities/{id}/store``."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from tests.support.dicom_factory import ct_series, dataset_bytes, segmentation, write_all
from tests.support.orthanc import OrthancError, OrthancServer, start_orthanc
from tests.support.receiver import Receiver, receiver_settings, running_receiver
from worker.db.models import Analysis, Instance

pytestmark = pytest.mark.orthanc


@pytest.fixture
def receiver(tmp_path: Path, sqlite_url: str) -> Iterator[Receiver]:
    settings = receiver_settings(tmp_path / "data", sqlite_url, allowed_calling_ae_titles=["PACS"])
    with running_receiver(settings) as running:
        yield running


@pytest.fixture
def pacs(tmp_path: Path, receiver: Receiver) -> Iterator[OrthancServer]:
    server = start_orthanc(tmp_path, {"HCLAL": ("HCLAL", "127.0.0.1", receiver.port)}, aet="PACS")
    yield server
    server.stop()


def upload_study(pacs: OrthancServer, folder: Path) -> tuple[list[str], list[Path]]:
    ct = ct_series(5)
    paths = write_all([*ct, segmentation(ct)], folder)
    return [pacs.upload(path) for path in paths], paths


def test_forwarded_study_stored_and_queued(
    pacs: OrthancServer, receiver: Receiver, tmp_path: Path
) -> None:
    ids, paths = upload_study(pacs, tmp_path / "study")

    answer = pacs.store_to_modality("HCLAL", ids)

    assert answer["InstancesCount"] == 6
    assert answer["FailedInstancesCount"] == 0
    assert receiver.instance_count() == 6
    assert len(receiver.queued) == 1
    with receiver.engine.connect() as connection:
        stored = dict(
            connection.execute(select(Instance.sop_instance_uid, Instance.file_path)).all()
        )
    for path in paths:
        sent = path.read_bytes()
        sop_instance_uid = dcmread(io.BytesIO(sent), stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(Path(stored[sop_instance_uid]).read_bytes()) == dataset_bytes(sent)


def test_forwarded_again_changes_nothing(
    pacs: OrthancServer, receiver: Receiver, tmp_path: Path
) -> None:
    ids, _ = upload_study(pacs, tmp_path / "study")

    pacs.store_to_modality("HCLAL", ids)
    pacs.store_to_modality("HCLAL", ids)

    assert receiver.instance_count() == 6
    assert len(receiver.queued) == 1
    with receiver.engine.connect() as connection:
        assert len(connection.execute(select(Analysis.id)).all()) == 1


def test_unknown_pacs_title_rejected(tmp_path: Path, receiver: Receiver) -> None:
    stranger = start_orthanc(
        tmp_path / "stranger", {"HCLAL": ("HCLAL", "127.0.0.1", receiver.port)}, aet="STRANGER"
    )
    try:
        ids, _ = upload_study(stranger, tmp_path / "study")
        with pytest.raises(OrthancError, match="HTTP"):
            stranger.store_to_modality("HCLAL", ids)
    finally:
        stranger.stop()

    assert receiver.instance_count() == 0
