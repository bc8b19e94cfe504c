"""Archive tasks: export rows to one file per run, then delete exactly those rows.

One run is one work unit. The select and the delete run in one source transaction
(:meth:`Source.snapshot`: ``REPEATABLE READ`` on PostgreSQL, ``SERIALIZABLE`` on MariaDB, the
write lock on SQLite), so they see the same rows. The pipeline publishes the file; the
recorder then verifies it (size and SHA-256), records it as published, and deletes: the
delete must remove exactly as many rows as the file holds or the transaction rolls back.

Runs of one task exclude each other: each holds the task's lock on the ledger database
(:meth:`ArchiveStore.hold`) from before it looks for an unfinished run until it has finished.
A run that did not finish is recovered first by the next run, which must know whether its
delete committed: with the ledger in the source database, ``done`` is written in the delete's
transaction; otherwise the delete's transaction also inserts a witness row into the source
database, where the run committed a start marker before writing its file. A recovered run
whose delete committed is only recorded as ``done`` (its file is never touched again); one
that deleted nothing is redone into the same file name: every row of the old file is still in
the source, so no second file repeats them. A published run with neither row read another
database (source.url changed since): its file is kept, and the rows go to a new file. A file
name that a run used is never given to another run: a second run with the same boundary gets
``-2``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .. import db, paths, validate
from ..exceptions import (
    BadPartitionValue,
    ConfigError,
    DataError,
    ExportError,
    PermissionDenied,
    SluicegateError,
)
from ..formats import SPECS as FORMATS
from ..ledger import Ledger
from ..ledger.archive import NAMING_LOCK
from ..options import Budget, RunOptions, TaskSummary
from ..partitions import zone_of
from ..pipeline import Pipeline
from ..sources import Mode, Slice, Snapshot, Source
from ..sources.sqlite import bind_named
from ..specs import Settings, TaskBase
from ..taskfields import BASE_KEYS, base_fields
from ..work import Outcome, Place, WorkUnit, as_export_error
from . import Context, Progress

UTC = dt.UTC
ARCHIVE_PATH = "{task}-{boundary:%Y_%m_%d-%I_%M_%S_%p}.{ext}"
LEDGER_STORES = ("archive",)  # the ledger stores a run uses (sluicegate grants)
KEYS = BASE_KEYS | {"zone", "boundary"}


@dataclass(frozen=True, kw_only=True)
class Task(TaskBase):
    """Export-then-delete (or a plain snapshot when there is no delete.sql), one file per run."""

    kind = "archive"
    delete_sql: str | None
    zone: str = "UTC"
    boundary: Literal["midnight", "now"] = "midnight"


def load(*, name: str, folder: Path, raw: Mapping[str, Any], settings: Settings) -> Task:
    """Read an archive task's ``task.toml`` and its optional ``delete.sql``."""
    where = str(folder / "task.toml")
    validate.reject_unknown(raw, KEYS, where)
    boundary = raw.get("boundary", "midnight")
    if boundary not in ("midnight", "now"):
        raise ConfigError(
            f"{where} boundary: {boundary!r} is not valid; use 'midnight' (today, in zone) or 'now'"
        )
    delete_path = folder / "delete.sql"
    delete_sql = validate.statement(validate.text_file(delete_path)) if delete_path.is_file() else None
    if delete_sql is not None and not delete_sql:
        raise ConfigError(f"{delete_path} is empty; remove it for a snapshot export or write the DELETE")
    task = Task(
        **base_fields(
            name=name,
            folder=folder,
            raw=raw,
            settings=settings,
            default_format="csv.gz",
            default_path=ARCHIVE_PATH,
        ),
        delete_sql=delete_sql,
        zone=validate.zone_name(raw.get("zone", "UTC"), f"{where} zone"),
        boundary=boundary,
    )
    paths.check_template(
        task.path, folder, allowed={"task", "boundary", "run", "format", "ext"}, required=(),
        what="run field", fmt=task.format,
    )  # fmt: skip
    try:  # a template that escapes the destination is the task's configuration error
        render_archive_path(task, dt.datetime(2024, 1, 31, tzinfo=UTC), "0123abcd")
    except BadPartitionValue as exc:
        raise ConfigError(f"{folder / 'task.toml'} path: {exc}") from None
    return task


def render_archive_path(task: Task, boundary: dt.datetime, run: str) -> str:
    """An archive task's file name for one run (the boundary in the task's zone)."""
    named = {
        "task": task.name,
        "boundary": boundary,
        "run": run,
        "format": task.format,
        "ext": task.extension,
    }
    return paths.render(task.path, named)


def boundary_for(task: Task, now: dt.datetime) -> dt.datetime:
    """The export boundary: today's midnight in the task's zone (the original's), or now."""
    zone = zone_of(task.zone)
    if task.boundary == "now":
        return now.astimezone(zone).replace(microsecond=0)
    return dt.datetime.combine(now.astimezone(zone).date(), dt.time(), tzinfo=zone)


@dataclass(kw_only=True)
class ArchiveRun:
    """What one archive run did (an entry of the run summary's ``archive`` list)."""

    run_id: str
    path: str
    boundary: str
    rows: int = 0
    bytes: int = 0
    deleted: int | None = None
    recovered: bool = False


class Recorder:
    """After the file is published: verify it, record it, delete its rows, in the snapshot."""

    def __init__(
        self, task: Task, run: ArchiveRun, snapshot: Snapshot, context: Context, held: Callable[[], None]
    ) -> None:
        self.task, self.run, self.snapshot, self.context, self.held = task, run, snapshot, context, held
        self.shared = context.project.settings.shared_database
        self.error: SluicegateError | None = None
        self.committed = False

    def commit(self, outcomes: Sequence[Outcome], place: Place) -> list[bool]:
        """Place and verify the file, record ``published``, delete its rows; ``done`` in one transaction.

        With the ledger in the source database, ``published`` comes first, else the witness: it
        locks a row until the commit, so a run that redoes this one (after this one's lock died)
        cannot place its file in between, nor this one after it.

        The task lock (``ledger.archive.hold``) keeps a second run of the task out, so the file
        is placed without a claim to check. An error sluicegate does not know (a bug) is raised
        as an :class:`ExportError`, which the pipeline reports through :meth:`fail`.
        """
        try:
            self._commit(outcomes, place)
        except SluicegateError:
            raise
        except Exception as exc:
            raise as_export_error(exc) from exc
        self.committed = True
        return [True]

    def _commit(self, outcomes: Sequence[Outcome], place: Place) -> None:
        [outcome] = outcomes
        ctx, run, cur = self.context, self.run, self.snapshot.cursor
        # A run whose lock died during its read may have been redone, deleted and finished by
        # another run since: its older file must not replace that run's at the same name. Past
        # the lock check, a row that such a run writes too is locked here until the commit, so
        # one of the two waits, or fails, before placing: the run's ledger row with the ledger
        # in the source database, else its witness (which commits with the delete or not at
        # all; the delete must remove exactly as many rows as the file holds).
        self.held()
        if self.shared:
            self._published(outcome, cur)
        elif self.task.delete_sql:
            ctx.inbox.archive.witness(cur, run.run_id, self.task.name, outcome.rows)
        place(outcomes)
        if outcome.path is not None:
            assert outcome.checksum is not None
            ctx.destination.verify(outcome.path, outcome.nbytes, outcome.checksum, outcome.etag)
        run.rows, run.bytes = outcome.rows, outcome.nbytes
        if not self.shared:  # on the ledger at once: published and verified
            self._published(outcome, None)
        ctx.fault("after_publish")  # the file is published, verified and recorded; nothing deleted
        if self.task.delete_sql:
            deleted = self.snapshot.execute(
                self.task.delete_sql, {"export_boundary": dt.datetime.fromisoformat(run.boundary)}
            )
            if deleted != outcome.rows:
                raise DataError(
                    f"{self.task.folder / 'delete.sql'} deleted {deleted} rows "
                    f"but the file holds {outcome.rows}; "
                    "rolled back, nothing deleted: make delete.sql remove exactly the rows select.sql returns"
                )
            run.deleted = deleted
        ctx.fault("before_delete_commit")
        self.held()
        if self.shared:  # finished in the same transaction as the delete
            ctx.ledger.archive.done(run.run_id, deleted=run.deleted, cur=cur)

    def _published(self, outcome: Outcome, cur: Any) -> None:
        self.context.ledger.archive.published(
            self.run.run_id,
            rows=outcome.rows,
            nbytes=outcome.nbytes,
            checksum=outcome.checksum or "",
            cur=cur,
        )

    def fail(self, unit: WorkUnit, error: SluicegateError) -> None:
        """Remember the error: the snapshot is rolled back, and the run redone next time."""
        self.error = error

    def renew(self, tokens: Collection[str]) -> None:
        """Nothing to renew: the run holds its lock, not a lease."""

    def release(self, tokens: Collection[str]) -> int:
        """Nothing to release."""
        return 0


class Driver:
    """Runs archive tasks."""

    failures_unrecorded = True  # a failed run has no ledger row of its own: the engine keeps its error

    def __init__(self, context: Context) -> None:
        self.context = context

    def plan(self, task: Task, options: RunOptions, *, summary: TaskSummary, limit: int | None) -> None:
        """The file the next run would write."""
        boundary = boundary_for(task, dt.datetime.now(UTC))
        path = self._free_path(task, boundary, "dryrun0")
        summary.plan.append(
            {"partition": {"task": task.name}, "reason": "archive", "boundary": boundary.isoformat(),
             "path": self.context.destination.display(path)}
        )  # fmt: skip

    def run(
        self,
        task: Task,
        options: RunOptions,
        *,
        summary: TaskSummary,
        budget: Budget,
        limit: int | None,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> int:
        """Recover an unfinished run of ``task`` if there is one, else run a new one.

        Raises :class:`PermissionDenied` (the task fails, recorded on the ledger as its error)
        before anything is recorded or written when the role may not run ``delete.sql``.
        """
        store = self.context.ledger.archive
        if task.delete_sql:
            self._check_delete(task)
        try:
            with store.hold(task.name) as held:
                unfinished = store.unfinished(task.name)
                if unfinished is not None:
                    run = self._recover(task, unfinished, held, summary)
                else:
                    run = self._start(
                        task, boundary_for(task, dt.datetime.now(UTC)), held, summary, recovered=False
                    )
        except SluicegateError as exc:
            summary.note_failure("", str(exc))  # the run is the task's one unit
            return 1
        summary.run_id = run.run_id
        summary.archive.append(dataclasses.asdict(run))
        return 1

    def _check_delete(self, task: Task) -> None:
        """Fail closed: ``EXPLAIN`` the delete (the server checks its privileges, deletes nothing)."""
        assert task.delete_sql
        delete = bind_named(task.delete_sql) if self.context.source.dialect is db.SQLITE else task.delete_sql
        try:
            self.context.source.execute(f"EXPLAIN {delete}", {"export_boundary": dt.datetime.now(UTC)})
        except PermissionDenied as exc:
            cause = str(exc.__cause__ or exc).strip().splitlines()[0]
            how = (
                ""
                if self.context.source.dialect is db.MARIADB  # grants are printed for PostgreSQL only
                else f" (`sluicegate grants {task.name}` prints the GRANTs)"
            )
            raise PermissionDenied(
                f"archive task {task.name}: the source role may not run {task.folder / 'delete.sql'} "
                f"({cause}), so nothing was exported or deleted; grant it DELETE on that table{how} "
                "and run again"
            ) from exc

    def _start(
        self,
        task: Task,
        boundary: dt.datetime,
        held: Callable[[], None],
        summary: TaskSummary,
        *,
        recovered: bool,
    ) -> ArchiveRun:
        """Record a new run under a file name no run of the task has used, then export."""
        run_id = str(uuid.uuid4())
        store = self.context.ledger.archive
        # Runs of two tasks whose paths render alike (`sluicegate run` runs tasks side by side)
        # both found a name free before either recorded it: one name at a time.
        with store.hold(NAMING_LOCK):
            path = self._free_path(task, boundary, run_id)
            store.start(run_id, task.name, boundary, path)
        run = ArchiveRun(run_id=run_id, path=path, boundary=boundary.isoformat(), recovered=recovered)
        return self._export(task, run, held, summary)

    def _recover(
        self, task: Task, unfinished: tuple[str, dt.datetime, str, str, int, int], held: Callable[[], None],
        summary: TaskSummary,
    ) -> ArchiveRun:  # fmt: skip
        """Finish a run that did not finish, never overwriting a file whose rows may be deleted."""
        ctx = self.context
        run_id, boundary, path, state, rows, nbytes = unfinished
        boundary = boundary.astimezone(zone_of(task.zone))
        run = ArchiveRun(run_id=run_id, path=path, boundary=boundary.isoformat(), recovered=True)
        if not ctx.project.settings.shared_database:
            deleted = ctx.inbox.archive.witnessed(run_id)
            if deleted is not None and deleted >= 0:  # the delete committed; only "done" was lost
                run.rows, run.bytes, run.deleted = rows, nbytes, deleted
                ctx.ledger.archive.done(run_id, deleted=deleted)
                return run
            if state == "published" and task.delete_sql and deleted is None:
                # No marker of the run in the source database: source.url names another
                # database than the one the run read (whose delete may have committed), or an
                # older sluicegate published this file. Keep the file; the rows go to a new one.
                ctx.ledger.archive.done(run_id, deleted=None)
                return self._start(task, boundary, held, summary, recovered=True)
        # Nothing of this run was deleted: each row of its file is still in the source database,
        # so the same file name is written again, and no second file repeats those rows; in the
        # format that name says, should `format` have changed since (the next run takes the new).
        return self._export(task, run, held, summary, fmt=_named_format(path, task.format))

    def _free_path(self, task: Task, boundary: dt.datetime, run_id: str) -> str:
        base = render_archive_path(task, boundary, run_id[:8])
        folder, slash, name = base.rpartition("/")
        # "-2" goes before the whole extension (.csv.gz), not before the first dot: task
        # "my.arch"'s second file of a day was "my-2.arch-<day>.csv", task "my-2.arch"'s first.
        suffix = f".{task.extension}"
        stem, ext = (name[: -len(suffix)], suffix) if name.endswith(suffix) else (name, "")
        candidate, n = base, 1
        while self.context.ledger.archive.path_taken(candidate):  # by any task: one destination
            n += 1
            candidate = f"{folder}{slash}{stem}-{n}{ext}"
        return candidate

    def _export(
        self, task: Task, run: ArchiveRun, held: Callable[[], None], summary: TaskSummary,
        fmt: str | None = None,
    ) -> ArchiveRun:  # fmt: skip
        """Read, publish, verify, delete: one snapshot; then, with a separate ledger, ``done``."""
        ctx = self.context
        fmt = fmt or task.format
        shared = ctx.project.settings.shared_database
        if not shared and task.delete_sql:
            ctx.inbox.archive.witness_create()
            ctx.inbox.archive.witness_start(run.run_id, task.name)
        params = {"export_boundary": dt.datetime.fromisoformat(run.boundary)}
        want: Mode = "csv" if fmt in ("csv", "csv.gz") and ctx.source.dialect is db.POSTGRESQL else "rows"
        with ctx.source.snapshot() as snapshot:
            columns, mode, chunks = snapshot.read(_select(task, ctx.source), params, want)
            recorder = Recorder(task, run, snapshot, ctx, held)
            unit = WorkUnit(
                key="", slice=Slice(zone=task.zone), path=run.path, handle=run, keys={}, version=run.run_id,
                empty_file=True,  # a run with no rows still writes its file: the header alone
                fenced=True,  # S3: no upload over an object there before the lock check (``Recorder``)
            )  # fmt: skip
            ctx.destination.check_path(run.path)
            pipeline = Pipeline(
                read=lambda units: ((0, chunk) for chunk in chunks), format=fmt, columns=columns,
                mode=mode, destination=ctx.destination, recorder=recorder, summary=summary,
                budget=Budget(deadline=None), lease=ctx.project.settings.lease, fault=_pipeline_fault(ctx),
                feed=ctx.feed(task),
            )  # fmt: skip
            with pipeline:
                held()  # still the only run of the task, so no run finished with this file
                pipeline.export([unit])
                pipeline.flush()
            if recorder.error is not None:
                raise recorder.error  # rolls the snapshot back: nothing is deleted
            if not recorder.committed:  # the pipeline swallowed what stopped it: never "done"
                raise ExportError(
                    f"archive task {task.name}: the run stopped before its delete; nothing was deleted"
                )
        if not shared:
            # Separate ledger database: recorded after the delete committed. A crash in between
            # leaves the witness row, and the next run only records "done".
            ctx.fault("after_delete_commit")
            ctx.ledger.archive.done(run.run_id, deleted=run.deleted)
        return run


def _named_format(path: str, configured: str) -> str:
    """The format whose extension ends ``path`` (the longest: ``.csv.gz`` before ``.csv``), or
    ``configured`` when none does (a path template without ``{ext}``)."""
    named = [f for f, spec in FORMATS.items() if path.endswith(f".{spec.extension}")]
    return max(named, key=len) if named else configured


def _pipeline_fault(ctx: Context) -> Callable[[str], None]:
    """The pipeline's fault points but ``after_publish``, which an archive run reaches later:
    once its file is verified and recorded as published (see :class:`Recorder`)."""
    return lambda point: None if point == "after_publish" else ctx.fault(point)


def _select(task: Task, source: Source) -> str:
    """The select with the original's ``%(export_boundary)s`` placeholder in the driver's style."""
    return bind_named(task.select_sql) if source.dialect is db.SQLITE else task.select_sql


def check(task: Task, source: Source) -> list[str]:
    """Compile select.sql and delete.sql with a boundary; nothing is read or deleted."""
    params = {"export_boundary": dt.datetime.now(UTC)}
    checks = [(task.folder / "select.sql", f"SELECT * FROM ({_select(task, source)}) AS q LIMIT 0")]
    if task.delete_sql:
        delete = bind_named(task.delete_sql) if source.dialect is db.SQLITE else task.delete_sql
        checks.append((task.folder / "delete.sql", f"EXPLAIN {delete}"))
    problems = []
    for path, query in checks:
        try:
            source.execute(query, params)
        except SluicegateError as exc:
            problems.append(f"{path}: the query failed: {exc}; fix the SQL")
    return problems


def status(task: Task, ledger: Ledger) -> dict[str, Any]:
    """Archive tasks have no partitions: the latest finished run (its file, rows and rows deleted)
    and whether a run is unfinished (the next run completes it first)."""
    last, unfinished = ledger.archive.last_done(task.name), ledger.archive.unfinished(task.name)
    return {
        "task": task.name,
        "kind": "archive",
        "last_run": last["finished_at"].isoformat(timespec="seconds") if last else "none yet",
        "rows_before": last["boundary"].isoformat() if last else None,
        "file": last["path"] if last else None,
        "rows": last["rows"] if last else None,
        "deleted": last["deleted"] if last else None,
        "unfinished": unfinished is not None,  # the next run completes it first
        "unfinished_run": f"{unfinished[3]} to {unfinished[2]}" if unfinished else None,
    }


def describe(task: Task) -> dict[str, Any]:
    """The delete and the boundary, for ``sluicegate tasks``."""
    return {
        "keys": [],
        "time": None,
        "capture": None,  # no [capture]: partitioned tasks only
        "boundary": task.boundary,
        "delete": task.delete_sql,
    }
