"""Spool files and their rows: atomic writes, duplicates, conflicts, a full disk, both databases."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dicom.network.spool import PARTIAL_SUFFIX, Spool, SpoolFullError, sha256_of
from tests.support.dicom_factory import ct_series, encoded
from tests.support.receiver import file_size_limit, identity_of
from worker.db.models import Event, Instance, Series, Study, StudyState
from worker.db.session import get_engine
from worker.ingest import InstanceStore, StoreOutcome


def count(engine, table) -> int:  # noqa: ANN001
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(table))


def test_write_places_file_by_uids(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spooled = spool.write_instance(b"DICM-bytes", "1.2.3", "1.2.3.4", "1.2.3.4.5")

    assert spooled.path == tmp_path / "spool" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    assert spooled.path.read_bytes() == b"DICM-bytes"
    assert spooled.sha256 == sha256_of(b"DICM-bytes")
    assert spooled.size_bytes == 10
    assert list(spooled.path.parent.glob(f"*{PARTIAL_SUFFIX}")) == []


@pytest.mark.parametrize("uid", ["../1.2", "1.2/3", "", "1..2", "1.2.", "x" * 10, "1." * 40])
def test_path_rejects_invalid_uid(tmp_path: Path, uid: str) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        spool.path_for("1.2.3", "1.2.3.4", uid)


def test_full_disk_leaves_no_partial_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with file_size_limit(4096), pytest.raises(SpoolFullError):
        spool.write_instance(b"x" * 65536, "1.2.3", "1.2.3.4", "1.2.3.4.5")

    folder = tmp_path / "spool" / "1.2.3" / "1.2.3.4"
    assert list(folder.iterdir()) == []


def test_store_records_rows(database_url: str, tmp_path: Path) -> None:
    engine = get_engine(database_url, auto_migrate=True)
    store = InstanceStore(engine, Spool(tmp_path / "spool"))
    ct = ct_series(2)

    results = [store.store(encoded(ds), identity_of(ds), "MODALITY") for ds in ct]

    assert [r.outcome for r in results] == [StoreOutcome.STORED, StoreOutcome.STORED]
    assert all(r.study_was_receiving for r in results)
    assert count(engine, Study) == 1
    assert count(engine, Series) == 1
    assert count(engine, Instance) == 2
    with engine.connect() as connection:
        row = connection.execute(
            select(Instance).where(Instance.sop_instance_uid == ct[1].SOPInstanceUID)
        ).one()
        study = connection.execute(select(Study)).one()
    assert row.sha256 == sha256_of(encoded(ct[1]))
    assert Path(row.file_path).read_bytes() == encoded(ct[1])
    assert row.calling_ae_title == "MODALITY"
    assert study.patient_id == "TEST-0001"
    assert study.state == StudyState.RECEIVING


def test_resend_same_bytes_changes_nothing(database_url: str, tmp_path: Path) -> None:
    engine = get_engine(database_url, auto_migrate=True)
    store = InstanceStore(engine, Spool(tmp_path / "spool"))
    ds = ct_series(1)[0]

    first = store.store(encoded(ds), identity_of(ds), "A")
    mtime = first.path.stat().st_mtime_ns
    second = store.store(encoded(ds), identity_of(ds), "A")

    assert second.outcome is StoreOutcome.DUPLICATE
    assert count(engine, Instance) == 1
    assert first.path.stat().st_mtime_ns == mtime
    assert count(engine, Event) == 0


def test_different_bytes_kept_aside(database_url: str, tmp_path: Path) -> None:
    engine = get_engine(database_url, auto_migrate=True)
    store = InstanceStore(engine, Spool(tmp_path / "spool"))
    ds = ct_series(1)[0]
    original = encoded(ds)
    ds.SeriesDescription = "changed"
    changed = encoded(ds)

    first = store.store(original, identity_of(ds), "A")
    second = store.store(changed, identity_of(ds), "B")

    assert second.outcome is StoreOutcome.CONFLICT
    assert first.path.read_bytes() == original
    assert second.path.parent == tmp_path / "spool" / "conflicts"
    assert second.path.read_bytes() == changed
    assert count(engine, Instance) == 1
    with engine.connect() as connection:
        event = connection.execute(select(Event)).one()
    assert event.kind == "instance_conflict"
    assert event.sop_instance_uid == ds.SOPInstanceUID
    assert event.details["received_sha256"] == sha256_of(changed)
    assert event.details["stored_sha256"] == sha256_of(original)


def test_failed_commit_removes_file(sqlite_url: str, tmp_path: Path) -> None:
    engine = get_engine(sqlite_url, auto_migrate=True)
    store = InstanceStore(engine, Spool(tmp_path / "spool"))
    ds = ct_series(1)[0]
    identity = identity_of(ds)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TRIGGER refuse_instance BEFORE INSERT ON instance "
            "BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END"
        )

    with pytest.raises(Exception, match="refused by test trigger"):
        store.store(encoded(ds), identity, "A")

    path = store.spool.path_for(
        identity.study_instance_uid, identity.series_instance_uid, identity.sop_instance_uid
    )
    assert not path.exists()
    assert count(engine, Instance) == 0


def test_orphan_file_replaced_and_recorded(sqlite_url: str, tmp_path: Path) -> None:
    engine = get_engine(sqlite_url, auto_migrate=True)
    store = InstanceStore(engine, Spool(tmp_path / "spool"))
    ds = ct_series(1)[0]
    identity = identity_of(ds)
    orphan = store.spool.path_for(
        identity.study_instance_uid, identity.series_instance_uid, identity.sop_instance_uid
    )
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left over from a crash before the commit")

    result = store.store(encoded(ds), identity, "A")

    assert result.outcome is StoreOutcome.STORED
    assert orphan.read_bytes() == encoded(ds)
    assert count(engine, Instance) == 1


def test_uid_moved_to_other_series_is_conflict(database_url: str, tmp_path: Path) -> None:
    engine = get_engine(database_url, auto_migrate=True)
    store = InstanceStore(engine, Spool(tmp_path / "spool"))
    ds = ct_series(1)[0]
    first = store.store(encoded(ds), identity_of(ds), "A")
    ds.SeriesInstanceUID = "1.2.3.999"

    second = store.store(encoded(ds), identity_of(ds), "A")

    assert second.outcome is StoreOutcome.CONFLICT
    assert second.path.parent.name == "conflicts"
    assert first.path.exists()
    assert list((tmp_path / "spool" / ds.StudyInstanceUID / "1.2.3.999").glob("*.dcm")) == []
    assert count(engine, Instance) == 1
    assert count(engine, Series) == 1


def test_identity_repr_hides_patient() -> None:
    ds = ct_series(1)[0]
    identity = identity_of(ds)

    assert identity.patient_name == "Test^Patient"
    assert identity.patient_id == "TEST-0001"
    assert "Test^Patient" not in repr(identity)
    assert "TEST-0001" not in repr(identity)
    assert "19600101" not in repr(identity)
    assert ds.SOPInstanceUID in repr(identity)


def test_partial_files_removed_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    kept = spool.write_instance(b"complete", "1.2.3", "1.2.3.4", "1.2.3.4.5")
    partial = kept.path.parent / f".1.2.3.4.6.dcm.x1y2{PARTIAL_SUFFIX}"
    partial.write_bytes(b"half")

    removed = spool.remove_partial_files()

    assert removed == 1
    assert not partial.exists()
    assert kept.path.read_bytes() == b"complete"


def write_without_row(store: InstanceStore, ds) -> Path:  # noqa: ANN001
    """Spool ``ds`` as a crash would leave it: the file written, no row committed."""
    identity = identity_of(ds)
    spooled = store.spool.write_instance(
        encoded(ds), identity.study_instance_uid, identity.series_instance_uid, identity.sop_instance_uid
    )
    return spooled.path


def test_unrecorded_files_get_rows(database_url: str, tmp_path: Path) -> None:
    engine = get_engine(database_url, auto_migrate=True)
    store = InstanceStore(engine, Spool(tmp_path / "spool"))
    first, second = ct_series(2)
    store.store(encoded(first), identity_of(first), "A")
    identity = identity_of(second)
    write_without_row(store, second)

    assert store.record_unrecorded_files() == 1
    assert store.record_unrecorded_files() == 0

    with engine.connect() as connection:
        row = connection.execute(
            select(Instance).where(Instance.sop_instance_uid == identity.sop_instance_uid)
        ).one()
    assert row.sha256 == sha256_of(encoded(second))
    assert row.calling_ae_title is None
    assert count(engine, Instance) == 2
    assert count(engine, Series) == 1


def test_unreadable_spool_file_left_alone(sqlite_url: str, tmp_path: Path) -> None:
    engine = get_engine(sqlite_url, auto_migrate=True)
    store = InstanceStore(engine, Spool(tmp_path / "spool"))
    junk = store.spool.path_for("1.2.3", "1.2.3.4", "1.2.3.4.5")
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"not a DICOM file")
    misplaced_source = ct_series(1)[0]
    misplaced = store.spool.path_for("1.2.3", "1.2.3.4", "1.2.3.4.6")
    misplaced.write_bytes(encoded(misplaced_source))

    assert store.record_unrecorded_files() == 0
    assert junk.exists()
    assert misplaced.exists()
    assert count(engine, Instance) == 0


def test_old_spool_files_not_rechecked(sqlite_url: str, tmp_path: Path) -> None:
    engine = get_engine(sqlite_url, auto_migrate=True)
    store = InstanceStore(engine, Spool(tmp_path / "spool"))
    recent, old = ct_series(2)
    store.store(encoded(recent), identity_of(recent), "A")
    path = write_without_row(store, old)
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))

    assert store.record_unrecorded_files() == 0
    assert count(engine, Instance) == 1


def test_sqlite_commits_flush_after_a_store(sqlite_url: str, tmp_path: Path) -> None:
    engine = get_engine(sqlite_url, auto_migrate=True)
    store = InstanceStore(engine, Spool(tmp_path / "spool"))
    ds = ct_series(1)[0]

    store.store(encoded(ds), identity_of(ds), "A")

    full = 2
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == full
