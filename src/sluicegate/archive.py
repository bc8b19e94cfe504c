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
recovered first by the next run, which must know whether its delete committed:

* ledger in the source database: the ledger's ``done`` is written in the delete's
  transaction, so a run that is not ``done`` deleted nothing;
* ledger elsewhere: the delete's transaction also inserts a marker row into
  ``archive_commits`` in the source database (the witness), so the marker exists exactly
  when the delete committed.

A recovered run whose delete committed is only recorded as ``done``; its file is never
touched again. A recovered run that deleted nothing is redone into the same file name: every
row of the old file is still in the source database, so overwriting it loses nothing, and no
second file repeats its rows. A file name that a run used is never given to another run: a
second run with the same boundary gets ``-2``, ``-3`` ... before the extension.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import gzip
import hashlib
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
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
from .sql import queries

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
        self.witness = Witness(source.dialect, project.settings.ledger_schema)
        self._held: Callable[[], None] = _nothing

    def run(self, task: TaskSpec, *, now: dt.datetime | None = None) -> ArchiveResult:
        """Recover an unfinished run of ``task`` if there is one, else start a new run.

        Holds the task's lock throughout; raises :class:`ArchiveBusy` when another run of the
        task holds it for longer than :data:`LOCK_WAIT` seconds.
        """
        with task_lock(self.ledger, task.name) as held:
            self._held = held
            try:
                row = self.ledger._exec("arc_unfinished", task=task.name).fetchone()
                if row is not None:
                    return self._recover(task, row)
                boundary = boundary_for(task, now or dt.datetime.now(UTC))
                return self._start(task, boundary, recovered=False)
            finally:
                self._held = _nothing

    def _start(self, task: TaskSpec, boundary: dt.datetime, *, recovered: bool) -> ArchiveResult:
        """Record a new run under a file name no run of the task has used, then export."""
        run_id = str(uuid.uuid4())
        path = self._free_path(task, boundary, run_id)
        self.ledger._exec(
            "arc_start", id=uuid.UUID(run_id), task=task.name, boundary=self.ledger._ts(boundary), path=path
        )
        result = ArchiveResult(run_id=run_id, path=path, boundary=boundary.isoformat(), recovered=recovered)
        return self._export(task, boundary, result)

    def _recover(self, task: TaskSpec, row: Any) -> ArchiveResult:
        """Finish a run that did not finish, never overwriting a file whose rows may be deleted."""
        run_id, path, state = str(row[0]), str(row[2]), str(row[3])
        boundary = self.ledger._from_ts(row[1])
        assert boundary is not None and task.archive is not None
        boundary = boundary.astimezone(zone_of(task.archive.zone))
        result = ArchiveResult(run_id=run_id, path=path, boundary=boundary.isoformat(), recovered=True)
        if not self.same_db:
            conn = self.source.conn
            deleted = self.witness.deleted(conn, run_id)
            if deleted is not None:  # the delete committed; only the ledger's "done" was lost
                result.rows, result.bytes, result.deleted = int(row[4] or 0), int(row[5] or 0), deleted
                self.ledger._exec("arc_done", id=uuid.UUID(run_id), deleted=deleted)
                return result
            if state == "published" and task.archive.delete_sql and not self.witness.present(conn):
                # No witness table: an older sluicegate published this file, and whether its
                # delete committed is unknown. Keep the file and write the rows to a new one.
                self.ledger._exec("arc_done", id=uuid.UUID(run_id), deleted=None)
                return self._start(task, boundary, recovered=True)
        # Nothing of this run was deleted: each row of its file is still in the source database,
        # so the same file name is written again, and no second file repeats those rows.
        return self._export(task, boundary, result)

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

    def _export(self, task: TaskSpec, boundary: dt.datetime, result: ArchiveResult) -> ArchiveResult:
        params = {"export_boundary": boundary}
        witnessed = not self.same_db and bool(task.archive and task.archive.delete_sql)
        if witnessed:
            self.witness.ensure(self.source.conn)
        if self.source.dialect is db.POSTGRESQL:
            with self.source.conn.transaction(), self.source.conn.cursor() as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                self._write_and_delete(task, cur, params, result, witnessed)
        else:
            conn = self.source.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._write_and_delete(task, conn.cursor(), params, result, witnessed)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        if not self.same_db:
            # Separate ledger database: recorded after the delete committed. A crash in between
            # leaves the witness row, and the next run only records "done".
            self.fault("after_delete_commit")
            self.ledger._exec("arc_done", id=uuid.UUID(result.run_id), deleted=result.deleted)
        return result

    def _write_and_delete(
        self, task: TaskSpec, cur: Any, params: dict[str, Any], result: ArchiveResult, witnessed: bool
    ) -> None:
        staged = self.dest.stage(result.path)
        try:
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
            if witnessed:  # commits with the delete, or not at all
                self.witness.record(cur, result.run_id, task.name, deleted)
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


# ---------------------------------------------------------------------- the witness


class Witness:
    """Marker rows in the source database that prove an archive run's delete committed.

    Used when the ledger is another database. The marker is inserted in the delete's
    transaction, so it exists exactly when the delete committed. The table is named like the
    ledger's tables there (``sluicegate.archive_commits``, ``sluicegate_archive_commits`` on
    SQLite) and created when a run first needs it.
    """

    def __init__(self, dialect: db.Dialect, schema: str) -> None:
        self.dialect = dialect
        self.schema = schema
        if dialect is db.POSTGRESQL:
            quoted = sql.Identifier(schema).as_string()
            self.q = queries("postgresql", quoted + ".", quoted)
            self.table = f"{schema}.archive_commits"
        else:
            self.q = queries("sqlite", "sluicegate_")
            self.table = "sluicegate_archive_commits"

    def _params(self, **params: Any) -> dict[str, Any]:
        if self.dialect is db.SQLITE:
            return {"now": time.time(), **params}
        return {k: (uuid.UUID(v) if k == "id" else v) for k, v in params.items()}

    def present(self, conn: Any) -> bool:
        """Whether the marker table exists in the source database."""
        found = conn.execute(self.q["arc_witness_exists"], self._params(schema=self.schema)).fetchone()
        return found is not None

    def ensure(self, conn: Any) -> None:
        """Create the marker table if it is missing (idempotent, safe to race)."""
        if self.present(conn):
            return
        try:
            with db.transaction(conn, self.dialect, immediate=True) as cur:
                for statement in self.q["arc_witness_create"].split(";\n"):
                    cur.execute(statement)
        except (psycopg.Error, sqlite3.Error) as exc:
            raise DataError(
                f"cannot create the table {self.table} in the source database ({exc}); an archive task "
                "whose ledger is another database records each delete there: let the source user create it"
            ) from exc

    def record(self, cur: Any, run_id: str, task: str, deleted: int) -> None:
        """Insert the marker of ``run_id`` in the open transaction of its delete."""
        cur.execute(self.q["arc_witness"], self._params(id=run_id, task=task, deleted=deleted))

    def deleted(self, conn: Any, run_id: str) -> int | None:
        """How many rows ``run_id`` deleted, or None when its delete never committed."""
        if not self.present(conn):
            return None
        row = conn.execute(self.q["arc_witnessed"], self._params(id=run_id)).fetchone()
        return None if row is None else int(row[0])


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
