"""Partitioned tasks: one file per partition (a location-day), re-exported when its rows change.

The driver captures changes into partition versions (triggers' inbox, scans), then claims
pending, complete partitions in batches and exports each batch through the pipeline; the
recorder commits versions (fenced by the claim token) or records failures with backoff.
``run --workers N`` runs N such loops: this one, and N - 1 helper processes (drivers/helpers.py)
started once a claim comes back full and enough is pending, each with its own connections
and claims.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import capture, capture_triggers, db, partitions, validate
from ..exceptions import ConfigError, SluicegateError
from ..ledger import Claim, Ledger, PartitionStore
from ..ledger.leases import LeaseKeeper
from ..options import Budget, RunOptions, TaskSummary
from ..partitions import canonical_key, check_distinct_paths, render_path, restore_partition, same_keys
from ..paths import check_template
from ..pipeline import MAX_INFLIGHT, Pipeline
from ..sources import ReadSpec, Slice, Source, sqlite
from ..specs import CaptureSpec, RowTask, Settings, TimeSpec
from ..taskfields import ROW_KEYS, base_fields, row_fields
from ..work import Deadline, Previous, WorkUnit
from . import Context, Progress
from .helpers import Helpers, orders_for, wait_for_source
from .partitioned_config import capture_spec, time_spec
from .partitioned_paths import not_taken, shared_file
from .partitioned_recorder import LeaseExpired, Recorder

HELPER_BATCHES = 4  # batches per helper still pending before --workers starts helper processes
LEDGER_STORES = ("partitions", "capture")  # the ledger stores a run uses (sluicegate grants)
KEYS = ROW_KEYS | {"keys", "time", "capture"}


@dataclass(frozen=True, kw_only=True)
class Task(RowTask):
    """A partitioned task: partition keys, an optional local time key, and how changes are captured."""

    kind = "partitioned"
    keys: tuple[str, ...]
    time: TimeSpec | None
    capture: CaptureSpec

    @property
    def key_names(self) -> tuple[str, ...]:
        """All partition key names, the time key last."""
        return (*self.keys, self.time.name) if self.time else self.keys


# ---------------------------------------------------------------------------- loading

# "sluicegate_" + name + "_delete" within PostgreSQL's 63-byte identifiers (MariaDB allows 64):
# longer names were cut to one shared name, so the three triggers replaced one another.
MAX_TRIGGER_TASK_NAME = 45


def load(*, name: str, folder: Path, raw: Mapping[str, Any], settings: Settings) -> Task:
    """Read a partitioned task's ``task.toml``."""
    where = str(folder / "task.toml")
    validate.reject_unknown(raw, KEYS, where)
    keys = validate.identifiers(raw.get("keys", []), f"{where} keys", '["location_id"]')
    time = time_spec(raw["time"], f"{where} [time]") if "time" in raw else None
    if time and time.name in keys:
        raise ConfigError(f"{where} [time] name: {time.name!r} is also a partition key; pick another name")
    if not keys and time is None:
        raise ConfigError(f"{where}: a partitioned task needs 'keys', a [time] table, or both")
    task = Task(
        **base_fields(name=name, folder=folder, raw=raw, settings=settings),
        **row_fields(raw, settings, where, time.column if time else None),
        keys=keys,
        time=time,
        capture=capture_spec(raw.get("capture", {}), f"{where} [capture]", keys, time is not None),
    )
    if task.capture.mode == "trigger" and len(name) > MAX_TRIGGER_TASK_NAME:
        raise ConfigError(
            f"{folder}: the task name {name!r} has {len(name)} characters; a task with capture triggers"
            f" may have at most {MAX_TRIGGER_TASK_NAME} (its trigger names are built from it and"
            " PostgreSQL cuts names at 63 bytes): rename the folder"
        )
    check_template(
        task.path, folder, allowed={*task.key_names, "format", "ext", "task"}, required=task.key_names,
        what="partition key", fmt=task.format,
    )  # fmt: skip
    check_distinct_paths(task, f"{where} path")  # and that it renders at all
    return task


def read_spec(task: Task) -> ReadSpec:
    """How the source reads this task's partitions."""
    time = task.time
    return ReadSpec(
        select_sql=task.select_sql,
        folder=task.folder,
        keys=task.keys,
        time_column=time.column if time else None,
        time_ending=bool(time and time.boundary == "end"),
        # Days in one fixed zone also join on the local date (not hours: a local hour is
        # ambiguous when the clocks go back).
        day_zone=time.zone if time and time.grain == "day" else None,
        order_by=task.order_by,
        primary_key=task.primary_key,
        columns=task.columns,
        datetime_zone=time.datetime_zone if time else None,
    )


# ---------------------------------------------------------------------------- the driver


class Driver:
    """Exports partitioned tasks."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def plan(self, task: Task, options: RunOptions, *, summary: TaskSummary, limit: int | None) -> None:
        """The partitions the next claim would take, with why and where, in ``summary.plan``."""
        pending = self.context.ledger.partitions.pending(task, limit=limit or 1000)
        summary.plan_cut = len(pending) >= (limit or 1000)
        for claim in pending:
            entry: dict[str, Any] = {
                "partition": {k: claim.keys[k] for k in task.key_names},  # the ledger's are sorted by name
                "reason": claim.reason,
                "version": claim.version,
            }
            try:
                part = restore_partition(task, values := [claim.keys[k] for k in task.key_names], claim.zone)
                path = partitions.file_of(task, values, part, claim)[1]  # as run: none for a retired hour
                entry["path"] = self.context.destination.display(path) if path else None
            except SluicegateError as exc:
                entry["error"] = str(exc)
            summary.plan.append(entry)
        if task.capture.mode == "trigger":
            self._plan_inbox(task, summary, limit or 1000)

    def _plan_inbox(self, task: Task, summary: TaskSummary, limit: int) -> None:
        """Add the partitions that changes waiting in the trigger inbox would mark (up to ``limit``
        to export in all); one whose period is not over is listed as waiting, and does not count
        towards the limit (up to ``limit`` of those too)."""
        ctx = self.context
        listed = {canonical_key([e["partition"][k] for k in task.key_names]) for e in summary.plan}
        settle = dt.timedelta(seconds=task.time.settle if task.time else 0)
        now = dt.datetime.now(dt.UTC)
        due, waiting = len(summary.plan), 0
        for part in capture.peek(task, ctx.inbox, ctx.source):
            if due >= limit:
                summary.plan_cut = True
                break
            if part.pkey in listed:
                continue
            keys = json.loads(canonical_key(part.values))
            complete = part.end is None or part.end <= now - settle
            if not complete and waiting >= limit:
                continue
            due, waiting = due + complete, waiting + (not complete)
            entry: dict[str, Any] = {
                "partition": dict(zip(task.key_names, keys, strict=True)),
                "reason": "captured change (folded in at the start of the run)"
                if complete
                else "captured change; waits until its period is complete",
                "version": None,
                "waiting": not complete,
            }
            try:
                entry["path"] = ctx.destination.display(render_path(task, part.values))
            except SluicegateError as exc:
                entry["error"] = str(exc)
            summary.plan.append(entry)

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
        """Capture changes, then export pending partitions with ``workers`` loops; return claims taken."""
        ctx = self.context
        if task.capture.mode == "trigger":
            summary.marked = capture.absorb(task, ctx.ledger, ctx.inbox, ctx.source)
        elif task.capture.mode == "scan":
            if problems := capture_triggers.capture_problems(task, ctx.source):  # a typo, before it marks
                raise ConfigError("; ".join(problems))
            # a scan marks ids in the order of keys now; triggers record theirs as installed
            partitions.check_key_order(task, ctx.ledger.partitions, str(task.folder / "task.toml"))
            summary.marked = capture.scan(task, ctx.ledger, ctx.source)
        workers = options.workers or ctx.project.settings.workers
        loop = Loop(task=task, options=options, summary=summary, budget=budget, progress=progress, stop=stop)
        if workers <= 1:
            return loop.run(ctx, limit)
        return _run_workers(loop, ctx, workers, limit)


@dataclass(kw_only=True)
class Loop:
    """Claim a batch, export it, repeat: one worker's loop over a task."""

    task: Task
    options: RunOptions
    summary: TaskSummary
    budget: Budget
    progress: Progress | None
    stop: threading.Event | None
    # Called once, with the partitions claimed so far and the limit, when a claim came back
    # full (more work waits); returns this loop's limit from then on.
    grow: Callable[[int, int | None], int | None] | None = None
    owners: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> partition, of files in flight

    def run(self, ctx: Context, limit: int | None) -> int:
        """Export until nothing is pending, the limit is reached, or time or a signal stops it."""
        task, settings, summary = self.task, ctx.project.settings, self.summary
        spec = read_spec(task)
        columns = ctx.columns(task, spec)
        missing = missing_columns(task, [c.name for c in columns], ctx.source)
        if missing:  # before any claim: every partition would fail on the same query, and be parked
            raise ConfigError(f"{missing[0]}; fix select.sql or the task")
        mode = ctx.mode(task.format)
        pipeline = Pipeline(
            read=lambda units: ctx.source.read(spec, [u.slice for u in units], columns, mode),
            format=task.format, columns=columns, mode=mode, destination=ctx.destination,
            recorder=Recorder(ctx.ledger, settings, ctx.destination, task), budget=self.budget,
            lease=settings.lease, fault=ctx.fault, feed=ctx.feed(task), summary=summary,
            keeper=LeaseKeeper(ctx.ledger.url, ctx.ledger.schema, PartitionStore, lease=settings.lease),
            reconnect=lambda: wait_for_source(ctx.source, self.budget, self.stop, task.name),  # claimed again
        )  # fmt: skip
        batch_size = self.options.batch_size or task.batch_size
        done, last_batch, idle = 0, 0.0, True  # idle: none of this loop's files in flight
        with pipeline:
            try:
                while limit is None or done < limit:
                    if (self.stop is not None and self.stop.is_set()) or not self.budget.can_start(
                        last_batch
                    ):
                        break
                    n = batch_size if limit is None else min(batch_size, limit - done)
                    claims, taken_over = self._claim(ctx, n, lone=idle)
                    if not claims:
                        break
                    if self.grow is not None and len(claims) == n and not taken_over:
                        limit, self.grow = self.grow(done + n, limit), None
                    started = time.monotonic()
                    # Under a lone token (claimed alone while idle) or taken over: nothing else in
                    # flight while it is exported, nothing after it, so a death then is its own.
                    alone = idle = taken_over or (idle and len(claims) == 1)
                    if alone:
                        pipeline.flush()
                    # The batch's last files are still being published while the next batch is read.
                    keep = 0 if alone else MAX_INFLIGHT // 2
                    released = summary.released
                    pipeline.export(self._units(ctx, pipeline, claims), keep=keep)
                    last_batch = time.monotonic() - started
                    # Less what a lost source gave back: pending again, claimed again, counted then.
                    taken = len(claims) - (summary.released - released)
                    done += taken
                    if self.progress is not None:
                        self.progress(summary, taken)
            except Deadline:
                pass
            finally:
                pipeline.flush()
        return done

    def _claim(self, ctx: Context, size: int, *, lone: bool) -> tuple[list[Claim], bool]:
        """One partition of a dead claim (its lease expired) that held it alone, or as a dead
        batch's second chance, taken over alone, and True; else the partitions of dead batches,
        taken over together once more (an innocent crash recovers at batch speed); else a batch of
        pending ones. Dead claims first, so new work never makes them wait; alone after a second
        death, so one that kills its worker (the OOM killer, a crash) takes no other partition
        down again. ``lone``: none of this loop's files are in flight, so a claim of one partition
        may put it under a lone token (a death of the worker then counts against it: see take_over)."""
        store, lease = ctx.ledger.partitions, ctx.project.settings.lease
        if claims := store.take_over(self.task, lease=lease, lone=lone):
            return claims, True
        if claims := store.take_over(self.task, lease=lease, lone=lone, batch=size):
            return claims, False
        return store.claim(self.task, limit=size, lease=lease, lone=lone), False

    def _units(self, ctx: Context, pipeline: Pipeline, claims: list[Claim]) -> list[WorkUnit]:
        """A work unit per claim; a claim whose partition cannot be exported fails here."""
        units = []
        max_attempts = ctx.project.settings.max_attempts
        task = self.task
        for claim in claims:
            try:
                if claim.attempts >= max_attempts:
                    raise LeaseExpired(claim.attempts, task.name, max_attempts)
                same_keys(task, claim.keys, claim.pkey, claim.zone)
                part = restore_partition(task, values := [claim.keys[k] for k in task.key_names], claim.zone)
                part, path, prev_path = partitions.file_of(task, values, part, claim)
                if path:  # none for a retired hour (see superseded) without a file of its own
                    ctx.destination.check_path(path)
                    owner = self.owners.setdefault(path, claim.pkey)
                    if owner != claim.pkey:  # the load-time check tries samples; these are real values
                        raise shared_file(task, owner, claim.pkey, path)
            except (SluicegateError, KeyError) as exc:  # its unit made here only (~3 µs a claim)
                failed = WorkUnit(key=claim.pkey, slice=Slice(), path="", token=claim.token, handle=claim)
                pipeline.fail(failed, exc)
                continue
            day = part.values[-1] if task.time and task.time.grain == "day" else None
            piece = Slice(
                keys=part.values[: len(task.keys)], start=part.start, end=part.end, zone=part.zone, day=day
            )
            # A forced export is never unchanged (no checksum), but its upload is still fenced.
            checksum = None if claim.forced else claim.prev_checksum
            previous = Previous(path=prev_path, checksum=checksum, etag=claim.prev_etag)
            units.append(
                WorkUnit(
                    key=claim.pkey,
                    slice=piece,
                    path=path,
                    token=claim.token,
                    previous=previous,
                    fenced=True,
                    handle=claim,
                    keys=claim.keys,
                    version=claim.version,
                )
            )
        return not_taken(ctx.ledger.partitions, task, units, pipeline.fail, self.owners, ctx.destination)


def _run_workers(loop: Loop, ctx: Context, workers: int, limit: int | None) -> int:
    """Run the loop here; once a claim comes back full and HELPER_BATCHES more batches per
    helper are pending, start ``workers - 1`` helper processes and share out what is left of
    the limit. Each helper has its own connections, claims and publishers, exactly like another
    worker process on the same ledger. (A helper takes ~0.6 s of CPU to start: for less work
    than that it would slow the run down.)"""
    group = Helpers(loop.progress, loop.stop)
    wanted = HELPER_BATCHES * (loop.options.batch_size or loop.task.batch_size) * (workers - 1)

    def grow(claimed: int, limit: int | None) -> int | None:
        if (limit is not None and limit - claimed < wanted) or len(
            ctx.ledger.partitions.pending(loop.task, limit=wanted)
        ) < wanted:
            return limit
        shares = limit_shares(None if limit is None else limit - claimed, workers)
        group.start(orders_for(ctx, loop.task, loop.options, loop.budget, shares[1:]))
        return None if shares[0] is None else claimed + shares[0]

    try:
        done = dataclasses.replace(loop, grow=grow).run(ctx, limit)
    except BaseException:
        group.finish(loop.summary, stopping=True)
        raise
    claimed, errors = group.finish(loop.summary)
    if errors:
        raise errors[0]
    return done + claimed


def limit_shares(limit: int | None, workers: int) -> list[int | None]:
    """Each worker's share of ``limit``: together exactly ``limit``, and no worker with nothing to do.

    ``limit_shares(5, 2) == [3, 2]``; ``limit_shares(1, 3) == [1]`` (one worker);
    ``limit_shares(None, 2) == [None, None]``.
    """
    if limit is None:
        return [None] * workers
    if limit <= 0:
        return [0]
    count = min(workers, limit)
    return [limit // count + (1 if i < limit % count else 0) for i in range(count)]


# ---------------------------------------------------------------------------- check, status, describe


def check(task: Task, source: Source) -> list[str]:
    """Problems of a partitioned task against the live source (columns, zones, capture table)."""
    try:
        problems = missing_columns(task, [c.name for c in source.describe(read_spec(task))], source)
    except SluicegateError as exc:
        return [str(exc)]
    if task.time and task.time.zone_sql:
        problems += _check_zones(task, source, task.folder / "task.toml")
    problems += _server_zone(task, source)
    problems += sqlite.unreadable_time_rows(task, source)
    problems += sqlite.blob_key_rows(task, source)
    return problems + capture_triggers.capture_problems(task, source)


def missing_columns(task: Task, columns: Sequence[str], source: Source) -> list[str]:
    """The task's key, time, ``order_by`` and ``primary_key`` columns that select.sql does not
    return, by exact name: the readers look columns up by exact name on every dialect (a name in
    another case broke MariaDB's order and byte-exact key match, and SQLite's time column)."""
    toml = task.folder / "task.toml"
    present = set(columns)
    by_case = {c.lower(): c for c in columns}

    def hint(name: str) -> str:
        other = by_case.get(name.lower())
        return f" (it has {other!r}: write the name as select.sql returns it)" if other else ""

    problems = [
        f"{toml} keys: {key!r} is not a column of select.sql's result ({', '.join(sorted(columns))})"
        for key in task.keys
        if key not in present
    ]
    if task.time and task.time.column not in present:
        problems.append(
            f"{toml} [time] column: {task.time.column!r} is not a column of select.sql's result"
            + hint(task.time.column)
        )
    for field_name, names in (("order_by", task.order_by), ("primary_key", task.primary_key)):
        problems += [
            f"{toml} {field_name}: {name!r} is not a column of select.sql's result{hint(name)}"
            for name in names
            if name not in present
        ]
    return problems


def _server_zone(task: Task, source: Source) -> list[str]:
    """PostgreSQL cuts a fixed zone's days and writes its times itself (AT TIME ZONE): a zone its
    time zone data lacks (Europe/Kyiv before tzdata 2022b) failed every partition at the run."""
    if task.time is None or not task.time.zone or source.dialect is not db.POSTGRESQL:
        return []
    try:
        source.execute("SELECT now() AT TIME ZONE %s", [task.time.zone])
    except SluicegateError as exc:
        # 22023: the zone not recognized, in whatever language the server writes; not so the
        # source lost, a timeout, which are not the zone's fault
        if getattr(exc.__cause__, "sqlstate", None) != "22023":
            return [f"{task.folder / 'task.toml'} [time] zone: could not check it on the source: {exc}"]
        return [
            f"{task.folder / 'task.toml'} [time] zone: the PostgreSQL source does not know the zone "
            f"{task.time.zone!r} (its time zone data is older than Python's); update the server's "
            "time zone data, or use the zone's older name"
        ]
    return []


def _check_zones(task: Task, source: Source, toml: Path) -> list[str]:
    assert task.time and task.time.zone_sql
    try:
        zones = source.zones(task.time.zone_sql)
    except SluicegateError as exc:
        return [f"{toml} [time] zone_sql: the query failed: {exc}"]
    bad: dict[str, str] = {}  # each bad zone as shown (NULL, or the quoted text), and its first key
    for key, zone in sorted(zones.items(), key=lambda item: item[0]):
        try:
            validate.zone_name("" if zone is None else zone, "zone")
        except ConfigError:
            bad.setdefault("NULL" if zone is None else repr(zone), key)
    return [
        f"{toml} [time] zone_sql: {shown} (for the key {key}) is not an IANA time zone; fix the zone data"
        for shown, key in bad.items()
    ]


def status(task: Task, ledger: Ledger) -> dict[str, Any]:
    """Partition counts by state, and the parked partitions with their errors."""
    row: dict[str, Any] = dict(ledger.partitions.status(task).__dict__)
    row["kind"] = "partitioned"
    if not (task.time and task.time.zone):  # zone_sql: no one zone (else cut in another: reexport)
        row["other_zone"] = None
    row["failures"] = [
        {"partition": pkey, "attempts": attempts, "error": str(error or "").removesuffix("; will retry")}
        for pkey, attempts, error in ledger.partitions.failures(task, limit=10)  # parked: nothing will
    ]
    return row


def describe(task: Task) -> dict[str, Any]:
    """Keys, time key and capture mode, for ``sluicegate tasks``."""
    return {
        "keys": list(task.key_names),
        "time": task.time.__dict__ if task.time else None,
        "capture": task.capture.mode,
    }
