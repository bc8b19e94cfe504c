"""Runs of archive tasks: their records, the per-task lock, and the delete witness.

* Every run is recorded before anything is written (``start``), then ``published`` with
  its file's rows, bytes and SHA-256, then ``done`` when its delete committed.
* Runs of one task exclude each other: :meth:`ArchiveStore.hold` holds the task's lock
  on the ledger database for the whole run. The lock dies with its holder's process or
  connection (a PostgreSQL session advisory lock, a MariaDB ``GET_LOCK``, or a ``flock`` next
  to a SQLite ledger), so a crashed run never blocks the next.
* When the ledger is another database than the source, each run first commits a start
  marker row into ``archive_commits`` in the *source* database (``deleted`` -1, under an id
  derived from the run's), and the delete's transaction inserts the run's own row (the
  witness): that row exists exactly when the delete committed, and a run with neither row
  read another database. These methods run on a store over the source database.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from .. import db
from ..exceptions import DataError, LedgerError, SluicegateError, TransientError
from .core import LedgerCore, Store

LOCK_WAIT = 60.0  # seconds a run waits for another run of the same archive task to finish
NAMING_LOCK = "(file names)"  # the archive lock taken to choose a file name (no task is named so)
_LOCK_POLL = 0.2


class ArchiveBusy(TransientError):
    """Another run of the archive task holds its lock."""


def _nothing() -> None:
    """The lock check of a lock that cannot be lost while its process lives (a file lock)."""


class ArchiveStore(Store):
    """The ``archive_runs`` of the ledger, and the witness table of a source database."""

    SQL = "archive"

    # ------------------------------------------------------------------ run records

    def unfinished(self, task: str) -> tuple[str, dt.datetime, str, str, int, int] | None:
        """The oldest run of ``task`` that did not finish: ``(id, boundary, path, state, rows, bytes)``."""
        row = self._run("unfinished", task=task).fetchone()
        if row is None:
            return None
        boundary = self.core.from_ts(row[1])
        assert boundary is not None
        return str(row[0]), boundary, str(row[2]), str(row[3]), int(row[4] or 0), int(row[5] or 0)

    def last_done(self, task: str) -> dict[str, Any] | None:
        """The latest finished run of ``task``: boundary, path, rows, deleted, finished_at."""
        row = self._run("last_done", task=task).fetchone()
        if row is None:
            return None
        boundary, finished = self.core.from_ts(row[0]), self.core.from_ts(row[4])
        return {
            "boundary": boundary,
            "path": str(row[1]),
            "rows": row[2],
            "deleted": row[3],
            "finished_at": finished,
        }

    def path_taken(self, path: str) -> bool:
        """Whether a run of any archive task has used the file name ``path`` (tasks whose paths
        render alike, or one's "-2" name another's, would otherwise overwrite a file whose rows
        are already deleted)."""
        return self._run("path_taken", path=path).fetchone() is not None

    def start(self, run_id: str, task: str, boundary: dt.datetime, path: str) -> None:
        """Record a new run before anything is written."""
        self._run("start", id=uuid.UUID(run_id), task=task, boundary=self.core.ts(boundary), path=path)

    def published(
        self, run_id: str, *, rows: int, nbytes: int, checksum: str, cur: Any | None = None
    ) -> None:
        """The run's file is published and verified (in the delete's transaction with ``cur``)."""
        self._run("published", cur, id=uuid.UUID(run_id), rows=rows, bytes=nbytes, checksum=checksum)

    def done(self, run_id: str, *, deleted: int | None, cur: Any | None = None) -> None:
        """The run is finished: its delete committed (in the delete's transaction with ``cur``)."""
        self._run("done", cur, id=uuid.UUID(run_id), deleted=deleted)

    # ------------------------------------------------------------------ the task lock

    @contextlib.contextmanager
    def hold(self, task: str, *, wait: float | None = None) -> Iterator[Callable[[], None]]:
        """Hold the lock of archive task ``task`` on the ledger database for the block.

        Waits up to ``wait`` seconds for it, then raises :class:`ArchiveBusy`. Yields a
        function that raises :class:`LedgerError` when the lock may have been lost (its
        PostgreSQL or MariaDB session ended); the run calls it before it publishes and before
        the delete commits. ``wait`` defaults to :data:`LOCK_WAIT`.
        """
        wait = LOCK_WAIT if wait is None else wait
        if self.core.dialect is db.SQLITE:
            with _file_lock(str(db.sqlite_path(self.core.url)), task, wait) as held:
                yield held
        else:
            with self._session_lock(task, wait) as held:
                yield held

    @contextlib.contextmanager
    def _session_lock(self, task: str, wait: float) -> Iterator[Callable[[], None]]:
        """A lock held by a connection of its own: a PostgreSQL session-level advisory lock, or
        a MariaDB ``GET_LOCK``. Either is released when its connection closes or is lost, and
        the connection is never reconnected: a lost one means a lost lock."""
        session = LedgerCore(self.core.url, schema=self.core.schema)
        try:
            key = {"scope": f"sluicegate archive {self.core.schema}", "task": task}
            own = ArchiveStore(session)
            _wait_for(lambda: own.lock(**key), task, wait)

            def held() -> None:
                lost = f"lost the lock of archive task {task}"
                try:
                    still = own.lock_held(**key)
                except SluicegateError as exc:  # the connection broke: the server has dropped the lock
                    raise LedgerError(f"{lost} ({exc}); nothing was deleted") from exc
                if not still:
                    raise LedgerError(f"{lost}; nothing was deleted")

            yield held
        finally:
            session.close()  # ends the session, which releases its advisory locks

    def lock(self, *, scope: str, task: str) -> bool:
        """PostgreSQL and MariaDB: try to take the session lock of an archive task on this connection."""
        with db.wrap_errors(self.core.url, ledger=True):
            return bool(self.core.conn.execute(self.q["lock"], {"scope": scope, "task": task}).fetchone()[0])

    def lock_held(self, *, scope: str, task: str) -> bool:
        """PostgreSQL and MariaDB: whether this connection still holds the lock of an archive task."""
        with db.wrap_errors(self.core.url, ledger=True):
            row = self.core.conn.execute(self.q["lock_held"], {"scope": scope, "task": task}).fetchone()
        return bool(row[0])

    # ------------------------------------------------------------------ the witness (source database)

    def witness_exists(self) -> bool:
        """Whether the marker table exists (in this store's database: the source)."""
        return self._run("witness_exists", schema=self.core.schema).fetchone() is not None

    def witness_create(self) -> None:
        """Create the marker table if it is missing (idempotent, safe to race)."""
        if self.witness_exists():
            return

        def create(cur: Any) -> None:
            self._script("witness_create", cur)

        try:
            self.core.in_transaction(create)
        except LedgerError as exc:
            raise DataError(
                f"cannot create the table {self.core.prefix}archive_commits in the source database ({exc}); "
                "an archive task whose ledger is another database records each delete there: "
                "let the source user create it"
            ) from exc

    def witness_start(self, run_id: str, task: str) -> None:
        """Commit the start marker of ``run_id`` (a row of its own) before its file is written."""
        self._run("witness_start", id=_start_marker(run_id), task=task)

    def witness(self, cur: Any, run_id: str, task: str, deleted: int) -> None:
        """Insert the marker of ``run_id`` in the open transaction of its delete (``cur``)."""
        self._run("witness", cur, id=uuid.UUID(run_id), task=task, deleted=deleted)

    def witnessed(self, run_id: str) -> int | None:
        """How many rows ``run_id`` deleted; -1 when its delete never committed; None when this
        database has no marker of the run at all (the run read another database, or an older
        sluicegate, which wrote no start markers, ran it)."""
        if not self.witness_exists():
            return None
        for marker in (uuid.UUID(run_id), _start_marker(run_id)):
            row = self._run("witnessed", id=marker).fetchone()
            if row is not None:
                return int(row[0])
        return None


def _start_marker(run_id: str) -> uuid.UUID:
    """The id of a run's start marker in ``archive_commits``: derived from the run's, never equal to one."""
    return uuid.uuid5(uuid.UUID(run_id), "started")


@contextlib.contextmanager
def _file_lock(ledger_file: str, task: str, wait: float) -> Iterator[Callable[[], None]]:
    """SQLite: an exclusive ``flock`` on ``<ledger file>.archive-<task>.lock`` (kept, never removed)."""
    path = f"{ledger_file}.archive-{task}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LedgerError(f"cannot open the archive lock file {path}: {exc}") from exc
    try:

        def take() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        _wait_for(take, task, wait)
        yield _nothing
    finally:
        os.close(fd)  # releases the lock


def _wait_for(take: Callable[[], bool], task: str, wait: float) -> None:
    deadline = time.monotonic() + wait
    while not take():
        if time.monotonic() >= deadline:
            busy = (
                "another archive run is choosing its file name"
                if task == NAMING_LOCK
                else f"another run of archive task {task} is in progress"
            )
            raise ArchiveBusy(f"{busy} (waited {wait:g} s); run it again when that run has finished")
        time.sleep(_LOCK_POLL)
