"""Atomic file store of received DICOM instances.

Every instance is written as the bytes the peer sent: preamble, File Meta
Information and the encoded data set (PS3.10 section 7). The bytes go to a
temporary file in the spool, are flushed to disk and then renamed into
``<Study>/<Series>/<SOP>.dcm``. A reader therefore never sees a partial file,
and a crash leaves at most a hidden ``.part`` file. The caller keeps a
different data set under an already stored SOP Instance UID apart in
``conflicts/`` (:meth:`Spool.write_conflict`).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

LOGGER = logging.getLogger(__name__)

CONFLICTS_FOLDER = "conflicts"
PARTIAL_SUFFIX = ".part"

# errno values that mean the file system cannot take more data.
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

# hashlib and file writes release the GIL on large buffers, so a file's digest is
# computed on one of these threads while the file itself is written and flushed.
_HASHING = ThreadPoolExecutor(max_workers=4, thread_name_prefix="spool-sha256")


class SpoolFullError(OSError):
    """The spool's file system has no space (or quota) left for an instance."""


@dataclass(frozen=True)
class SpooledFile:
    """A file written into the spool: where it is, its size and its SHA-256 digest."""

    path: Path
    size_bytes: int
    sha256: str


def sha256_of(data: bytes) -> str:
    """Return the hexadecimal SHA-256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def check_uid_path_component(uid: str, keyword: str) -> str:
    """Return ``uid`` if it is safe as a file name, else raise ``ValueError``.

    A UID (PS3.5 section 9.1) has only digits and dots and at most 64 characters,
    which also keeps a malicious value such as ``../..`` out of the spool paths.
    """
    if not uid or len(uid) > 64 or not all(c.isdigit() or c == "." for c in uid):
        raise ValueError(f"{keyword} {uid!r} is not a valid UID (digits and dots, at most 64)")
    if uid.startswith(".") or uid.endswith(".") or ".." in uid:
        raise ValueError(f"{keyword} {uid!r} is not a valid UID (empty component)")
    return uid


class Spool:
    """Folder of received instances laid out by Study, Series and SOP Instance UID.

    Parameters
    ----------
    root
        The spool folder; created if missing.
    fsync
        Flush every file and its folder to disk before the rename is reported
        done. Only tests and benchmarks of the file system itself switch it off.
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Return the spool path of an instance, checking that each UID is a safe file name."""
        return (
            self.root
            / check_uid_path_component(study_uid, "StudyInstanceUID")
            / check_uid_path_component(series_uid, "SeriesInstanceUID")
            / f"{check_uid_path_component(sop_instance_uid, 'SOPInstanceUID')}.dcm"
        )

    def write(self, data: bytes, destination: Path, sha256: str | None = None) -> SpooledFile:
        """Write ``data`` to ``destination`` atomically, replacing a file already there.

        ``sha256`` is the digest of ``data`` if the caller has it already; otherwise it
        is computed while the file is written.

        Raises
        ------
        SpoolFullError
            If the file system is full; nothing is left behind.
        OSError
            For any other file system error; nothing is left behind.
        """
        hashing = _HASHING.submit(sha256_of, data) if sha256 is None else None
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=destination.parent, prefix=f".{destination.name}.", suffix=PARTIAL_SUFFIX
        )
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                if self.fsync:
                    os.fsync(stream.fileno())
            os.replace(temporary, destination)
        except OSError as exc:
            _remove_quietly(Path(temporary))
            if exc.errno in _NO_SPACE_ERRNOS:
                raise SpoolFullError(exc.errno, f"no space left in the spool {self.root}") from exc
            raise

        if self.fsync:
            _fsync_folder(destination.parent)
        if hashing is not None:
            sha256 = hashing.result()
        return SpooledFile(destination, len(data), sha256)

    def write_instance(
        self, data: bytes, study_uid: str, series_uid: str, sop_instance_uid: str
    ) -> SpooledFile:
        """Write one instance to its place in the Study/Series/SOP layout."""
        return self.write(data, self.path_for(study_uid, series_uid, sop_instance_uid))

    def write_conflict(self, data: bytes, sop_instance_uid: str) -> SpooledFile:
        """Keep a data set aside that differs from the stored one with the same SOP Instance UID.

        The file is named ``conflicts/<SOP>.<first 16 hex digits of its SHA-256>.dcm``,
        so each distinct variant is kept once.
        """
        digest = sha256_of(data)
        uid = check_uid_path_component(sop_instance_uid, "SOPInstanceUID")
        destination = self.root / CONFLICTS_FOLDER / f"{uid}.{digest[:16]}.dcm"
        return self.write(data, destination, digest)

    def remove_partial_files(self) -> int:
        """Delete the ``.part`` files that a crash left mid-write; return how many.

        Call it only while no instance is being written, e.g. before the SCP starts.
        """
        partial = list(self.root.rglob(f".*{PARTIAL_SUFFIX}"))
        for path in partial:
            _remove_quietly(path)
        if partial:
            LOGGER.warning("removed %d partial files left in the spool %s", len(partial), self.root)
        return len(partial)

    def instance_files(self, modified_since: float | None = None) -> Iterator[Path]:
        """Yield the instance files of the Study/Series/SOP layout, optionally only recent ones.

        ``modified_since`` is a POSIX time; files last modified before it are skipped.
        Partial files and the ``conflicts`` folder are left out.
        """
        for study in _subfolders(self.root):
            if study.name == CONFLICTS_FOLDER:
                continue
            for series in _subfolders(Path(study.path)):
                with os.scandir(series.path) as entries:
                    for entry in entries:
                        if entry.name.startswith(".") or not entry.name.endswith(".dcm"):
                            continue
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        if modified_since is not None and entry.stat().st_mtime < modified_since:
                            continue
                        yield Path(entry.path)

    def remove(self, path: Path) -> None:
        """Delete a spooled file, e.g. after its database row could not be committed."""
        _remove_quietly(path)


def _fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder entry itself is on disk (POSIX).
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _subfolders(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return [entry for entry in entries if entry.is_dir(follow_symlinks=False)]


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        LOGGER.warning("could not remove spool file %s: %s", path, exc)
