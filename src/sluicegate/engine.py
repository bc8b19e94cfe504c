"""The export engine: capture → claim → read one query per batch → encode → publish → commit.

:meth:`Exporter.run_once` is the whole loop for one pass over the tasks; ``run --every``
wraps it. A partition's outcome is always recorded on the ledger by the code here, and
nowhere else: exported (committed at the version read at claim), unchanged (same checksum,
upload skipped, still committed), failed (retry with backoff, or parked), or released.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import capture, db, watermarks
from .archive import Archiver, boundary_for
from .config import Project, Settings, TaskSpec
from .destinations import Destination, Staged, open_destination
from .exceptions import (
    ConfigError,
    DestinationUnavailable,
    ExportError,
    LedgerError,
    SluicegateError,
    is_transient,
)
from .formats import SPECS, Writer, open_writer
from .ledger import Claim, ExportResult, Ledger, WatermarkLedger, run_heartbeat
from .partitions import Partition, render_path, restore_partition
from .sources import Column, Mode, Source, open_source
from .sources import arrow as arrow_source
from .watermarks import ExportRequest

log = logging.getLogger("sluicegate")

Progress = Callable[[str, int], None]
PUBLISH_THREADS = 4
MAX_INFLIGHT = 256  # partitions handed to the publishers and not yet committed ...
MAX_INFLIGHT_BYTES = 64 * 1024 * 1024  # ... and the bytes they hold in memory
MAX_ERRORS = 20  # partition errors listed in a task's summary


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What one ``sluicegate run`` does."""

    limit: int | None = None
    batch_size: int | None = None
    workers: int | None = None  # partitioned tasks: parallel exporters (default: settings.workers)
    max_runtime: float | None = None
    started: float | None = None  # time.monotonic() when the max_runtime budget began (default: now)
    dry_run: bool = False
    request: ExportRequest | None = None  # incremental tasks: type, window, entities, destination, tag
    redrive: bool = False  # incremental tasks: re-run only the recorded failures
    recorded: bool = False  # the caller (the HTTP service) already recorded this run on the ledger


@dataclass(kw_only=True)
class TaskSummary:
    """What happened to one task in a run."""

    task: str
    exported: int = 0
    unchanged: int = 0
    failed: int = 0  # distinct partitions whose last attempt in this run failed
    released: int = 0
    lost: int = 0
    rows: int = 0
    bytes: int = 0
    marked: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # "partition: error", the first MAX_ERRORS
    task_errors: list[str] = field(default_factory=list)  # errors that stopped the task itself
    plan: list[dict[str, Any]] = field(default_factory=list)
    entities: list[dict[str, Any]] = field(default_factory=list)
    archive: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None
    _failures: dict[str, str] = field(default_factory=dict, repr=False)

    def note_failure(self, partition: str, message: str, *, named: bool = True) -> None:
        """Record that ``partition`` failed (a retry in the same run is not counted again).

        Its error line is ``"partition: message"``, or the message alone when not ``named``.
        """
        self._failures[partition] = f"{partition}: {message}" if named else message
        self._sync_failures()

    def note_success(self, partition: str) -> None:
        """A partition that failed earlier in this run was exported after all."""
        if self._failures.pop(partition, None) is not None:
            self._sync_failures()

    def _sync_failures(self) -> None:
        self.failed = len(self._failures)
        self.errors = list(self._failures.values())[:MAX_ERRORS]

    @property
    def ok(self) -> bool:
        """Nothing failed: no partition and no task-level error."""
        return not self.failed and not self.task_errors

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = dataclasses.asdict(self)
        del out["_failures"]
        return out


@dataclass(kw_only=True)
class _Job:
    """One claimed partition inside a batch."""

    claim: Claim
    part: Partition
    path: str
    staged: Staged | None = None
    writer: Writer | None = None
    error: BaseException | None = None
    done: bool = False
    held: int = 0  # bytes in memory while in flight


class _Deadline(Exception):
    """The run's --max-runtime is reached."""


EXIT_RESERVE = 0.3  # seconds kept for releasing claims, closing connections and exiting


@dataclass(kw_only=True)
class Budget:
    """The time a run may take (``--max-runtime``), with what it must keep to finish inside it.

    A run stops claiming when the next batch (estimated from the last one), the final flush
    (the longest seen) and EXIT_RESERVE would not fit before the deadline, and stops reading
    when only the flush and the reserve still fit: what is read by then is published and
    committed, the rest is released. So a run ends inside its budget unless one flush takes
    longer than the longest flush before it.
    """

    deadline: float | None
    flush: float = 0.1  # the longest flush (wait for publishers, sync, commit) seen so far

    @classmethod
    def start(cls, max_runtime: float | None, started: float | None = None) -> Budget:
        """A budget of ``max_runtime`` seconds counted from ``started`` (default: now)."""
        if max_runtime is None:
            return cls(deadline=None)
        return cls(deadline=(started if started is not None else time.monotonic()) + max_runtime)

    def _room(self) -> float:
        assert self.deadline is not None
        return self.deadline - time.monotonic() - EXIT_RESERVE - self.flush

    def can_start(self, batch: float) -> bool:
        """Whether a batch that takes ``batch`` seconds (the last one's time) still fits."""
        return self.deadline is None or self._room() > batch * 1.2

    def over(self) -> bool:
        """Whether reading must stop now so that the flush and the exit still fit."""
        return self.deadline is not None and self._room() <= 0

    def note_flush(self, seconds: float) -> None:
        """Remember how long a flush took."""
        self.flush = max(self.flush, seconds)


class Exporter:
    """Runs a project's tasks against its ledger, source and destination."""

    def __init__(self, project: Project) -> None:
        self.project = project
        s = project.settings
        self.ledger = Ledger(s.ledger_url, schema=s.ledger_schema)
        self.ledger.ensure_schema()
        self.inbox = (
            self.ledger if s.ledger_url == s.source_url else Ledger(s.source_url, schema=s.ledger_schema)
        )
        self.source: Source = open_source(s.source_url)
        self.dest: Destination = open_destination(s.destination, stale_after=s.lease)
        self._columns: dict[str, list[Column]] = {}
        # Publishing (fsync + rename, or an upload) overlaps with reading the next partitions.
        self._pool = ThreadPoolExecutor(max_workers=PUBLISH_THREADS, thread_name_prefix="sluicegate-publish")
        self._inflight: list[tuple[_Job, Future[ExportResult]]] = []
        self._held = 0  # bytes the in-flight partitions keep in memory (an estimate)
        self._budget: Budget | None = None  # the run's time budget, while a run is in progress
        self.sink: _Sink = _PartitionSink(self.ledger, s)

    def close(self) -> None:
        """Close every connection."""
        self._pool.shutdown(wait=True)
        self.source.close()
        if self.inbox is not self.ledger:
            self.inbox.close()
        self.ledger.close()

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the loop

    def run_once(
        self,
        tasks: Sequence[TaskSpec],
        options: RunOptions,
        *,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> list[TaskSummary]:
        """Export every pending, complete partition of ``tasks`` once; return summaries."""
        deadline = self._budget = Budget.start(options.max_runtime, options.started)
        if not options.dry_run:
            try:
                self.dest.cleanup(older_than=self.project.settings.lease)
            except SluicegateError as exc:  # a failed clean-up must not stop the exports
                log.warning("destination clean-up failed: %s", exc)
        summaries = []
        remaining = options.limit if options.limit is not None else self.project.settings.limit
        for task in tasks:
            summary = TaskSummary(task=task.name)
            started = time.monotonic()
            if not deadline.can_start(0.0):  # the time budget was used up by earlier tasks
                log.info("task %s not started: the run's max_runtime is used up", task.name)
                summaries.append(summary)
                continue
            try:
                if task.archive is not None:
                    self._run_archive(task, options, summary)
                elif task.incremental is not None:
                    self._run_incremental(task, options, summary, deadline)
                elif options.dry_run:
                    self._plan(task, summary, remaining)
                else:
                    self._capture(task, summary)
                    exported = self._run_workers(task, options, summary, remaining, deadline, progress, stop)
                    remaining = None if remaining is None else max(remaining - exported, 0)
            except SluicegateError as exc:
                # A task-level problem (bad query, no zone, ledger down) stops this task only.
                summary.task_errors.append(str(exc))
                log.debug("task %s failed", task.name, exc_info=True)
            summary.seconds = round(time.monotonic() - started, 3)
            summaries.append(summary)
        return summaries

    def _run_incremental(
        self, task: TaskSpec, options: RunOptions, summary: TaskSummary, deadline: Budget
    ) -> None:
        """Export each entity's window (or the recorded failures, with ``redrive``)."""
        settings = self.project.settings
        request = options.request or ExportRequest()
        wm = WatermarkLedger(self.ledger)
        if options.redrive:
            windows, notes, _ = watermarks.redrive_windows(
                task, wm, self.source, lease=settings.lease, max_attempts=settings.max_attempts
            )
        else:
            now = dt.datetime.now(dt.UTC)
            windows, notes, _ = watermarks.plan_windows(
                task, request, self.source, wm, now=now, lease=settings.lease, claim=not options.dry_run
            )
        summary.entities += notes
        if request.destination:  # an override: failures are recorded with it, for redrive
            windows = [dataclasses.replace(w, destination=request.destination) for w in windows]
        if options.dry_run:
            summary.plan = [
                {
                    "partition": {"entity": w.entity},
                    "reason": w.mode,
                    "start": w.start.isoformat(),
                    "end": w.end.isoformat(),
                    "type": w.export_type,
                    "path": watermarks.window_path(task, w),
                }
                for w in windows
            ]
            return
        if not windows:  # nothing to export (a SQLite writer may hold the lock: write nothing)
            return
        if not options.recorded:
            run_request = {**request.as_dict(), "redrive": options.redrive}
            summary.run_id = self.ledger.start_run(task.name, tag=request.tag, request=run_request)
        original = self.dest
        self.sink = watermarks.WindowSink(task, wm, dict(enumerate(windows)), summary)
        # A CLI run beats on the ledger (the service's RunManager beats for the runs it records).
        beating: contextlib.AbstractContextManager[None] = (
            run_heartbeat(self.ledger.url, self.ledger.schema, summary.run_id)
            if summary.run_id is not None and not options.recorded
            else contextlib.nullcontext()
        )
        try:
            with beating:
                self._export_windows(task, windows, wm, original, summary, deadline)
        finally:
            self.dest = original
            self.sink = _PartitionSink(self.ledger, settings)
            if summary.run_id is not None and not options.recorded:
                self.ledger.finish_run(summary.run_id, [summary.as_dict()])

    def _export_windows(
        self,
        task: TaskSpec,
        windows: Sequence[watermarks.Window],
        wm: WatermarkLedger,
        original: Destination,
        summary: TaskSummary,
        deadline: Budget,
    ) -> None:
        """Export incremental windows, grouped by destination (a re-export's override, or the project's)."""
        settings = self.project.settings
        jobs: dict[str | None, list[_Job]] = {}  # by destination (None: the project's)
        for index, window in enumerate(windows):
            claim = watermarks.window_claim(task, index, window)
            try:
                path = watermarks.window_path(task, window)
                original.check_path(path)  # the project's limits; an override's are met at upload
            except SluicegateError as exc:
                self._fail(claim, exc, summary)
                continue
            if window.claim is not None:
                wm.set_pending(window.claim, window.start, window.end, window.export_type)
            part = watermarks.window_partition(task, window)
            jobs.setdefault(window.destination, []).append(_Job(claim=claim, part=part, path=path))
        columns = self.columns(task)
        for destination, group in jobs.items():
            self.dest = (
                original
                if destination is None
                else open_destination(dataclasses.replace(settings.destination, url=destination))
            )
            for at in range(0, len(group), task.batch_size):
                self._export_batch(task, columns, group[at : at + task.batch_size], summary, deadline)

    def _run_archive(self, task: TaskSpec, options: RunOptions, summary: TaskSummary) -> None:
        """Export-then-delete one run of an archive task (recovering an unfinished run first)."""
        archiver = Archiver(self.project, self.ledger, self.source, self.dest, self._fault)
        if options.dry_run:
            boundary = boundary_for(task, dt.datetime.now(dt.UTC))
            summary.plan.append(
                {
                    "partition": {"task": task.name},
                    "reason": "archive",
                    "boundary": boundary.isoformat(),
                    "path": self.dest.display(archiver._free_path(task, boundary, "dryrun0")),
                }
            )
            return
        try:
            with db.wrap_errors(self.project.settings.source_url):
                result = archiver.run(task)
        except SluicegateError as exc:
            summary.note_failure(f"archive run of {task.name}", str(exc), named=False)
            return
        summary.exported += 1
        summary.rows += result.rows
        summary.bytes += result.bytes
        summary.run_id = result.run_id
        summary.archive.append(dataclasses.asdict(result))

    def _capture(self, task: TaskSpec, summary: TaskSummary) -> None:
        if task.capture.mode == "trigger":
            summary.marked = capture.absorb(task, self.ledger, self.inbox, self.source)
        elif task.capture.mode == "scan":
            summary.marked = capture.scan(task, self.ledger, self.source)

    def columns(self, task: TaskSpec) -> list[Column]:
        """The task's result columns (described once per exporter)."""
        if task.name not in self._columns:
            self._columns[task.name] = self.source.describe(task)
        return self._columns[task.name]

    def _plan(self, task: TaskSpec, summary: TaskSummary, limit: int | None) -> None:
        for claim in self.ledger.pending(task, limit=limit or 1000):
            entry: dict[str, Any] = {
                "partition": claim.keys,
                "reason": claim.reason,
                "version": claim.version,
            }
            try:
                part = restore_partition(task, [claim.keys[k] for k in task.key_names], claim.zone)
                entry["path"] = self.dest.display(render_path(task, part.values))
            except SluicegateError as exc:
                entry["error"] = str(exc)
            summary.plan.append(entry)

    def _run_workers(
        self,
        task: TaskSpec,
        options: RunOptions,
        summary: TaskSummary,
        remaining: int | None,
        deadline: Budget,
        progress: Progress | None,
        stop: threading.Event | None,
    ) -> int:
        """Run the task on this exporter and, with ``workers`` > 1, on helpers in threads.

        Each helper has its own connections, claims and publishers, exactly like another
        worker process on the same ledger: while one waits on the database or the disk,
        the others encode. A limit is shared out evenly.
        """
        workers = options.workers or self.project.settings.workers
        if workers <= 1:
            return self._run_task(task, options, summary, remaining, deadline, progress, stop)
        share = None if remaining is None else -(-remaining // workers)
        helpers: list[Exporter] = []
        parts = [TaskSummary(task=task.name) for _ in range(workers - 1)]
        errors: list[BaseException] = []
        done = 0
        try:
            helpers = [Exporter(self.project) for _ in range(workers - 1)]
            with ThreadPoolExecutor(max_workers=workers - 1, thread_name_prefix="sluicegate-worker") as pool:
                futures = [
                    pool.submit(h._run_task, task, options, part, share, deadline, progress, stop)
                    for h, part in zip(helpers, parts, strict=True)
                ]
                try:
                    done += self._run_task(task, options, summary, share, deadline, progress, stop)
                except SluicegateError as exc:
                    errors.append(exc)
                for future in futures:
                    try:
                        done += future.result()
                    except SluicegateError as exc:
                        errors.append(exc)
        finally:
            for helper in helpers:
                helper.close()
        for part in parts:
            _merge(summary, part)
        if errors:
            raise errors[0]
        return done

    def _run_task(
        self,
        task: TaskSpec,
        options: RunOptions,
        summary: TaskSummary,
        remaining: int | None,
        deadline: Budget,
        progress: Progress | None,
        stop: threading.Event | None,
    ) -> int:
        settings = self.project.settings
        batch_size = options.batch_size or task.batch_size
        columns = self.columns(task)
        done = 0
        last_batch = 0.0
        try:
            while remaining is None or done < remaining:
                if stop is not None and stop.is_set():
                    break
                if not deadline.can_start(last_batch):
                    break
                n = batch_size if remaining is None else min(batch_size, remaining - done)
                claims = self.ledger.claim(task, limit=n, lease=settings.lease)
                if not claims:
                    break
                started = time.monotonic()
                # The batch's last files are still being published while the next batch is read.
                jobs = self._jobs(task, claims, summary)
                self._export_batch(task, columns, jobs, summary, deadline, keep=MAX_INFLIGHT // 2)
                last_batch = time.monotonic() - started
                done += len(claims)
                if progress is not None:
                    progress(task.name, len(claims))
        finally:
            self._flush(summary)
        return done

    # ------------------------------------------------------------------ one batch

    def _export_batch(
        self,
        task: TaskSpec,
        columns: list[Column],
        jobs: list[_Job],
        summary: TaskSummary,
        deadline: Budget,
        keep: int = 0,
    ) -> None:
        if not jobs:
            return
        try:
            try:
                self._stream(task, columns, jobs, summary, deadline, keep=keep)
            except (_Deadline, LedgerError):
                raise
            except Exception as exc:
                self._batch_failed(task, columns, jobs, summary, deadline, _as_export_error(exc))
        except _Deadline:
            self._flush(summary)
            released = self.sink.release(jobs[0].claim.token) if jobs[0].claim.token else 0
            summary.released += released
            for job in jobs:
                self._discard(job)
        except LedgerError:
            for job in jobs:  # nothing can be recorded: the claims wait for their lease
                self._discard(job)
            raise

    def _jobs(self, task: TaskSpec, claims: list[Claim], summary: TaskSummary) -> list[_Job]:
        jobs = []
        max_attempts = self.project.settings.max_attempts
        for claim in claims:
            try:
                if claim.attempts >= max_attempts:
                    raise _LeaseExpired(claim.attempts)
                values = [claim.keys[k] for k in task.key_names]
                part = restore_partition(task, values, claim.zone)
                path = render_path(task, part.values)
                self.dest.check_path(path)
                jobs.append(_Job(claim=claim, part=part, path=path))
            except (SluicegateError, KeyError) as exc:
                self._fail(claim, exc, summary)
        return jobs

    def _mode(self, task: TaskSpec) -> Mode:
        for mode in SPECS[task.format].modes:
            if mode in self.source.modes and (mode != "arrow" or arrow_source.available()):
                return mode
        return "rows"

    def _stream(
        self,
        task: TaskSpec,
        columns: list[Column],
        jobs: list[_Job],
        summary: TaskSummary,
        deadline: Budget,
        keep: int = 0,
    ) -> None:
        """Read, encode and hand ``jobs`` to the publishers; commit all but ``keep`` of the newest."""
        mode = self._mode(task)
        lease = self.project.settings.lease
        renewed = time.monotonic()
        position = 0
        chunks: Iterator[tuple[int, Any]] = self.source.read(task, [j.part for j in jobs], columns, mode)
        try:
            for index, chunk in chunks:
                while position < index:  # partitions before this one are complete (or empty)
                    self._seal(jobs[position], summary)
                    position += 1
                    self._check_deadline(deadline, summary)
                job = jobs[index]
                if job.error is None:
                    try:
                        if job.writer is None:
                            job.staged = self.dest.stage(job.path)
                            job.writer = open_writer(task.format, job.staged.file, columns, job.part.zone)
                        job.writer.write(chunk, mode)
                        self._fault("mid_write")
                    except SluicegateError as exc:
                        job.error = exc
                if deadline.over():  # a large partition: stop reading it, not only between partitions
                    raise _Deadline
                if time.monotonic() - renewed > lease / 3:
                    # Also the earlier batch whose last files are still in flight (committed later).
                    tokens = {jobs[0].claim.token, *(j.claim.token for j, _ in self._inflight)}
                    for token in sorted(t for t in tokens if t):
                        self.sink.renew(token, lease)
                    renewed = time.monotonic()
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        for job in jobs[position:]:
            self._seal(job, summary)
            self._check_deadline(deadline, summary)
        self._flush(summary, keep=keep)

    def _check_deadline(self, deadline: Budget, summary: TaskSummary) -> None:
        if len(self._inflight) >= MAX_INFLIGHT or self._held >= MAX_INFLIGHT_BYTES:
            self._flush(summary, keep=len(self._inflight) // 2)  # the publishers stay busy
        if deadline.over():
            raise _Deadline

    def _seal(self, job: _Job, summary: TaskSummary) -> None:
        """Hand one partition's complete rows to the publisher threads, which finish the file."""
        if job.done:
            return
        job.done = True
        if job.error is not None:
            self._discard(job)
            self._fail(job.claim, job.error, summary)
            return
        job.held = (job.staged.file.size if job.staged else 0) + (job.writer.held if job.writer else 0)
        self._held += job.held
        self._inflight.append((job, self._pool.submit(self._publish, job)))

    def _publish(self, job: _Job) -> ExportResult:
        """Finish, then publish (or skip, or delete) one partition; runs on a publisher thread.

        Closing the writer here compresses and encodes what it deferred (see the formats),
        in parallel with the main thread reading the next partitions.
        """
        claim = job.claim
        try:
            if job.writer is None:  # no rows at all: nothing to publish, remove an old file
                if claim.prev_path:
                    self.dest.delete(claim.prev_path)
                return ExportResult(claim=claim, path=None, rows=0, nbytes=0, checksum=None, published=True)
            job.writer.close()
            staged = job.staged
            assert staged is not None
            checksum = staged.file.sha256
            unchanged = (
                not claim.forced
                and checksum == claim.prev_checksum
                and job.path == claim.prev_path
                and self.dest.exists(job.path, staged.file.size)
            )
            if unchanged:
                self.dest.discard(staged)
            else:
                self.dest.publish(staged)
            return ExportResult(
                claim=claim,
                path=job.path,
                rows=job.writer.rows,
                nbytes=staged.file.size,
                checksum=checksum,
                published=not unchanged,
            )
        except OSError as exc:
            raise DestinationUnavailable(f"cannot publish {self.dest.display(job.path)}: {exc}") from exc

    def _flush(self, summary: TaskSummary, keep: int = 0) -> None:
        """Wait for the oldest published files (all but ``keep``), make them durable, commit them at once."""
        if len(self._inflight) <= keep:
            return
        started = time.monotonic()
        try:
            self._flush_now(summary, keep)
        finally:
            if self._budget is not None:
                self._budget.note_flush(time.monotonic() - started)

    def _flush_now(self, summary: TaskSummary, keep: int) -> None:
        cut = len(self._inflight) - keep
        inflight, self._inflight = self._inflight[:cut], self._inflight[cut:]
        self._held -= sum(job.held for job, _ in inflight)
        results: list[ExportResult] = []
        published: list[Staged] = []
        for job, future in inflight:
            try:
                results.append(future.result())
            except SluicegateError as exc:
                self._discard(job)
                self._fail(job.claim, exc, summary)
                continue
            if job.staged is not None:
                published.append(job.staged)
        if not results:
            return
        try:
            self.dest.sync(published)  # only these: newer files in flight are committed later
        except SluicegateError as exc:
            for result in results:
                self._fail(result.claim, exc, summary)
            return
        self._fault("after_publish")
        for result, committed in zip(results, self.sink.commit(results), strict=True):
            if not committed:
                # Our lease expired and another worker claimed the partition: it will commit.
                summary.lost += 1
                continue
            summary.note_success(result.claim.pkey)
            if result.published:
                summary.exported += 1
            else:
                summary.unchanged += 1
            summary.rows += result.rows
            summary.bytes += result.nbytes

    def _fault(self, point: str) -> None:
        """Pause forever at a named point when a test asked for it (``[testing] fault``)."""
        if self.project.settings.fault == point:
            (self.project.settings.root / f".fault-{point}").write_text(str(os.getpid()))
            while True:
                time.sleep(60)

    def _discard(self, job: _Job) -> None:
        job.done = True
        if job.staged is not None:
            self.dest.discard(job.staged)
            job.staged = None

    def _fail(self, claim: Claim, exc: BaseException, summary: TaskSummary) -> None:
        message = str(exc) or type(exc).__name__
        self.sink.fail(claim, exc)
        summary.note_failure(claim.pkey, message)

    def _batch_failed(
        self,
        task: TaskSpec,
        columns: list[Column],
        jobs: list[_Job],
        summary: TaskSummary,
        deadline: Budget,
        exc: SluicegateError,
    ) -> None:
        """The batch query failed: retry later, or isolate the partition that breaks it."""
        open_jobs = [j for j in jobs if not j.done]
        for job in open_jobs:
            self._discard(job)
        self._flush(summary)
        if is_transient(exc) or len(open_jobs) == 1:
            for job in open_jobs:
                self._fail(job.claim, exc, summary)
            return
        for job in open_jobs:  # one query each, so one bad partition cannot stop the others
            fresh = _Job(claim=job.claim, part=job.part, path=job.path)
            try:
                self._stream(task, columns, [fresh], summary, deadline)
            except (LedgerError, _Deadline):
                self._discard(fresh)
                raise
            except Exception as single:
                self._discard(fresh)
                self._fail(job.claim, _as_export_error(single), summary)


class _Sink(Protocol):
    """Where the outcome of an export is recorded: partition versions or entity watermarks."""

    def commit(self, results: Sequence[ExportResult]) -> list[bool]: ...
    def fail(self, claim: Claim, exc: BaseException) -> None: ...
    def renew(self, token: str, lease: float) -> int: ...
    def release(self, token: str) -> int: ...


class _PartitionSink:
    """Partitioned tasks: fenced commits of versions, failures with backoff or parking."""

    def __init__(self, ledger: Ledger, settings: Settings) -> None:
        self.ledger = ledger
        self.settings = settings

    def commit(self, results: Sequence[ExportResult]) -> list[bool]:
        return self.ledger.commit(results)

    def fail(self, claim: Claim, exc: BaseException) -> None:
        self.ledger.fail(
            claim,
            error=str(exc) or type(exc).__name__,
            terminal=not is_transient(exc),
            max_attempts=self.settings.max_attempts,
            backoff=self.settings.backoff,
        )

    def renew(self, token: str, lease: float) -> int:
        return self.ledger.renew(token, lease=lease)

    def release(self, token: str) -> int:
        return self.ledger.release(token)


def _as_export_error(exc: BaseException) -> SluicegateError:
    """A sluicegate error as it is; anything else becomes a terminal error naming its type.

    Errors sluicegate does not know are terminal: retrying a programming error with backoff
    only hides it, while a parked partition shows it in ``status``.
    """
    if isinstance(exc, SluicegateError):
        return exc
    log.debug("unexpected error while exporting", exc_info=exc)
    return ExportError(f"{type(exc).__name__}: {exc}")


class _LeaseExpired(SluicegateError):
    def __init__(self, attempts: int) -> None:
        super().__init__(
            f"gave up after {attempts} attempts (leases expired: the exporting worker died "
            "or ran out of time); "
            "run 'sluicegate reset TASK --failed' to retry"
        )


def _merge(into: TaskSummary, part: TaskSummary) -> None:
    """Add a helper worker's counts and messages to a task's summary."""
    for name in ("exported", "unchanged", "released", "lost", "rows", "bytes"):
        setattr(into, name, getattr(into, name) + getattr(part, name))
    for partition, line in part._failures.items():
        into._failures[partition] = line
    into._sync_failures()
    into.task_errors.extend(part.task_errors)


def run(
    project: Project, task_names: Sequence[str] = (), options: RunOptions | None = None, **kwargs: Any
) -> list[TaskSummary]:
    """Run ``task_names`` (all tasks when empty) once and return their summaries."""
    tasks = project.select(list(task_names))
    if not tasks:
        raise ConfigError(f"no tasks to run in {project.settings.root / 'tasks'}; add a task folder")
    with Exporter(project) as exporter:
        return exporter.run_once(tasks, options or RunOptions(), **kwargs)
