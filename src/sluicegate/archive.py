"""Archive tasks: export rows to one file per run, then delete exactly those rows.

One run is one unit. On PostgreSQL the select and the delete run in one REPEATABLE READ
transaction, so they see the same rows: rows inserted meanwhile are invisible to both, and a
row updated meanwhile makes the delete fail with a serialization error (the run is retried,
nothing is lost). The file is published and verified (size and SHA-256) before the delete
runs; the delete must remove exactly as many rows as the file holds or the transaction rolls
back. On SQLite the whole run holds the write lock (``BEGIN IMMEDIATE``).

Runs of one task exclude each other: each run holds the task's lock on the ledger database
(:func:`task_lock`) from before it looks for an unfinished run until it has finished. The
lock dies with its holder's process or connection, so a crashed run never blocks the next.

The run is recorded on the ledger before anything is written. A run that did not finish is
recovered first by the next run, with the same boundary and the same file name, so rows that
are in a file and still in the database are written again to that same file, never to a
second one. A file name that a finished run used is never reused: a second run in the same
second gets ``-2``, ``-3`` ... before the extension.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import gzip
import hashlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import sql

from . import db
from .config import Project, TaskSpec
from .destinations import Destination, Staged
from .destinations.local import LocalDestination
from .exceptions import DataError, DestinationUnavailable, LedgerError, SluicegateError, TransientError
from .formats import open_writer
from .ledger import Ledger
from .partitions import render_archive_path, zone_of
from .sources import Column
from .sources.postgres import _KINDS

UTC = dt.UTC
_NAMED_PARAM = re.compile(r"%\((\w+)\)s")
LOCK_WAIT = 60.0  # seconds a run waits for another run of the same archive task to finish
_LOCK_POLL = 0.2


class ArchiveBusy(TransientError):
    """Another run of the archive task holds its lock."""


@dataclass(kw_only=True)
class ArchiveResult:
    """What one archive run did."""

    run_id: str
    path: str
    boundary: str
    rows: int = 0
    bytes: int = 0
    deleted: int | None = None
    recovered: bool = False


def boundary_for(task: TaskSpec, now: dt.datetime) -> dt.datetime:
    """The export boundary: today's midnight in the task's zone (the original's), or now."""
    assert task.archive is not None
    zone = zone_of(task.archive.zone)
    if task.archive.boundary == "now":
        return now.astimezone(zone).replace(microsecond=0)
    local = now.astimezone(zone)
    return dt.datetime.combine(local.date(), dt.time(), tzinfo=zone)


class Archiver:
    """Runs archive tasks with the project's source, ledger and destination."""

    def __init__(
        self, project: Project, ledger: Ledger, source: Any, dest: Destination, fault: Callable[[str], None]
    ):
        self.project = project
        self.ledger = ledger
        self.source = source
        self.dest = dest
        self.fault = fault
        self.same_db = project.settings.ledger_url == project.settings.source_url
        self._held: Callable[[], None] = _nothing

    def run(self, task: TaskSpec, *, now: dt.datetime | None = None) -> ArchiveResult:
        """Recover an unfinished run of ``task`` if there is one, else start a new run.

        Holds the task's lock throughout; raises :class:`ArchiveBusy` when another run of the
        task holds it for longer than :data:`LOCK_WAIT` seconds.
        """
        with task_lock(self.ledger, task.name) as held:
            self._held = held
            try:
                return self._run(task, now)
            finally:
                self._held = _nothing

    def _run(self, task: TaskSpec, now: dt.datetime | None) -> ArchiveResult:
        row = self.ledger._exec("arc_unfinished", task=task.name).fetchone()
        if row is not None:
            run_id, boundary, path = str(row[0]), self.ledger._from_ts(row[1]), str(row[2])
            assert boundary is not None
            result = ArchiveResult(run_id=run_id, path=path, boundary=boundary.isoformat(), recovered=True)
            prior = (row[4], row[6]) if row[3] == "published" else None
            return self._export(task, boundary.astimezone(zone_of(task.archive.zone)), result, prior)  # type: ignore[union-attr]
        boundary = boundary_for(task, now or dt.datetime.now(UTC))
        run_id = str(uuid.uuid4())
        path = self._free_path(task, boundary, run_id)
        self.ledger._exec(
            "arc_start", id=uuid.UUID(run_id), task=task.name, boundary=self.ledger._ts(boundary), path=path
        )
        return self._export(
            task, boundary, ArchiveResult(run_id=run_id, path=path, boundary=boundary.isoformat()), None
        )

    def _free_path(self, task: TaskSpec, boundary: dt.datetime, run_id: str) -> str:
        base = render_archive_path(task, boundary, run_id[:8])
        folder, slash, name = base.rpartition("/")
        stem, dot, ext = name.partition(".")  # "-2" goes before the whole extension (.csv.gz)
        candidate, n = base, 1
        while self.ledger._exec("arc_path_taken", task=task.name, path=candidate).fetchone():
            n += 1
            candidate = f"{folder}{slash}{stem}-{n}{dot}{ext}"
        return candidate

    # ------------------------------------------------------------------ one run

    def _export(
        self, task: TaskSpec, boundary: dt.datetime, result: ArchiveResult, prior: tuple[int, str] | None
    ) -> ArchiveResult:
        params = {"export_boundary": boundary}
        if self.source.dialect is db.POSTGRESQL:
            with self.source.conn.transaction(), self.source.conn.cursor() as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                self._write_and_delete(task, cur, params, result, prior)
        else:
            conn = self.source.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._write_and_delete(task, conn.cursor(), params, result, prior)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        if not self.same_db:
            # Separate ledger database: recorded after the delete committed. A crash in between is
            # recovered safely: the next run finds fewer rows than the file holds and keeps the file.
            self.ledger._exec("arc_done", id=uuid.UUID(result.run_id), deleted=result.deleted)
        return result

    def _write_and_delete(
        self,
        task: TaskSpec,
        cur: Any,
        params: dict[str, Any],
        result: ArchiveResult,
        prior: tuple[int, str] | None,
    ) -> None:
        staged = self.dest.stage(result.path)
        try:
            rows = self._write(task, cur, params, staged)
            if prior is not None and rows != prior[0]:
                # A recovered run whose rows changed since its file was published: keep that file
                # (it may hold rows that are gone) and write this content under a new name.
                self.dest.discard(staged)
                result.path = self._free_path(task, dt.datetime.fromisoformat(result.boundary), result.run_id)
                self.ledger._exec("arc_done", id=uuid.UUID(result.run_id), deleted=None)
                new_id = str(uuid.uuid4())
                self.ledger._exec(
                    "arc_start",
                    id=uuid.UUID(new_id),
                    task=task.name,
                    boundary=self.ledger._ts(dt.datetime.fromisoformat(result.boundary)),
                    path=result.path,
                )
                result.run_id = new_id
                staged = self.dest.stage(result.path)
                rows = self._write(task, cur, params, staged)
            self._held()  # still the only run of the task, so no run finished with this file
            self.dest.publish(staged)
            self.dest.sync()
        except OSError as exc:
            self.dest.discard(staged)
            raise DestinationUnavailable(f"cannot write {self.dest.display(result.path)}: {exc}") from exc
        except BaseException:
            self.dest.discard(staged)
            raise
        self._verify(result.path, staged)
        result.rows, result.bytes = rows, staged.file.size
        self._record(
            "arc_published",
            cur,
            id=uuid.UUID(result.run_id),
            rows=rows,
            bytes=staged.file.size,
            checksum=staged.file.sha256,
        )
        self.fault("after_publish")
        if task.archive and task.archive.delete_sql:
            cur.execute(_bind(task.archive.delete_sql, self.source.dialect), params)
            deleted = cur.rowcount
            if deleted != rows:
                raise DataError(
                    f"{task.folder / 'delete.sql'} deleted {deleted} rows but the file holds {rows}; "
                    "rolled back, nothing deleted: make delete.sql remove exactly the rows select.sql returns"
                )
            result.deleted = deleted
        self.fault("before_delete_commit")
        self._held()
        if self.same_db:  # finished in the same transaction as the delete
            self._record("arc_done", cur, id=uuid.UUID(result.run_id), deleted=result.deleted)

    def _record(self, name: str, cur: Any, **params: Any) -> None:
        """A ledger write: inside the run's transaction when the ledger shares the source database."""
        if self.same_db:
            cur.execute(self.ledger.q[name], self.ledger._params(**params))
        else:
            self.ledger._exec(name, **params)

    def _write(self, task: TaskSpec, cur: Any, params: dict[str, Any], staged: Staged) -> int:
        query = _bind(task.select_sql, self.source.dialect)
        if self.source.dialect is db.POSTGRESQL and task.format in ("csv", "csv.gz"):
            # The original's own COPY ... CSV HEADER output, byte for byte, gzip without a name or time.
            out: Any = (
                gzip.GzipFile(filename="", fileobj=staged.file, mode="wb", mtime=0)
                if task.format == "csv.gz"
                else staged.file
            )
            lines = 0
            with cur.copy(
                sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER)").format(sql.SQL(query)), params
            ) as copy:
                for data in copy:
                    out.write(data)
                    lines += 1
            if out is not staged.file:
                out.close()
            return max(lines - 1, 0)
        cur.execute(query, params)
        columns = [_column(d) for d in cur.description]
        writer = open_writer(task.format, staged.file, columns, task.archive.zone if task.archive else None)
        while chunk := cur.fetchmany(5000):
            writer.write([tuple(r) for r in chunk], "rows")
        writer.close()
        return writer.rows

    def _verify(self, path: str, staged: Staged) -> None:
        """Read the published file back (local) or ask the store (S3) and compare size and SHA-256."""
        if isinstance(self.dest, LocalDestination):
            digest = hashlib.sha256((self.dest.root / path).read_bytes()).hexdigest()
            if digest != staged.file.sha256:
                raise DestinationUnavailable(
                    f"{self.dest.display(path)} does not match what was written; not deleting"
                )
        elif not self.dest.exists(path, staged.file.size):
            raise DestinationUnavailable(
                f"{self.dest.display(path)} is missing or has the wrong size; not deleting"
            )


# ---------------------------------------------------------------------- the task lock


@contextlib.contextmanager
def task_lock(ledger: Ledger, task: str) -> Iterator[Callable[[], None]]:
    """Hold the lock of archive task ``task`` on the ledger database for the block.

    The lock is released when the block ends, and by the operating system or the database
    when the holder's process or connection dies, so there is no lease to expire. A run
    waits up to :data:`LOCK_WAIT` seconds for it, then raises :class:`ArchiveBusy`.

    Yields a function that raises :class:`LedgerError` when the lock may have been lost
    (its PostgreSQL session ended); the run calls it before it publishes and before
    the delete commits. One function per database, so a MariaDB ``GET_LOCK`` fits here.
    """
    if ledger.dialect is db.POSTGRESQL:
        with _advisory_lock(ledger, task) as held:
            yield held
    else:
        with _file_lock(db.sqlite_path(ledger.url), task) as held:
            yield held


@contextlib.contextmanager
def _advisory_lock(ledger: Ledger, task: str) -> Iterator[Callable[[], None]]:
    """PostgreSQL: a session-level advisory lock on a connection of its own."""
    conn = db.connect(ledger.url)
    try:
        key = {"scope": f"sluicegate archive {ledger.schema}", "task": task}
        _wait_for(lambda: bool(ledger._exec("arc_lock", conn.cursor(), **key).fetchone()[0]), task)

        def held() -> None:
            lost = f"lost the lock of archive task {task}"
            try:
                still = bool(ledger._exec("arc_lock_held", conn.cursor(), **key).fetchone()[0])
            except SluicegateError as exc:  # the connection broke: the server has dropped the lock
                raise LedgerError(f"{lost} ({exc}); nothing was deleted") from exc
            if not still:
                raise LedgerError(f"{lost}; nothing was deleted")

        yield held
    finally:
        conn.close()  # ends the session, which releases its advisory locks


@contextlib.contextmanager
def _file_lock(ledger_file: Path, task: str) -> Iterator[Callable[[], None]]:
    """SQLite: an exclusive ``flock`` on ``<ledger file>.archive-<task>.lock`` (kept, never removed)."""
    path = f"{ledger_file}.archive-{task}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LedgerError(f"cannot open the lock file {path} of archive task {task}: {exc}") from exc
    try:

        def take() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        _wait_for(take, task)
        yield _nothing
    finally:
        os.close(fd)  # releases the lock


def _wait_for(take: Callable[[], bool], task: str) -> None:
    deadline = time.monotonic() + LOCK_WAIT
    while not take():
        if time.monotonic() >= deadline:
            raise ArchiveBusy(
                f"another run of archive task {task} is in progress (waited {LOCK_WAIT:g} s); "
                "run it again when that run has finished"
            )
        time.sleep(_LOCK_POLL)


def _nothing() -> None:
    """The lock check of a lock that cannot be lost while its process lives (a file lock)."""


def _bind(query: str, dialect: db.Dialect) -> str:
    """The original's ``%(export_boundary)s`` placeholders, in the driver's style."""
    if dialect is db.SQLITE:
        return _NAMED_PARAM.sub(r":\1", query)
    return query


def _column(desc: Any) -> Column:
    type_code = getattr(desc, "type_code", None)
    kind = _KINDS.get(type_code, "other") if isinstance(type_code, int) else "other"
    return Column(name=desc[0], kind=kind)


def archive_error(exc: BaseException) -> str:
    """A one-line message for a failed archive run."""
    return str(exc) if isinstance(exc, SluicegateError) else f"{type(exc).__name__}: {exc}"
