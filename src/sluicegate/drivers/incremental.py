"""Incremental tasks: each entity's new rows since its watermark, one file per entity window.

The driver plans each entity's window (:mod:`sluicegate.watermarks`: claim the watermark
row, cap the end for late commits, or take a re-export's explicit window, or a recorded
failure for ``redrive``), exports the windows through the pipeline, grouped by destination
(a re-export may name its own), and records outcomes on the watermarks: a watermark moves
forward, compare-and-set, only after its window's file is durable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import overwrites, validate, watermarks
from ..exceptions import (
    BadPartitionValue,
    ConfigError,
    DataError,
    DestinationUnavailable,
    SluicegateError,
    UsageError,
)
from ..export_request import EXPORT_TYPES, ExportRequest
from ..ledger import Ledger, WatermarkStore, run_heartbeat
from ..ledger.leases import LeaseKeeper
from ..options import Budget, RunOptions, TaskSummary
from ..partitions import in_range
from ..pipeline import Pipeline
from ..sources import Column, ReadSpec, Slice
from ..specs import RowTask, Settings
from ..taskfields import ROW_KEYS, base_fields, row_fields
from ..watermark_entities import discover_entities
from ..watermarks import Window
from ..work import Deadline, Previous, WorkUnit
from . import Context, Progress
from .helpers import wait_for_source
from .incremental_check import check, cursor_problems, entity_problems, missing_columns, sqlite_dates
from .incremental_entities import entity_value, typed_entity
from .incremental_recorder import Recorder

__all__ = ["Driver", "Task", "check", "describe", "load", "status"]

LEDGER_STORES = ("watermarks", "runs")  # the ledger stores a run uses (sluicegate grants)
REDO = "redo: a failed or interrupted window, to its own file; the run then goes on to its end"
KEYS = ROW_KEYS | {"entity", "cursor", "export_type", "zone", "bootstrap", "safety_margin", "entities"}


@dataclass(frozen=True, kw_only=True)
class Task(RowTask):
    """Watermark exports per entity: what is new since the last durable export."""

    kind = "incremental"
    entity: str
    cursor: str
    export_type: str = "daily"
    zone: str = "UTC"
    bootstrap: str = "yesterday"
    safety_margin: float = 60.0
    entities: tuple[str, ...] = ()


def load(*, name: str, folder: Path, raw: Mapping[str, Any], settings: Settings) -> Task:
    """Read an incremental task's ``task.toml``."""
    where = str(folder / "task.toml")
    validate.reject_unknown(raw, KEYS, where)
    for field_name in ("entity", "cursor"):
        if field_name not in raw:
            raise ConfigError(
                f"{where}: '{field_name}' is missing; name the {field_name} column of select.sql's result"
            )
    entities = raw.get("entities", [])
    listed = entities if isinstance(entities, list) else [None]
    if any(isinstance(e, bool) or not isinstance(e, str | int) for e in listed):  # true was "True"
        raise ConfigError(f'{where} entities: use a list of entity values, e.g. entities = ["study-a"]')
    cursor = validate.identifier(raw["cursor"], f"{where} cursor")
    task = Task(
        **base_fields(name=name, folder=folder, raw=raw, settings=settings),
        **row_fields(raw, settings, where, cursor),
        entity=validate.identifier(raw["entity"], f"{where} entity"),
        cursor=cursor,
        export_type=validate.choice(raw.get("export_type", "daily"), EXPORT_TYPES, f"{where} export_type"),
        zone=validate.zone_name(raw.get("zone", "UTC"), f"{where} zone"),
        bootstrap=_bootstrap(raw.get("bootstrap", "yesterday"), f"{where} bootstrap"),
        safety_margin=validate.parse_duration(raw.get("safety_margin", "1m"), where=f"{where} safety_margin"),
        entities=tuple(str(e) for e in entities),
    )
    from ..paths import check_template, template_fields

    with contextlib.suppress(ValueError):  # a malformed template: check_template names it
        unknown = sorted(template_fields(task.path) - {"type", "start", "end", "format", "ext", "task"})
        if len(unknown) == 1 and task.entity not in unknown:  # the path names another entity column
            raise ConfigError(
                f"{where} entity: {task.entity!r} is not in path {task.path!r}, which uses "
                f"{{{unknown[0]}}}; set entity to the column the path names, or fix the path"
            )
    check_template(
        task.path, folder, allowed={task.entity, "type", "start", "end", "format", "ext", "task"},
        required=(task.entity, "start"), what="window field", fmt=task.format,
    )  # fmt: skip
    sample = dt.datetime(2024, 1, 31, tzinfo=dt.UTC)
    try:  # a template that escapes the destination is the task's configuration error
        watermarks.render_window_path(task, "entity-1", "daily", sample, sample + dt.timedelta(days=1))
    except BadPartitionValue as exc:
        raise ConfigError(f"{folder / 'task.toml'} path: {exc}") from None
    return task


def _bootstrap(value: Any, where: str) -> str:
    text = str(value)
    if text in ("yesterday", "beginning"):
        return text
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{where}: {text!r} is not a bootstrap; use 'yesterday', 'beginning' or an ISO 8601 time"
        ) from None
    try:
        in_range(parsed, "the bootstrap")
    except UsageError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return parsed.isoformat()


def read_spec(task: Task) -> ReadSpec:
    """How the source reads entity windows: the entity column, windows ``[start, end)`` on the cursor."""
    return ReadSpec(
        select_sql=task.select_sql,
        folder=task.folder,
        keys=(task.entity,),
        time_column=task.cursor,
        order_by=task.order_by,
        primary_key=task.primary_key,
        columns=task.columns,
    )


class Driver:
    """Exports incremental tasks."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def _select_fits(self, task: Task) -> bool:
        """Before any claim: select.sql runs and returns the entity, cursor, order_by and primary_key
        columns, its cursor a time (a misspelt column failed a window per entity, exit 1); True
        when the cursor is a date."""
        try:  # described once per context: the export reuses it
            described = self.context.columns(task, read_spec(task))
        except DataError as exc:  # the query itself fails: its SQL, not the data (an outage is transient)
            raise ConfigError(f"{task.folder / 'select.sql'}: {exc}") from None
        if problems := (
            missing_columns(task, {c.name for c in described})
            + entity_problems(task, described)
            + cursor_problems(task, described, self.context.source, probe=True)
        ):
            raise ConfigError("; ".join(problems))
        dated = any(c.name == task.cursor and c.kind == "date" for c in described)
        return dated or sqlite_dates(task, self.context.source)

    def _windows(
        self, task: Task, options: RunOptions, *, claim: bool, summary: TaskSummary, budget: Budget | None
    ) -> list[Window]:
        ctx, settings = self.context, self.context.project.settings
        request = options.request or ExportRequest()
        if not options.redrive:
            watermarks.check_end(task, request, dt.datetime.now(dt.UTC))  # a usage error first
        dated = self._select_fits(task)
        if request.destination:  # a URL no destination takes exits 2 before any entity is planned
            with contextlib.suppress(DestinationUnavailable):  # down: recorded on each window, for redrive
                ctx.destination_for(request.destination)
        store = ctx.ledger.watermarks
        if options.redrive:
            windows, notes, _ = watermarks.redrive_windows(
                task, store, ctx.source, lease=settings.lease, max_attempts=settings.max_attempts
            )
        else:
            windows, notes, _ = watermarks.plan_windows(
                task, request, ctx.source, store, now=dt.datetime.now(dt.UTC), lease=settings.lease,
                claim=claim, whole_days=dated, budget=budget, max_attempts=settings.max_attempts,
            )  # fmt: skip
        if options.redrive:  # a redriven re-export that could drop a longer window's rows fails (exit 1)
            windows, held = overwrites.hold_overwrites(task, windows, ctx.destination_for)
            notes += held
        else:  # a re-export that could drop a longer window's rows: exit 2, as planned
            overwrites.refuse_overwrites(task, windows, ctx.destination_for)
        summary.entities += notes
        for note in notes if claim else ():
            if "error" in note:  # an entity that cannot be exported at all: a failure of this run
                summary.note_failure(str(note["entity"]), str(note["error"]))
        return windows  # a re-export's windows carry its override destination, for redrive

    def plan(self, task: Task, options: RunOptions, *, summary: TaskSummary, limit: int | None) -> None:
        """Each entity's window in ``summary.plan`` (and notes on the others), without claiming."""
        budget = Budget.start(options.max_runtime, options.started)  # the run's, for the margin's wait
        windows = self._windows(task, options, claim=False, summary=summary, budget=budget)
        for w in windows:  # one entity no path can hold is listed with its error, not the end of the plan
            entry: dict[str, Any] = {
                "partition": {"entity": w.entity},
                "reason": w.mode if not (w.claim and w.claim.pending_end) else REDO,
                "start": w.start.isoformat(),
                "end": w.end.isoformat(),
                "type": w.export_type,
            }
            try:
                entry["path"] = watermarks.window_path(task, w)
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
        """Export each entity's window, recorded as a run on the ledger; return windows exported."""
        ctx = self.context
        windows = self._windows(task, options, claim=True, summary=summary, budget=budget)
        first = None if windows else self._take_over(task, options, summary)  # a dead claim's entity
        if not windows and first is None:  # nothing to export (a SQLite writer may hold the lock)
            return 0
        request = options.request or ExportRequest()
        recorded_here = not options.recorded
        try:
            if recorded_here:  # a CLI run beats (the service's RunManager beats for the runs it records)
                run_request = {**request.as_dict(), "redrive": options.redrive}
                summary.run_id = ctx.ledger.runs.start(task.name, tag=request.tag, request=run_request)
                with run_heartbeat(ctx.ledger.url, ctx.ledger.schema, summary.run_id):
                    self._export_all(task, windows, first, options, summary, budget)
            else:
                self._export_all(task, windows, first, options, summary, budget)
        except BaseException:
            # Whatever stopped the export, the entities it still holds are given back now, not
            # after a whole lease of "another export holds this entity".
            with contextlib.suppress(SluicegateError):  # (the one taken over first, too)
                for token in {w.claim.token for w in windows + (first or []) if w.claim is not None}:
                    ctx.ledger.watermarks.release(token)
            raise
        finally:
            if recorded_here and summary.run_id is not None:
                ctx.ledger.runs.finish(summary.run_id, [summary.as_dict()])
        return len(windows)

    def _export_all(
        self, task: Task, windows: list[Window], first: list[Window] | None, options: RunOptions,
        summary: TaskSummary, budget: Budget,
    ) -> None:  # fmt: skip
        """Export the windows of the entities no claim held, then take over the entities of dead
        claims (their leases expired) one at a time, each exported alone and committed before the
        next: one that kills its worker (the OOM killer on a huge window, a crash in a driver) then
        takes no other entity down with it again. ``first``: one taken over already."""
        self._export_and_catch_up(task, windows, options, summary, budget)
        taken = first
        while taken is not None or not (budget.over() or budget.stopped()):
            taken = self._take_over(task, options, summary) if taken is None else taken
            if taken is None:
                return
            windows += taken  # given back with the others should the export stop
            self._export_and_catch_up(task, taken, options, summary, budget)
            taken = None

    def _take_over(self, task: Task, options: RunOptions, summary: TaskSummary) -> list[Window] | None:
        """The window of one entity the run found held whose claim is dead, taken over alone (none
        when it is empty or, for redrive, exported since); None when none is."""
        request = options.request or ExportRequest()
        ctx, settings = self.context, self.context.project.settings
        held, lease, most = watermarks.held(summary.entities), settings.lease, settings.max_attempts
        if options.redrive:
            windows, notes, entity = watermarks.take_over_redrive(
                task, ctx.ledger.watermarks, held, lease=lease, max_attempts=most
            )
        elif request.touches_watermarks:
            windows, notes, entity = watermarks.take_over_window(
                task, request, ctx.source, ctx.ledger.watermarks, held, now=dt.datetime.now(dt.UTC),
                lease=lease, max_attempts=most, whole_days=self._select_fits(task),
            )  # fmt: skip
        else:  # a re-export claims nothing
            return None
        if entity is None:
            self._parked_meanwhile(task, held, summary)
            return None
        watermarks.drop_held(summary.entities, entity)  # held by a dead claim, now this run's
        summary.entities += notes
        for note in notes:
            if "error" in note:  # parked, its attempts used up: a failure of this run
                summary.note_failure(entity, str(note["error"]))
        return windows

    def _parked_meanwhile(self, task: Task, held: set[str], summary: TaskSummary) -> None:
        """Of the ``held`` entities none of which could be taken over, those another run parked since
        (taking over their dead claims with no attempt left): failures of this run as of that one,
        not "held" (no run takes a parked entity over until it is reset)."""
        if not held:
            return
        rows = self.context.ledger.watermarks.entities(task.name)
        most = self.context.project.settings.max_attempts
        for note in watermarks.parked_notes(task, rows, held, most):
            watermarks.drop_held(summary.entities, note["entity"])
            summary.entities.append(note)
            summary.note_failure(note["entity"], str(note["error"]))

    def _export_and_catch_up(
        self, task: Task, windows: list[Window], options: RunOptions, summary: TaskSummary, budget: Budget
    ) -> None:
        """Export the windows; an entity whose window was a failed or crashed one, redone to its
        own file (which may be in place), then goes on to the run's end in a second window."""
        seen = len(summary.entities)
        self._export(task, windows, summary, budget)
        committed = {e["entity"] for e in summary.entities[seen:] if e.get("watermark_moved")}
        # Only a redo that committed goes on: one that failed again is still pending (next run).
        redone = sorted(
            {w.entity for w in windows if w.claim and w.claim.pending_end is not None} & committed
        )
        request = options.request or ExportRequest()
        if not redone or options.redrive or budget.over() or budget.stopped():
            return
        more = dataclasses.replace(options, request=dataclasses.replace(request, entities=tuple(redone)))
        later = self._windows(task, more, claim=True, summary=summary, budget=None)  # waited already
        windows += later  # given back with the others should the export stop
        self._export(task, later, summary, budget)

    def _export(self, task: Task, windows: list[Window], summary: TaskSummary, budget: Budget) -> None:
        """Export windows, grouped by destination (a re-export's override, or the project's)."""
        ctx, settings = self.context, self.context.project.settings
        spec = read_spec(task)
        columns = ctx.columns(task, spec)
        mode = ctx.mode(task.format)
        recorder = Recorder(task, ctx.ledger.watermarks, settings.lease, summary)
        # Entities named in text, on a column neither text nor integer: looked up once, when needed.
        found = functools.cache(lambda: _found(task, ctx, columns))
        groups: dict[str | None, list[Window]] = {}
        for window in windows:
            groups.setdefault(window.destination, []).append(window)
        for later, (url, group) in enumerate(groups.items()):
            try:
                destination = ctx.destination_for(url)
            except DestinationUnavailable as exc:  # recorded with the windows' destination, for redrive
                for window in group:  # as Pipeline.fail would, had the destination opened
                    recorder.fail(_fileless_unit(task, window), exc)
                    summary.note_failure(window.entity, str(exc))
                continue
            pipeline = Pipeline(
                read=lambda units: ctx.source.read(spec, [u.slice for u in units], columns, mode),
                format=task.format, columns=columns, mode=mode, destination=destination, recorder=recorder,
                summary=summary, budget=budget, lease=settings.lease, fault=ctx.fault,
                feed=ctx.feed(task, destination),
                keeper=LeaseKeeper(ctx.ledger.url, ctx.ledger.schema, WatermarkStore, lease=settings.lease),
                reconnect=lambda: wait_for_source(ctx.source, budget, budget.stop, task.name), reclaims=False,
            )  # fmt: skip
            with pipeline:
                try:
                    for at in range(0, len(group), task.batch_size):
                        # A batch's windows are stored pending just before it is read: a run out of
                        # time, or told to stop, before any batch but the first (a later group's
                        # first too) gives the later entities back unread, with no window to redo:
                        # every window not committed, of this group and of the later groups (a
                        # redrive's watermark windows follow its re-exports', see Deadline).
                        if (at or later) and (budget.over() or budget.stopped()):
                            summary.released += recorder.release({w.claim.token for w in windows if w.claim})
                            return
                        units = [
                            u
                            for w in group[at : at + task.batch_size]
                            if (u := _unit(task, w, pipeline, ctx, columns, found)) is not None
                        ]
                        pipeline.export(units)
                except Deadline:  # the windows not read yet (of this group and the next) are given back
                    pipeline.flush()
                    summary.released += recorder.release({w.claim.token for w in windows if w.claim})
                    return
                finally:
                    pipeline.flush()


def _found(task: Task, ctx: Context, columns: Sequence[Column]) -> dict[str, Any]:
    """Each entity of the source by its text, and each of the ledger that the source no longer has
    (every row deleted; its pending window is redone, see watermarks) as a value of the column's
    kind read from the ledger's text: no value of the column has that text, and the redo failed.
    (A text naming a value the source has, "1.50" for 1.5, is not that entity: it stays unfound.)"""
    found = {str(v): v for v in discover_entities(task, ctx.source)}
    kind = next((c.kind for c in columns if c.name == task.entity), "other")
    typed = {r["entity"]: typed_entity(kind, r["entity"]) for r in ctx.ledger.watermarks.entities(task.name)}
    values = set(found.values())
    return {**{e: v for e, v in typed.items() if v not in values}, **found}


def _fileless_unit(task: Task, window: Window) -> WorkUnit:
    """A window's work unit before it has a path: what a failure to reach its file is recorded on."""
    piece = Slice(keys=(window.value,), start=window.start, end=window.end, zone=task.zone)
    token = window.claim.token if window.claim else ""
    return WorkUnit(key=window.entity, slice=piece, path="", token=token, handle=window)


def _unit(
    task: Task, window: Window, pipeline: Pipeline, ctx: Context, cols: Sequence[Column],
    found: Callable[[], Mapping[str, Any]],
) -> WorkUnit | None:  # fmt: skip
    """The work unit of a window (its path checked, else it fails). A redo, or a re-export whose path
    names its window exactly, without rows deletes the file at its path (this window's, no other's)."""
    unit, ledger, destination = _fileless_unit(task, window), ctx.ledger, pipeline.destination
    try:
        value = entity_value(task, window.value, cols, found)
        path = watermarks.window_path(task, window)
        destination.check_path(path)
    except SluicegateError as exc:
        pipeline.fail(unit, exc)  # recorded on the window (the unit's handle)
        return None
    if window.claim is not None:  # remember the window, so a crashed export is redone the same
        ledger.watermarks.set_pending(window.claim, window.start, window.end, window.export_type)
        if not ledger.watermarks.holds(window.claim):  # lost before: another run's now (see holds)
            pipeline.summary.lost += 1
            return None
    refuse, exclusive = None, overwrites.exclusive(task, window, path, destination)
    redo = window.claim.pending_start is not None if window.claim else exclusive is None
    if window.claim is not None and window.claim.path == path:  # the last file is an earlier window's
        refuse = (
            f"window [{window.start.isoformat()}, {window.end.isoformat()}) would overwrite {path}, "
            f"the file of an earlier window; name windows apart in {task.folder / 'task.toml'} path: "
            "{start:%Y%m%dT%H%M%SZ}, with .%f for windows under a second"
        )
    return dataclasses.replace(
        unit, slice=dataclasses.replace(unit.slice, keys=(value,)), path=path, refuse_file=refuse,
        keys={task.entity: value}, version=f"{window.start.isoformat()}/{window.end.isoformat()}",
        exclusive=exclusive,
        previous=Previous(path=None, checksum=None) if redo and not refuse else None,
    )  # fmt: skip


def status(task: Task, ledger: Ledger) -> dict[str, Any]:
    """Entities, claims, failed windows and the oldest watermark."""
    rows = ledger.watermarks.entities(task.name)
    marks = [r["watermark"] for r in rows if r["watermark"] is not None]
    return {
        "task": task.name,
        "kind": "incremental",
        "entities": len(rows),
        "claimed": sum(r["claimed"] for r in rows),
        "failed": sum(r["failed_end"] is not None for r in rows),
        "oldest_watermark": min(marks).isoformat() if marks else None,
        "failures": [
            {"partition": r["entity"], "attempts": r["attempts"], "error": r["last_error"]}
            for r in rows
            if r["failed_end"] is not None
        ],
    }


def describe(task: Task) -> dict[str, Any]:
    """The entity and cursor columns, for ``sluicegate tasks``."""
    return {
        "keys": [task.entity],
        "time": None,
        "capture": None,  # no [capture]: its watermark finds the new rows
        "entity": task.entity,
        "cursor": task.cursor,
    }
