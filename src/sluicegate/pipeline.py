"""The batch pipeline: read -> encode -> publish -> record, for a list of work units.

Every task kind exports through a :class:`Pipeline`. A driver hands it batches of
:class:`WorkUnit` (what to read, where to write, how the outcome is recorded); the pipeline

1. reads the batch with one query (its ``read`` function: a source read, or an archive
   snapshot), chunk by chunk, each chunk belonging to one unit, in unit order;
2. encodes each unit's chunks into a staged file (the format's writer);
3. hands complete units to publisher threads, a group of up to ``GROUP_UNITS`` at a time
   (one hand-over per file cost ~5% of a run's CPU), which finish the encoding (compression,
   Parquet footers) and prepare the file (a durable temp file; a conditional upload, on the
   destination's own ``uploads_in_flight`` threads), or skip it when its bytes are unchanged;
4. records a group with one ``recorder.commit(outcomes, place)``: the recorder locks what the
   units still hold, calls ``place`` for those (``destination.sync``: the renames, deletions
   of files of units that have no rows any more, the uploads a store left pending), and
   commits them in the same transaction, so a worker whose claim was taken over never puts
   a file in place (fencing). With a change feed, ``place`` then writes the group's
   manifest (:mod:`sluicegate.changes`), so that it is durable before the commit. A group
   is committed when enough files or bytes are in flight (``MAX_INFLIGHT``,
   ``MAX_INFLIGHT_BYTES``) and at the end of each batch, except the newest ``keep`` files,
   which go on publishing while the driver reads its next batch.

It also keeps the units' leases alive while it holds them (every lease/3, through a
:class:`~sluicegate.ledger.leases.LeaseKeeper` on its own thread when the driver gives one,
else between chunks while reading), stops in time for the
run's :class:`~sluicegate.options.Budget` (what is read is committed, the rest released),
isolates a unit whose rows break the batch query (each unit of a failed batch is read again
on its own), and stops at the named fault points tests kill workers at. Failures are
recorded per unit through the recorder; a :class:`~sluicegate.exceptions.LedgerError` stops
the task (nothing can be recorded); a lost source gives the batch back without an attempt
(:mod:`sluicegate.source_outage`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .changes import ChangeFeed
from .destinations import Destination
from .exceptions import LedgerError, SluicegateError, SourceLost, TerminalError, is_transient, timed_out
from .faults import Fault
from .formats import Writer, open_writer
from .options import Budget, TaskSummary
from .pipeline_jobs import Group, Job, Slot, group_outcome
from .source_outage import SourceOutage
from .sources import Column, Mode
from .work import Deadline, Outcome, Reader, Recorder, UnitFailed, WorkUnit, as_export_error

if TYPE_CHECKING:
    from .ledger.leases import LeaseKeeper

PUBLISH_THREADS = 4
MAX_INFLIGHT = 256  # units handed to the publishers and not yet committed ...
MAX_INFLIGHT_BYTES = 64 * 1024 * 1024  # ... and the bytes they hold in memory
GROUP_UNITS = 8  # sealed units handed to a publisher thread together ...
GROUP_BYTES = 1024 * 1024  # ... or fewer, once they hold this much


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
        keeper: LeaseKeeper | None = None,
        reconnect: Callable[[], None] | None = None,
        reclaims: bool = True,
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
        self.keeper = keeper  # renews the leases of the units in hand, from its own thread
        self.outage = SourceOutage(reconnect)  # a lost source connection: wait for it, or stop
        self.reclaims = reclaims  # the driver claims a given-back batch again (else it is read again here)
        # Only a driver that claims a given-back batch again stops a batch on a lost source.
        self._stops = (Deadline, LedgerError) + ((SourceLost,) if reconnect is not None else ())
        self._batch_tokens: set[str] = set()
        # Publishing (fsync + rename, or an upload) overlaps with reading the next units.
        self._pool = ThreadPoolExecutor(max_workers=PUBLISH_THREADS, thread_name_prefix="sluicegate-publish")
        n = destination.uploads_in_flight  # an object store's uploads get threads of their own
        self._uploads = ThreadPoolExecutor(n, thread_name_prefix="sluicegate-upload") if n else None
        self._inflight: list[tuple[Job, Slot]] = []
        self._group = Group()  # sealed units not yet handed to a publisher thread
        self._held = 0  # bytes the in-flight units keep in memory (an estimate)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the publisher and upload threads (commit first with :meth:`flush`), stop renewing."""
        self._pool.shutdown(wait=True)
        if self._uploads is not None:
            self._uploads.shutdown(wait=True)
        if self.keeper is not None:
            self.keeper.close()

    # ------------------------------------------------------------------ batches

    def export(self, units: Sequence[WorkUnit], *, keep: int = 0) -> None:
        """Export one batch; all but the newest ``keep`` files are committed when it returns.

        Raises :class:`Deadline` after committing what was read when the budget ran out
        (the batch's unread units are released), and LedgerError when nothing can be recorded.
        """
        if not units:
            return
        jobs = [Job(unit=u) for u in units]
        self._batch_tokens = {u.token for u in units if u.token}
        self._keep_leases()
        try:
            try:
                try:
                    self._stream(jobs, keep=keep)
                except self._stops:
                    raise
                except Exception as exc:
                    self._batch_failed(jobs, as_export_error(exc))
            except SourceLost as exc:
                try:
                    self._source_lost(units, jobs, exc)
                except (Deadline, LedgerError):  # given back below, or nothing can be recorded
                    raise
                except Exception:  # the source stays away, or refuses the role now (a revoked
                    self._give_back(units, jobs)  # CONNECT): what is left of the batch waits
                    raise
        except (Deadline, SystemExit):  # SystemExit: StopNow, a second signal (complete files placed)
            self._give_back(units, jobs)
            raise
        except LedgerError:
            # Nothing can be recorded (the claims wait for their lease): no later flush may
            # put in place a file in flight, of this batch or an earlier one.
            self.abandon()
            self._discard(*jobs)
            raise
        finally:
            self._batch_tokens = set()
            self._keep_leases()

    def _source_lost(self, units: Sequence[WorkUnit], jobs: list[Job], exc: SourceLost) -> None:
        """The batch lost the source: give it back and wait for the source. When one of its units
        lost it before in this run (a query that ends its own connection, or an outage again), or
        the driver does not claim it again (``reclaims``), read what is left of it one unit at a
        time once the source is back: a unit whose own read loses it is charged an attempt (and
        the source waited for again), the others export."""
        if self.reclaims and not self.outage.before(keys := [u.key for u in units]):
            self._give_back(units, jobs)
            self.outage.wait(keys, exc)
            return
        open_jobs = [j for j in jobs if not j.done]
        self._discard(*open_jobs)
        self.flush()
        if len(open_jobs) == 1 and self.outage.before([open_jobs[0].unit.key]):  # its own read lost it again
            self._fail(open_jobs[0].unit, exc)
            self.outage.wait([open_jobs[0].unit.key], exc, charged=True)
            return
        self.outage.wait([j.unit.key for j in open_jobs], exc, held=True)
        self._read_alone(open_jobs, lost_again=True)

    def _give_back(self, units: Sequence[WorkUnit], jobs: list[Job]) -> None:
        """Commit what was read, release the rest of the batch without an attempt."""
        self.flush()
        tokens = {u.token for u in units if u.token}
        self.summary.released += self.recorder.release(tokens) if tokens else 0
        self._discard(*jobs)

    def abandon(self) -> None:
        """Drop every file in flight without recording it (the ledger cannot be written)."""
        self._hand_over()
        inflight, self._inflight = self._inflight, []
        self._held = 0
        for job, slot in inflight:
            with contextlib.suppress(Exception):
                outcome = group_outcome(slot)  # the publisher thread is done with the spool
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
            self._keep_leases()

    def _keep_leases(self) -> None:
        """Have the keeper renew the claims of the batch being read and of the files in flight."""
        if self.keeper is not None:
            self.keeper.keep(self._batch_tokens | {job.unit.token for job, _ in self._inflight})

    # ------------------------------------------------------------------ reading and encoding

    def _stream(self, jobs: list[Job], keep: int = 0) -> None:
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
                if self.keeper is None and time.monotonic() - renewed > self.lease / 3:
                    self._renew(jobs)
                    renewed = time.monotonic()
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        for job in jobs[position:]:
            self._seal(job)
            self._check_deadline()
        self._hand_over()  # the publishers finish the batch while the next one is claimed
        self.flush(keep=keep)

    def _write(self, job: Job, chunk: Any) -> None:
        if job.error is not None:
            return
        if isinstance(chunk, UnitFailed):
            job.error = chunk.error
            return
        try:
            self._open(job).write(chunk, self.mode)
            self.fault("mid_write")
        except SluicegateError as exc:
            job.error = exc

    def _open(self, job: Job) -> Writer:
        """The unit's writer, opened (and its file staged) on its first rows."""
        if job.writer is None:
            if job.unit.refuse_file is not None:
                raise TerminalError(job.unit.refuse_file)
            job.staged = self.destination.stage(job.unit.path)
            job.writer = open_writer(
                self.format, job.staged.file, self.columns, job.unit.slice.zone, fernet_key=self.fernet_key
            )
        return job.writer

    def _renew(self, jobs: list[Job]) -> None:
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

    def _seal(self, job: Job) -> None:
        """Hand one unit's complete rows to the publisher threads, which finish the file."""
        if job.done:
            return
        job.done = True
        if job.error is None and job.writer is None and job.unit.empty_file:
            try:  # no rows, and the unit wants a file all the same: the header (or schema) alone
                self._open(job)
            except SluicegateError as exc:
                job.error = exc
        if job.error is not None:
            self._discard(job)
            self._fail(job.unit, job.error)
            return
        job.held = (job.staged.file.size if job.staged else 0) + (job.writer.held if job.writer else 0)
        self._held += job.held
        group = self._group
        group.jobs.append(job)
        group.held += job.held
        self._inflight.append((job, (group, len(group.jobs) - 1)))
        if len(group.jobs) >= GROUP_UNITS or group.held >= GROUP_BYTES:
            self._hand_over()

    def _hand_over(self) -> None:
        """Give the sealed units to a publisher thread: one hand-over (a future, a queue, a
        thread woken) per group instead of one per file (~5% of a run's CPU for small files)."""
        group = self._group
        if group.jobs:
            self._group = Group()
            group.future = self._pool.submit(self._publish_group, group.jobs)

    def _publish_group(self, jobs: list[Job]) -> list[Outcome | Future[Outcome] | BaseException]:
        results: list[Outcome | Future[Outcome] | BaseException] = []
        for job in jobs:
            try:
                results.append(self._publish(job))
            except BaseException as exc:  # its unit's outcome, raised where that is awaited
                results.append(exc)
        return results

    # ------------------------------------------------------------------ publishing and recording

    def _publish(self, job: Job) -> Outcome | Future[Outcome]:
        """Finish, then publish (or skip, or delete) one unit; runs on a publisher thread.

        Closing the writer here compresses and encodes what it deferred (see the formats),
        in parallel with the main thread reading the next units. An upload thread's (see
        ``uploads_in_flight``) future is returned when the destination has them.
        """
        unit = job.unit
        if job.writer is None:  # no rows at all: nothing to publish; an old file goes when placed
            remove = self._stale(unit)
            return Outcome(
                unit=unit, path=None, rows=0, nbytes=0, checksum=None, published=True, remove=remove
            )
        job.writer.close()
        if self._uploads is not None:
            return self._uploads.submit(self._send, job)
        return self._send(job)

    def _stale(self, unit: WorkUnit) -> str | None:
        """The file a unit without rows must delete: its recorded one, or else one at its own path.

        A worker killed after putting the unit's file in place, before its commit, left a file
        the ledger does not record; with the rows gone since, it stayed published for good
        (unlisted by the feed when the kill came before the manifest).
        """
        previous = unit.previous
        if previous is None:  # a unit that keeps no file record (always published)
            return None
        if previous.path:
            return previous.path
        return unit.path if unit.path and self.destination.exists(unit.path) else None

    def _send(self, job: Job) -> Outcome:
        """Publish (or skip, when its bytes are unchanged) one finished file."""
        unit, previous, staged = job.unit, job.unit.previous, job.staged
        assert staged is not None and job.writer is not None
        if unit.fenced:
            etag = previous.etag if previous is not None and previous.path == unit.path else ""
            staged.condition, staged.pending = etag or "*", etag is None  # None: see Staged.pending
        if unit.exclusive:
            staged.condition, staged.exclusive = "*", True
        checksum = staged.file.sha256
        unchanged = (
            previous is not None
            and checksum == previous.checksum
            and unit.path == previous.path
            and self.destination.exists(unit.path, staged.file.size, previous.etag, checksum)
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
        self._hand_over()
        cut = len(self._inflight) - keep
        inflight, self._inflight = self._inflight[:cut], self._inflight[cut:]
        self._held -= sum(job.held for job, _ in inflight)
        outcomes: list[Outcome] = []
        for job, slot in inflight:
            try:
                outcomes.append(group_outcome(slot))
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
            self.feed.write([o for o in outcomes if o.staged is None or not o.staged.refused])
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
            if outcome.staged is not None and outcome.staged.refused:  # a file appeared at its path
                done = TerminalError(outcome.unit.exclusive or "a file is in the way")
            if isinstance(done, SluicegateError) or not done:  # its file was never put in place
                self._drop([outcome])
                if isinstance(done, SluicegateError):  # refused (another unit's file is there): it fails
                    self._fail(outcome.unit, done)
                else:  # our lease expired and another worker claimed the unit: it commits its file
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

    def _discard(self, *jobs: Job) -> None:
        for job in jobs:
            job.done = True
            if job.staged is not None:
                self.destination.discard(job.staged)
                job.staged = None

    def _fail(self, unit: WorkUnit, error: SluicegateError) -> None:
        shown = self.recorder.fail(unit, error)  # a unit parked on its last attempt: no "will retry"
        self.summary.note_failure(unit.key, shown or str(error) or type(error).__name__)

    def _batch_failed(self, jobs: list[Job], error: SluicegateError) -> None:
        """The batch query failed: retry later, or isolate the unit that breaks it (or runs out of time)."""
        open_jobs = [j for j in jobs if not j.done]
        self._discard(*open_jobs)
        self.flush()
        if (is_transient(error) and not timed_out(error)) or len(open_jobs) == 1:
            for job in open_jobs:
                self._fail(job.unit, error)
            return
        self._read_alone(open_jobs)

    def _read_alone(self, open_jobs: list[Job], *, lost_again: bool = False) -> None:
        """Read each of ``open_jobs`` with a query of its own, so one bad unit cannot stop the
        others. ``lost_again``: their batch lost the source twice, and a unit whose own read loses
        it is charged an attempt; else a lost source stops them all (still open, see _source_lost)."""
        for at, job in enumerate(open_jobs):
            fresh = Job(unit=job.unit)
            try:
                if at and (self.budget.over() or self.budget.stopped()):  # given back, not read: a
                    raise Deadline  # read alone that times out never reaches _stream's checks
                self._stream([fresh])
            except self._stops as stop:
                self._discard(fresh)
                if not (lost_again and isinstance(stop, SourceLost)):
                    for unread in open_jobs[at:]:
                        unread.done = False
                    raise
                self._fail(job.unit, stop)
                self.outage.wait([job.unit.key], stop, charged=True)
            except Exception as single:
                self._discard(fresh)
                self._fail(job.unit, as_export_error(single))
