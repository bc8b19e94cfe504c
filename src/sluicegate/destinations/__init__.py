"""Destinations: publish a staged file atomically under a relative path.

Contract of every :class:`Destination`:

* ``stage(path)`` returns a :class:`Staged` file to write into; nothing is visible under
  ``path`` until ``publish``.
* ``publish(staged)`` prepares the whole file on a publisher thread: a temp file made durable
  next to its target on disk; on S3 an upload conditional on ``staged.condition`` (the ETag
  the ledger recorded, or ``*``: no object yet), so an upload of a zombie worker whose claim
  was taken over is refused by the store. It is idempotent.
* ``sync(staged)`` puts those files in place and makes that durable (the renames and their
  folders on disk; on S3 the uploads that met a newer object, or that a store without
  conditional writes must make now). The pipeline calls it inside the ledger transaction that
  holds the claims' rows (see ``PartitionStore.commit``), so a file is only put in place
  while its claim is verified and held, and nothing is marked exported that a crash could undo.
  An ``exclusive`` file is not put where an object already is: sync discards it and sets
  ``refused`` (atomically on disk and on stores with conditional writes; elsewhere checked first).
* ``uploads_in_flight`` says how many ``publish`` calls the pipeline runs at once on threads
  of their own (0: on its few publisher threads), so ``publish`` must be thread-safe.
* ``discard(staged)`` removes the staged file; never fails if it is already gone.
* ``exists(path, size)`` is true when an object of that size is published at ``path``.
* ``delete(path)`` removes a published object; a missing object is not an error.
* ``read(path)`` returns the bytes published at ``path`` (an artifact a later stage reads);
  a missing object is a TerminalError.
* ``list_files(prefix, start_after)`` returns the relative paths of the published objects under
  ``prefix`` (a folder, ending with ``/``), sorted, those after ``start_after`` only; temp
  files are not listed; a missing prefix lists nothing. With ``most``, at most that many, found
  with one listing (which ones, on a local folder, is unspecified): whether there are any.
* ``verify(path, size, sha256, etag)`` raises DestinationUnavailable unless the published
  object at ``path`` has that size (and, where the store can tell, that SHA-256; on a store
  that gives ETags, the ETag its upload was answered with, when given).
* Every method raises only sluicegate errors: each destination translates its own
  ``OSError`` and SDK errors (transient: DestinationUnavailable; terminal: TerminalError).
* ``check_path(path)`` raises :class:`~sluicegate.exceptions.BadPartitionValue` (terminal) when
  ``path`` cannot be stored here (too long a name or key), before anything is written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import itertools
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ..exceptions import DestinationUnavailable
from ..specs import DestinationSettings


@dataclass(kw_only=True)
class Staged:
    """A file being written for ``path``; ``file`` counts bytes and hashes as it goes."""

    path: str
    file: HashingWriter
    local_path: str
    handle: Any = field(default=None, repr=False)
    # What the object at ``path`` must be for this write to go ahead: None (no condition),
    # "*" (no object yet), or the ETag the ledger recorded for it (stores that support it).
    condition: str | None = None
    etag: str | None = None  # the store's ETag of the published object, once known
    # publish left the write to sync (a conflict, or no conditional writes); set before, by a
    # fenced unit whose earlier file is at its path with no ETag recorded (the blocks ledger
    # keeps none): "*" is refused only after the whole upload, which sync then sent again.
    pending: bool = False
    # Put in place only where no object is (a re-export whose name a longer window's file may
    # have): sync then sets ``refused`` instead of replacing one that appeared meanwhile.
    exclusive: bool = False
    refused: bool = False
    device: int | None = None  # a local temp file's st_dev, from the fstat of its publish


def full_disk(exc: OSError, folder: object) -> str:
    """What to do about a full file system or quota (ENOSPC, EDQUOT) under ``folder``, else "":
    the error said only "No space left on device"; the failed file is redone by a later run."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return ""
    return f"; free space on the file system of {folder}, and the next run writes it again"


class HashingWriter:
    """A write-only binary file wrapper that counts bytes and computes SHA-256."""

    def __init__(
        self, raw: BinaryIO | Any, where: str = "the staged file", folder: str | None = None
    ) -> None:
        self.raw = raw
        self.where = where
        self.folder = folder  # whose file system a full disk asks to free (None: say nothing)
        self.size = 0
        self._sha = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` through, hashing it; a full disk is a transient destination error."""
        try:
            self.raw.write(data)
        except OSError as exc:
            hint = full_disk(exc, self.folder) if self.folder else ""
            raise DestinationUnavailable(f"cannot write {self.where}: {exc.strerror or exc}{hint}") from exc
        self._sha.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        """Flush the underlying file."""
        self.raw.flush()

    def tell(self) -> int:
        """Bytes written so far (pyarrow asks)."""
        return self.size

    @property
    def closed(self) -> bool:
        """Whether the underlying file is closed."""
        return bool(self.raw.closed)

    def writable(self) -> bool:
        """Always true."""
        return True

    def seekable(self) -> bool:
        """Never seekable: formats must stream."""
        return False

    def readable(self) -> bool:
        """Never readable."""
        return False

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of everything written."""
        return self._sha.hexdigest()


class Destination(Protocol):
    """Where exported files are published."""

    url: str
    # How many ``publish`` calls may run at once, on threads of their own (an object store's
    # uploads, which mostly wait on the network); 0: publish on the publisher threads that
    # finish the files (local work such as fsync and rename).
    uploads_in_flight: int

    def stage(self, path: str) -> Staged:
        """Open a staged file for ``path``."""
        ...

    def publish(self, staged: Staged) -> None:
        """Prepare ``staged`` for :meth:`sync` (durable temp file, or a conditional upload)."""
        ...

    def sync(self, staged: Sequence[Staged] | None = None) -> None:
        """Put published files in place, durably, before their commit: ``staged`` (default: all)."""
        ...

    def warnings(self) -> list[str]:
        """What this destination cannot guarantee (shown by ``check``)."""
        ...

    def discard(self, staged: Staged) -> None:
        """Remove a staged file that will not be published."""
        ...

    def exists(
        self, path: str, size: int | None = None, etag: str | None = None, sha256: str | None = None
    ) -> bool:
        """True when an object is published at ``path``: of ``size`` bytes when that is given
        (and, on a store that gives ETags, one whose ETag is ``etag`` when that is given; on one
        that does not, one whose SHA-256 is ``sha256`` when that is given)."""
        ...

    def delete(self, path: str) -> None:
        """Remove a published object; missing is fine."""
        ...

    def check(self, *, write: bool = True) -> None:
        """Raise when the destination cannot be written (used by ``check`` and health). Health
        passes ``write=False``: an object store is then only asked whether it is there, as a
        probe object written on every poll is requests billed (a local folder is written still)."""
        ...

    def check_path(self, path: str) -> None:
        """Raise BadPartitionValue when ``path`` is too long for this destination."""
        ...

    def verify(self, path: str, size: int, sha256: str, etag: str | None = None) -> None:
        """Raise DestinationUnavailable unless ``path`` holds exactly what was published."""
        ...

    def list_files(self, prefix: str, start_after: str = "", most: int | None = None) -> list[str]:
        """Relative paths of the published objects under ``prefix``, sorted, after ``start_after``
        (at most ``most``)."""
        ...

    def read(self, path: str) -> bytes:
        """The bytes published at ``path``; TerminalError when there are none."""
        ...

    def cleanup(self, older_than: float) -> int:
        """Remove what dead workers left behind (temp files, unfinished uploads); return how many."""
        ...

    def display(self, path: str) -> str:
        """The full location of ``path`` for humans and the ledger."""
        ...


_SPOOL_NAMES = itertools.count()  # spool names: the pid, a random part per process, a counter
_SPOOL_RANDOM = uuid.uuid4().hex[:8]


class SpooledUpload:
    """Shared by destinations that upload whole objects: files are staged in memory, and in the
    local temp folder (``sluicegate-<pid>-*.part``) past SPOOL_BYTES."""

    def stage(self, path: str) -> Staged:
        """Spool the file: in memory while small, then to ``sluicegate-<pid>-*.part`` in the temp folder."""
        name = f"sluicegate-{os.getpid()}-{_SPOOL_RANDOM}{next(_SPOOL_NAMES)}.part"
        spool = Spool(os.path.join(tempfile.gettempdir(), name))
        file = HashingWriter(spool, f"the spool file of {path}", tempfile.gettempdir())
        return Staged(path=path, file=file, local_path=spool.path, handle=spool)

    @staticmethod
    def on_disk(staged: Staged) -> str:
        """``staged``'s spool file, written out first if its bytes were in memory."""
        try:
            staged.handle.materialize()
            staged.handle.close()
        except OSError as exc:
            raise DestinationUnavailable(
                f"cannot spool {staged.path} to the temp folder: {exc.strerror}"
            ) from exc
        return staged.local_path

    def sync(self, staged: Sequence[Staged] | None = None) -> None:
        """Nothing to do: an object is durable once its upload completed."""

    def warnings(self) -> list[str]:
        """None by default."""
        return []

    def discard(self, staged: Staged) -> None:
        """Forget the spool: its bytes in memory, or its file."""
        with contextlib.suppress(OSError):
            staged.handle.drop()
        if staged.handle.on_disk:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged.local_path)


SPOOL_BYTES = 1024 * 1024  # a partition's bytes kept in memory before its temp file is written


class Spool:
    """A write-only file that keeps its bytes in memory until they exceed SPOOL_BYTES.

    Past that, or when :meth:`materialize` is called, the bytes go to the temp file ``path``
    (``prepare`` is called with its folder first), so memory stays bounded whatever the
    partition size. A small file may never reach the disk: see :meth:`value`.
    """

    def __init__(self, path: str, prepare: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.prepare = prepare
        self.buffer: io.BytesIO | None = io.BytesIO()
        self.file: BinaryIO | None = None
        self.closed = False

    @property
    def on_disk(self) -> bool:
        """Whether the temp file exists."""
        return self.file is not None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``."""
        if self.file is not None:
            return self.file.write(data)
        assert self.buffer is not None
        self.buffer.write(data)
        if self.buffer.tell() > SPOOL_BYTES:
            self.materialize()
        return len(data)

    def materialize(self) -> None:
        """Move the bytes to the temp file (idempotent)."""
        if self.file is not None:
            return
        if self.prepare is not None:
            self.prepare(os.path.dirname(self.path))
        self.file = open(self.path, "xb")  # noqa: SIM115 - closed by close()
        assert self.buffer is not None
        self.file.write(self.buffer.getbuffer())
        self.buffer = None

    def flush(self) -> None:
        """Flush the temp file, if any."""
        if self.file is not None:
            self.file.flush()

    def fileno(self) -> int:
        """The temp file's descriptor (after materialize)."""
        assert self.file is not None
        return self.file.fileno()

    def value(self) -> bytes | None:
        """The bytes, when they are still in memory only (None once on disk or dropped)."""
        return None if self.buffer is None or self.file is not None else self.buffer.getvalue()

    def close(self) -> None:
        """Close the temp file (bytes still in memory stay readable by :meth:`value`)."""
        self.closed = True
        if self.file is not None:
            self.file.close()

    def drop(self) -> None:
        """Close, and forget the bytes kept in memory."""
        self.close()
        self.buffer = None


def remove_stale_spools(older_than: float) -> int:
    """Delete spool files of dead processes (``sluicegate-<pid>-*.part``) older than ``older_than`` s.

    A spool of a live process is never removed, however old: its worker may be stalled (and
    then fenced) or slow, not dead.
    """
    cutoff = time.time() - older_than
    removed = 0
    for path in Path(tempfile.gettempdir()).glob("sluicegate-*.part"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff and not _alive(path.name):
                path.unlink()
                removed += 1
    return removed


def _alive(spool_name: str) -> bool:
    """Whether the process that wrote ``sluicegate-<pid>-*.part`` still runs (on this machine)."""
    pid = spool_name.split("-")[1]
    if not pid.isdigit():
        return False  # a spool of a version that did not name its process
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def local_folder(url: str) -> str | None:
    """The folder a destination URL names on local disk (``DIR``, ``file://DIR``,
    ``file://localhost/DIR``), as given; None for a remote URL (``s3://``, other fsspec ones)."""
    if url.startswith("file://"):
        rest = url.removeprefix("file://")
        return rest.removeprefix("localhost") if rest.startswith("localhost/") else rest
    return None if "://" in url else url


def open_destination(settings: DestinationSettings, *, stale_after: float = 3600.0) -> Destination:
    """Open the destination named by ``settings.url``."""
    url = settings.url
    if url.startswith("s3://"):
        from .s3 import S3Destination

        return S3Destination(settings)
    folder = local_folder(url)
    if folder is None:
        from .fsspec import FsspecDestination

        return FsspecDestination(settings)
    from .local import LocalDestination

    return LocalDestination(folder, stale_after=stale_after, sync=settings.sync)
