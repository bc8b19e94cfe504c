"""The batch pipeline: read -> encode -> publish -> record, for a list of work units.

Every task kind exports through a :class:`Pipeline`. A driver hands it batches of
:class:`WorkUnit` (what to read, where to write, how the outcome is recorded); the pipeline

1. reads the batch with one query (its ``read`` function: a source read, or an archive
   snapshot), chunk by chunk, each chunk belonging to one unit, in unit order;
2. encodes each unit's chunks into a staged file (the format's writer);
3. hands each complete unit to publisher threads, which finish the encoding (compression,
   Parquet footers) and prepare the file (a durable temp file; a conditional upload), or skip
   it when its bytes are unchanged;
4. records a group with one ``recorder.commit(outcomes, place)``: the recorder locks what the
   units still hold, calls ``place`` for those (``destination.sync``: the renames, deletions
   of files of units that have no rows any more, the uploads a store left pending), and
   commits them in the same transaction, so a worker whose claim was taken over never puts
   a file in place (fencing). With a change feed, ``place`` then writes the group's
   manifest (:mod:`sluicegate.changes`), so that it is durable before the commit. A group
   is committed when enough files or bytes are in flight (``MAX_INFLIGHT``,
   ``MAX_INFLIGHT_BYTES``) and at the end of each batch, except the newest ``keep`` files,
   which go on publishing while the driver reads its next batch.

It also renews the units' leases while reading (every lease/3), stops in time for the
run's :class:`~sluicegate.options.Budget` (what is read is committed, the rest released),
isolates a unit whose rows break the batch query (each unit of a failed batch is read again
on its own), and stops at the named fault points tests kill workers at. Failures are
recorded per unit through the recorder; a :class:`~sluicegate.exceptions.LedgerError` stops
the task (nothing can be recorded).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .changes import ChangeFeed
from .destinations import Destination, Staged
from .exceptions import ExportError, LedgerError, SluicegateError, is_transient
from .formats import Writer, open_writer
from .options import Budget, TaskSummary
from .sources import Column, Mode, Slice

log = logging.getLogger("sluicegate")

PUBLISH_THREADS = 4
MAX_INFLIGHT = 256  # units handed to the publishers and not yet committed ...
MAX_INFLIGHT_BYTES = 64 * 1024 * 1024  # ... and the bytes they hold in memory


@dataclass(frozen=True, kw_only=True)
class Previous:
    """A unit's last export: an unchanged file (same path and SHA-256) is not uploaded again."""

    path: str | None
    checksum: str | None
    etag: str | None = None  # the store's ETag of that file, when the store gives one


@dataclass(frozen=True, kw_only=True)
class WorkUnit:
    """One file's worth of rows: what to read, where to write, and the driver's handle on it."""

    key: str  # the unit's identity in errors and counts (a partition key, an entity, a run)
    slice: Slice  # what to read (key values, window, zone)
    path: str  # where to write, relative to the destination
    token: str = ""  # the claim token whose lease covers the unit ("" for none)
    previous: Previous | None = None  # None: always publish
    fenced: bool = False  # its upload is conditional on the previous file (see destinations)
    handle: Any = None  # the driver's own record of the unit (a claim, a window, a run)
    keys: Mapping[str, Any] | None = None  # what the change feed names it by (partition keys ...)
    version: Any = None  # ... and which version of it the file holds


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """A unit's file, durable at its path (or no file: the unit has no rows), ready to record."""

    unit: WorkUnit
    path: str | None
    rows: int
    nbytes: int
    checksum: str | None
    published: bool  # False: the bytes were unchanged and the upload skipped
    remove: str | None = None  # a previous file to delete when the outcome is placed (no rows now)
    staged: Staged | None = field(default=None, repr=False, compare=False)

    @property
    def etag(self) -> str | None:
        """The store's ETag of the file, once it is in place (the previous one when unchanged)."""
        if self.staged is not None and self.staged.etag:
            return self.staged.etag
        previous = self.unit.previous
        return previous.etag if previous and not self.published and self.path == previous.path else None


Place = Callable[[Sequence[Outcome]], None]


class Recorder(Protocol):
    """Where a driver records outcomes: partition versions, watermarks, archive runs ..."""

    def commit(self, outcomes: Sequence[Outcome], place: Place) -> list[bool]:
        """Record durable files in one transaction; False per outcome whose claim was lost.

        ``place(outcomes)`` puts the files of the outcomes that will be recorded in place
        (durably); call it before recording them, inside the transaction that fences them
        when the units are claims, so that a lost claim's file is never put in place.
        """
        ...

    def fail(self, unit: WorkUnit, error: SluicegateError) -> None:
        """Record a failed unit (retry with backoff, or park it)."""
        ...

    def renew(self, tokens: Collection[str]) -> None:
        """Extend the leases of the units held under ``tokens``."""
        ...

    def release(self, tokens: Collection[str]) -> int:
        """Give back, without an attempt, what is still held under ``tokens``; return how many."""
        ...


@dataclass(frozen=True)
class UnitFailed:
    """What a read function yields, as ``(index, UnitFailed(error))``, to fail one unit of a batch.

    The unit's chunks so far are discarded and the failure is recorded; the other units of
    the batch go on (a callable that fails for one block, not a query that fails for all).
    """

    error: SluicegateError


Reader = Callable[[Sequence[WorkUnit]], Iterator[tuple[int, Any]]]
Fault = Callable[[str], None]


class Deadline(Exception):
    """The run's time budget is used up: stop reading, commit what is read, release the rest."""


def fault_point(settings_fault: str | None, root: Path) -> Fault:
    """Pause at the named point a test asked for (``[testing] fault``), so it can kill us.

    The pause writes ``root/.fault-<point>`` (our pid) and lasts until the test removes that
    file (a stalled worker that goes on, e.g. after SIGSTOP and SIGCONT), once per process.
    """
    fired: set[str] = set()

    def fault(point: str) -> None:
        if settings_fault == point and point not in fired:
            fired.add(point)
            marker = root / f".fault-{point}"
            marker.write_text(str(os.getpid()))
            while marker.exists():
                time.sleep(0.05)

    return fault


def as_export_error(exc: BaseException) -> SluicegateError:
    """A sluicegate error as it is; anything else becomes a terminal error naming its type.

    Errors sluicegate does not know are terminal: retrying a programming error with backoff
    only hides it, while a parked unit shows it in ``status``.
    """
    if isinstance(exc, SluicegateError):
        return exc
    log.debug("unexpected error while exporting", exc_info=exc)
    return ExportError(f"{type(exc).__name__}: {exc}")


@dataclass(kw_only=True)
class _Job:
    """One unit inside a batch, while it is read, published and committed."""

    unit: WorkUnit
    staged: Staged | None = None
    writer: Writer | None = None
    error: SluicegateError | None = None
    done: bool = False
    held: int = 0  # bytes in memory while in flight


class Pipeline:
    """Exports batches of units of one task to one destination, recording through one recorder."""

    def __init__(
        self,
        *,
        read: Reader,
        format: str,
        columns: Sequence[Column],
        mode: Mode,
        destination: Destination,
        recorder: Recorder,
        summary: TaskSummary,
        budget: Budget,
        lease: float,
        fault: Fault | None = None,
        fernet_key: str | None = None,
        feed: ChangeFeed | None = None,
    ) -> None:
        self.read = read
        self.format = format
        self.columns = list(columns)
        self.mode = mode
        self.destination = destination
        self.recorder = recorder
        self.summary = summary
        self.budget = budget
        self.lease = lease
        self.fault = fault or (lambda point: None)
        self.fernet_key = fernet_key  # JSON lines artifacts: encrypt each file with this key
        self.feed = feed  # a manifest per placed group, before its commit (None: no change feed)
        # Publishing (fsync + rename, or an upload) overlaps with reading the next units.
        self._pool = ThreadPoolExecutor(max_workers=PUBLISH_THREADS, thread_name_prefix="sluicegate-publish")
        self._inflight: list[tuple[_Job, Future[Outcome]]] = []
        self._held = 0  # bytes the in-flight units keep in memory (an estimate)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the publisher threads (commit first with :meth:`flush`)."""
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ batches

    def export(self, units: Sequence[WorkUnit], *, keep: int = 0) -> None:
        """Export one batch; all but the newest ``keep`` files are committed when it returns.

        Raises :class:`Deadline` after committing what was read when the budget ran out
        (the batch's unread units are released), and LedgerError when nothing can be recorded.
        """
        if not units:
            return
        jobs = [_Job(unit=u) for u in units]
        try:
            try:
                self._stream(jobs, keep=keep)
            except (Deadline, LedgerError):
                raise
            except Exception as exc:
                self._batch_failed(jobs, as_export_error(exc))
        except Deadline:
            self.flush()
            tokens = {u.token for u in units if u.token}
            self.summary.released += self.recorder.release(tokens) if tokens else 0
            for job in jobs:
                self._discard(job)
            raise
        except LedgerError:
            # Nothing can be recorded (the claims wait for their lease): no later flush may
            # put in place a file in flight, of this batch or an earlier one.
            self.abandon()
            for job in jobs:
                self._discard(job)
            raise

    def abandon(self) -> None:
        """Drop every file in flight without recording it (the ledger cannot be written)."""
        inflight, self._inflight = self._inflight, []
        self._held = 0
        for job, future in inflight:
            with contextlib.suppress(Exception):
                outcome = future.result()  # the publisher thread is done with the spool
                if outcome.staged is not None:
                    self.destination.discard(outcome.staged)
            self._discard(job)

    def fail(self, unit: WorkUnit, error: BaseException) -> None:
        """Record a unit that failed before it could be read (a bad path, a bad key)."""
        self._fail(unit, as_export_error(error))

    def flush(self, keep: int = 0) -> None:
        """Wait for the oldest published files (all but ``keep``), make them durable, commit them at once."""
        if len(self._inflight) <= keep:
            return
        started = time.monotonic()
        try:
            self._flush(keep)
        finally:
            self.budget.note_flush(time.monotonic() - started)

    # ------------------------------------------------------------------ reading and encoding

    def _stream(self, jobs: list[_Job], keep: int = 0) -> None:
        """Read, encode and hand ``jobs`` to the publishers; commit all but ``keep`` of the newest."""
        renewed = time.monotonic()
        position = 0
        chunks = self.read([j.unit for j in jobs])
        try:
            for index, chunk in chunks:
                while position < index:  # units before this one are complete (or empty)
                    self._seal(jobs[position])
                    position += 1
                    self._check_deadline()
                self._write(jobs[index], chunk)
                if self.budget.over():  # a large unit: stop reading it, not only between units
                    raise Deadline
                if time.monotonic() - renewed > self.lease / 3:
                    self._renew(jobs)
                    renewed = time.monotonic()
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        for job in jobs[position:]:
            self._seal(job)
            self._check_deadline()
        self.flush(keep=keep)

    def _write(self, job: _Job, chunk: Any) -> None:
        if job.error is not None:
            return
        if isinstance(chunk, UnitFailed):
            job.error = chunk.error
            return
        try:
            if job.writer is None:
                job.staged = self.destination.stage(job.unit.path)
                job.writer = open_writer(
                    self.format,
                    job.staged.file,
                    self.columns,
                    job.unit.slice.zone,
                    fernet_key=self.fernet_key,
                )
            job.writer.write(chunk, self.mode)
            self.fault("mid_write")
        except SluicegateError as exc:
            job.error = exc

    def _renew(self, jobs: list[_Job]) -> None:
        # Also the earlier batch whose last files are still in flight (committed later).
        tokens = {j.unit.token for j in jobs} | {j.unit.token for j, _ in self._inflight}
        tokens.discard("")
        if tokens:
            self.recorder.renew(sorted(tokens))

    def _check_deadline(self) -> None:
        if len(self._inflight) >= MAX_INFLIGHT or self._held >= MAX_INFLIGHT_BYTES:
            self.flush(keep=len(self._inflight) // 2)  # the publishers stay busy
        if self.budget.over():
            raise Deadline

    def _seal(self, job: _Job) -> None:
        """Hand one unit's complete rows to the publisher threads, which finish the file."""
        if job.done:
            return
        job.done = True
        if job.error is not None:
            self._discard(job)
            self._fail(job.unit, job.error)
            return
        job.held = (job.staged.file.size if job.staged else 0) + (job.writer.held if job.writer else 0)
        self._held += job.held
        self._inflight.append((job, self._pool.submit(self._publish, job)))

    # ------------------------------------------------------------------ publishing and recording

    def _publish(self, job: _Job) -> Outcome:
        """Finish, then publish (or skip, or delete) one unit; runs on a publisher thread.

        Closing the writer here compresses and encodes what it deferred (see the formats),
        in parallel with the main thread reading the next units.
        """
        unit, previous = job.unit, job.unit.previous
        if job.writer is None:  # no rows at all: nothing to publish; an old file goes when placed
            remove = previous.path if previous is not None and previous.path else None
            return Outcome(
                unit=unit, path=None, rows=0, nbytes=0, checksum=None, published=True, remove=remove
            )
        job.writer.close()
        staged = job.staged
        assert staged is not None
        if unit.fenced:
            same = previous is not None and previous.path == unit.path
            staged.condition = (previous.etag if same and previous and previous.etag else None) or "*"
        checksum = staged.file.sha256
        unchanged = (
            previous is not None
            and checksum == previous.checksum
            and unit.path == previous.path
            and self.destination.exists(unit.path, staged.file.size)
        )
        if unchanged:
            self.destination.discard(staged)
        else:
            self.destination.publish(staged)
        return Outcome(
            unit=unit,
            path=unit.path,
            rows=job.writer.rows,
            nbytes=staged.file.size,
            checksum=checksum,
            published=not unchanged,
            staged=None if unchanged else staged,
        )

    def _flush(self, keep: int) -> None:
        cut = len(self._inflight) - keep
        inflight, self._inflight = self._inflight[:cut], self._inflight[cut:]
        self._held -= sum(job.held for job, _ in inflight)
        outcomes: list[Outcome] = []
        for job, future in inflight:
            try:
                outcomes.append(future.result())
            except Exception as exc:
                self._discard(job)
                self._fail(job.unit, as_export_error(exc))
        if outcomes:
            self.fault("before_place")  # prepared (uploaded, on S3), not yet in place nor recorded
            self._record(outcomes)

    def _place(self, outcomes: Sequence[Outcome]) -> None:
        """Put the files of ``outcomes`` in place, durably (called by the recorder, fenced)."""
        for outcome in outcomes:
            if outcome.remove:
                self.destination.delete(outcome.remove)
        # Only these: newer files in flight are committed later.
        self.destination.sync([o.staged for o in outcomes if o.staged is not None])
        self.fault("after_publish")
        if self.feed is not None:  # after the files are in place, before the commit
            self.feed.write(outcomes)
            self.fault("after_manifest")

    def _record(self, outcomes: list[Outcome]) -> None:
        try:
            committed = self.recorder.commit(outcomes, self._place)
        except LedgerError:
            self._drop(outcomes)
            raise
        except SluicegateError as exc:  # placing failed, or the recorder refused the group
            self._drop(outcomes)
            for outcome in outcomes:
                self._fail(outcome.unit, exc)
            return
        for outcome, done in zip(outcomes, committed, strict=True):
            if not done:
                # Our lease expired and another worker claimed the unit: it commits, and its
                # file is the one in place (ours was never placed).
                self._drop([outcome])
                self.summary.lost += 1
                continue
            self.summary.note_success(outcome.unit.key)
            if outcome.published:
                self.summary.exported += 1
            else:
                self.summary.unchanged += 1
            self.summary.rows += outcome.rows
            self.summary.bytes += outcome.nbytes

    def _drop(self, outcomes: Sequence[Outcome]) -> None:
        """Remove what is left of files that were not put in place."""
        for outcome in outcomes:
            if outcome.staged is not None:
                self.destination.discard(outcome.staged)

    def _discard(self, job: _Job) -> None:
        job.done = True
        if job.staged is not None:
            self.destination.discard(job.staged)
            job.staged = None

    def _fail(self, unit: WorkUnit, error: SluicegateError) -> None:
        self.recorder.fail(unit, error)
        self.summary.note_failure(unit.key, str(error) or type(error).__name__)

    def _batch_failed(self, jobs: list[_Job], error: SluicegateError) -> None:
        """The batch query failed: retry later, or isolate the unit that breaks it."""
        open_jobs = [j for j in jobs if not j.done]
        for job in open_jobs:
            self._discard(job)
        self.flush()
        if is_transient(error) or len(open_jobs) == 1:
            for job in open_jobs:
                self._fail(job.unit, error)
            return
        for job in open_jobs:  # one query each, so one bad unit cannot stop the others
            fresh = _Job(unit=job.unit)
            try:
                self._stream([fresh])
            except (LedgerError, Deadline):
                self._discard(fresh)
                raise
            except Exception as single:
                self._discard(fresh)
                self._fail(job.unit, as_export_error(single))
