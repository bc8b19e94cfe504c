"""Incremental (watermark) exports per entity: export what is new since the last durable export.

Each (task, entity) has one watermark: the end of the last window that was durably exported.
A run exports the half-open window ``[watermark, end)`` for every entity, one file per entity
window, and moves the watermark to ``end`` only after the file is published, with a
compare-and-set that never moves it backwards. A row whose cursor equals a boundary belongs
to exactly one window. Failed windows are recorded for ``redrive``; a re-export with an
explicit window (``--ignore-watermark``) or to another destination never touches watermarks.

Late commits: a row may commit after an export with a cursor older than that export's end;
:mod:`sluicegate.watermark_ends` caps each window's end so that it falls into a later window.

Dead claims: a run claims the entities no claim holds; an entity whose claim died (its lease
expired) is taken over alone (:func:`take_over_window`) and exported alone, so one that kills
its worker takes no other entity down with it again. One taken over with no attempt left
(``max_attempts``) is parked instead: its window recorded as failed, its row left to the dead
claim, which no run takes (a raised ``max_attempts`` neither) until ``sluicegate reset TASK --failed``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import paths
from .destinations import local_folder
from .exceptions import UsageError
from .export_request import ExportRequest
from .ledger import WatermarkClaim, WatermarkStore
from .masking import mask_url
from .partitions import zone_of
from .watermark_ends import capped_end, type_end
from .watermark_entities import entity_values

if TYPE_CHECKING:
    from .drivers.incremental import Task as TaskSpec
    from .options import Budget

UTC = dt.UTC
# bootstrap = "beginning": rows from before 1970 are history too (1850's weather). Year 1000 is
# MariaDB's earliest DATETIME, and the earliest year strftime writes with four digits in a path.
BEGINNING = dt.datetime(1000, 1, 1, tzinfo=UTC)


def bootstrap_start(spec: TaskSpec, end: dt.datetime) -> dt.datetime:
    """Where an entity without a watermark starts: the day before ``end``, the beginning, or a time."""
    if spec.bootstrap == "beginning":
        return BEGINNING
    if spec.bootstrap == "yesterday":
        local = end.astimezone(zone_of(spec.zone))
        day = local.date() - dt.timedelta(days=1)
        return dt.datetime.combine(day, dt.time(), tzinfo=zone_of(spec.zone)).astimezone(UTC)
    parsed = dt.datetime.fromisoformat(spec.bootstrap)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


NO_ROWS = "{} returned no rows yet; nothing to export"


@dataclass(kw_only=True)
class Window:
    """One entity window being exported in this run."""

    entity: str
    value: Any
    start: dt.datetime
    end: dt.datetime
    export_type: str
    claim: WatermarkClaim | None
    mode: str  # "watermark" or "reexport"
    destination: str | None = None  # a re-export's override destination (None: the project's)


def not_recorded(task: str, entity: str) -> str:
    """What a failed re-export's error adds when the ledger kept another one the entity owes
    (the ledger holds one failed re-export per entity; two at once used to lose the first)."""
    return (
        f"; not recorded for redrive: {entity!r} already owes a failed re-export of another window (another"
        f" run's), which is kept: run 'sluicegate redrive {task}', then this re-export again"
    )


def _gone_pending(rows: Sequence[Mapping[str, Any]], found: Collection[str]) -> dict[str, Any]:
    """Entities with a pending window (of the ledger's ``rows``) that the source no longer has
    (every row deleted): a failed or killed try may have placed the window's file, which their redo
    (no rows) deletes; left unfound, never redone, that file of rows the source no longer has
    stayed published for good."""
    return {
        r["entity"]: r["entity"] for r in rows if r["pending_end"] is not None and r["entity"] not in found
    }


def _gone(rows: Sequence[Mapping[str, Any]], found: Collection[str]) -> dict[str, Any]:
    """Entities of the ledger's ``rows`` that the source no longer has, for a re-export of every
    entity: its window of each has no rows, and deletes a file at that window's name (see the
    driver's _unit); left out, that file of rows the source no longer has stayed published."""
    return {r["entity"]: r["entity"] for r in rows if r["entity"] not in found}


def _unkeyable(task: TaskSpec, values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Entities holding a NUL, each failed with why: the ledger's entity lists (JSON) end a text there."""
    why = f"holds a NUL character, which the ledger cannot keep; clean the {task.entity} values in select.sql"
    return [{"entity": e, "rows": 0, "error": f"entity {e!r} {why}"} for e in values if "\x00" in e]


def check_end(task: TaskSpec, request: ExportRequest, now: dt.datetime) -> dt.datetime:
    """The run's window end; a watermark run's may not be in the future: the watermark would pass
    rows not written yet, each then in no file (a re-export window, which moves none, may)."""
    end = request.end or type_end(request.export_type or task.export_type, now, task)
    if request.touches_watermarks and request.end is not None and end > now:  # the margin caps it later
        raise UsageError(
            f"task {task.name}: endDateTime {end.isoformat()} is in the future (it is now"
            f" {now.isoformat(timespec='seconds')}); give an end that has passed"
        )
    return end


def plan_windows(
    task: TaskSpec,
    request: ExportRequest,
    source: Any,
    wm: WatermarkStore,
    *,
    now: dt.datetime,
    lease: float,
    claim: bool = True,
    whole_days: bool = False,
    budget: Budget | None = None,
    max_attempts: int,
) -> tuple[list[Window], list[dict[str, Any]], str | None]:
    """Decide each entity's window; return the windows to export, notes on the others, the claim token.

    ``whole_days``: the cursor is a date, compared as its UTC midnight; a window that ended during
    a day took the rows dated that day so far, and its later ones were below the watermark.
    ``budget``: the run's (None: no wait for the margin, see :func:`_wait_margin`)."""
    export_type = request.export_type or task.export_type
    end = check_end(task, request, now)
    values = entity_values(task, request, source)
    rows = wm.entities(task.name)  # read once, before any claim
    if not (request.entities or task.entities):
        values |= _gone_pending(rows, values) if request.touches_watermarks else _gone(rows, values)
    refused = _unkeyable(task, values)
    values = {e: v for e, v in values.items() if e not in {r["entity"] for r in refused}}
    if not values and not refused:  # select.sql returned no row (a table that is empty yet)
        return [], [{"entity": None, "rows": 0, "note": NO_ROWS.format(task.folder / "select.sql")}], None
    if not request.touches_watermarks:
        windows, notes = _reexport_windows(task, request, wm, values, export_type, end)
        return windows, refused + notes, None
    charged = () if claim else wm.charged_on_take_over(task.name, values, max_attempts)
    refused += parked_notes(task, rows, values, max_attempts, charged=charged)
    values = {e: v for e, v in values.items() if e not in {r["entity"] for r in refused}}
    cap, held, waits = capped_end(
        task, source, (export_type, end), budget, values=values, claim=claim, whole_days=whole_days
    )
    if held:
        return [], [{"entity": e, "rows": 0, "note": held} for e in values], None
    if claim:
        wm.ensure(task.name, list(values))
        claims = wm.claim(task.name, list(values), lease=lease)
    else:  # dry run: read watermarks without claiming
        claims = _unclaimed(task, wm, values)
    notes = _held(values, claims, lease)
    windows = []
    for c in claims:
        window = _watermark_window(task, c, values[c.entity], export_type, end, cap)
        if isinstance(window, str):  # nothing to export: the reason
            notes.append({"entity": c.entity, "rows": 0, "note": window})
            if claim:
                wm.release_one(c)
        else:
            windows.append(window)
    token = claims[0].token if claims and claim else None
    return windows, refused + waits + notes, token


def take_over_window(
    task: TaskSpec, request: ExportRequest, source: Any, wm: WatermarkStore, entities: Collection[str], *,
    now: dt.datetime, lease: float, max_attempts: int, whole_days: bool = False,
) -> tuple[list[Window], list[dict[str, Any]], str | None]:  # fmt: skip
    """Take over one of ``entities`` (the run's that it found held) whose claim is dead (its lease
    expired), to be exported alone: its window (the stored one when it died exporting it; none
    when empty, and it is given back; none either when its attempts ran out, and it is parked),
    notes, and the entity (None: none was taken)."""
    export_type = request.export_type or task.export_type
    end = check_end(task, request, now)
    cap, held, _ = capped_end(
        task, source, (export_type, end), None, values=(), claim=True, whole_days=whole_days
    )
    entities = [] if held else sorted(entities)
    taken = wm.take_over(task.name, entities, lease=lease, max_attempts=max_attempts) if entities else []
    if not taken:
        return [], [], None
    [c] = taken
    window = _watermark_window(task, c, c.entity, export_type, end, cap)  # read as the column's kind
    if isinstance(window, str):  # nothing to export: the reason
        wm.release_one(c)
        return [], [{"entity": c.entity, "rows": 0, "note": window}], c.entity
    if c.attempts >= max_attempts:
        return [], [park(task, wm, c, window, max_attempts)], c.entity
    return [window], [], c.entity


def parked_error(task: TaskSpec, attempts: int, max_attempts: int) -> str:
    """Why an entity is parked (a raised ``max_attempts`` leaves it parked), and how to retry it."""
    lower = "" if attempts >= max_attempts else " now, lower when it was parked"
    return (
        f"gave up after {attempts} attempts, max_attempts being {max_attempts}{lower} (leases expired as a"
        " worker died exporting it, and failed exports count);"
        f" run 'sluicegate reset {task.name} --failed' to retry"
    )


def park(
    task: TaskSpec, wm: WatermarkStore, c: WatermarkClaim, window: Window, max_attempts: int
) -> dict[str, Any]:
    """Park the entity ``c`` took over with no attempt left, ``window`` unexported (its worker died
    exporting it, alone, until ``max_attempts``); its error note."""
    error = parked_error(task, c.attempts, max_attempts)
    wm.park(c, error=error, start=window.start, end=window.end, export_type=window.export_type)
    return {"entity": window.entity, "rows": 0, "error": error}


def parked_notes(
    task: TaskSpec, rows: Sequence[Mapping[str, Any]], values: Collection[str], max_attempts: int,
    *, charged: Collection[str] = (),
) -> list[dict[str, Any]]:  # fmt: skip
    """An error note for each of ``values`` that is parked (of the ledger's ``rows``): held by a dead
    claim with no attempt left, or by :func:`park`, which no run takes over: a failure of each run
    until it is reset. ``charged``: a dry run's entities that a take-over charges an attempt (see
    WatermarkStore.charged_on_take_over): also each the run previewed parks, as its last attempt."""
    notes = []
    for r in rows:
        if r["entity"] not in values or not r["held"] or r["claimed"] or r["failed_mode"] == "reexport":
            continue  # a re-export's attempts: see take_over
        if r["parked"] or r["attempts"] >= max_attempts:
            notes.append(
                {"entity": r["entity"], "rows": 0, "error": parked_error(task, r["attempts"], max_attempts)}
            )
        elif r["entity"] in charged and r["attempts"] + 1 >= max_attempts:
            error = "would be parked: " + parked_error(task, r["attempts"] + 1, max_attempts)
            notes.append({"entity": r["entity"], "rows": 0, "error": error})
    return notes


HELD = "another export holds this entity; nothing exported"


def _held(wanted: Collection[str], claims: list[WatermarkClaim], lease: float) -> list[dict[str, Any]]:
    """A note for each wanted entity another export holds (so it was not claimed; a dead claim's,
    which a run takes over alone afterwards, drops its note then: see :func:`drop_held`)."""
    note = (  # a killed export's claim looked held for no stated time
        f"{HELD} (if that export died, the next run takes it over once its lease, {lease:g} s, has run out)"
    )
    return [{"entity": e, "rows": 0, "note": note} for e in sorted(set(wanted) - {c.entity for c in claims})]


def held(notes: list[dict[str, Any]]) -> set[str]:
    """The entities ``notes`` say another export held (a dead claim's among them)."""
    return {str(n["entity"]) for n in notes if str(n.get("note", "")).startswith(HELD)}


def drop_held(notes: list[dict[str, Any]], entity: str) -> None:
    """Remove the note that ``entity`` was held (it was, by a dead claim this run then took over)."""
    notes[:] = [n for n in notes if n.get("entity") != entity or not str(n.get("note", "")).startswith(HELD)]


def _reexport_windows(
    task: TaskSpec, request: ExportRequest, wm: WatermarkStore, values: dict[str, Any], export_type: str,
    end: dt.datetime,
) -> tuple[list[Window], list[dict[str, Any]]]:  # fmt: skip
    """Windows of a re-export (an explicit window, or another destination): no claims, no watermark moves."""
    windows, notes = [], []
    rows = {w["entity"]: w for w in wm.entities(task.name)}
    for entity, value in values.items():
        row = rows.get(entity, {})
        start = request.start or row.get("watermark") or bootstrap_start(task, end)
        if start >= end:
            notes.append({"entity": entity, "rows": 0, "note": f"window [{start}, {end}) is empty"})
            continue
        window = Window(
            entity=entity, value=value, start=start, end=end, export_type=export_type, claim=None,
            mode="reexport", destination=request.destination,
        )  # fmt: skip
        owed = _owed_reexport(task, row, window)
        if owed is True:  # this very re-export failed before: once it succeeds, nothing is owed
            window = dataclasses.replace(window, mode="redrive")
        elif owed:
            notes.append({"entity": entity, "rows": 0, "error": owed})
            continue
        windows.append(window)
    return windows, notes


def _owed_reexport(task: TaskSpec, row: Mapping[str, Any], window: Window) -> bool | str | None:
    """True when ``window`` is the entity's failed re-export; why not to start it when another
    failed re-export is owed (the ledger keeps one per entity); None when none is owed."""
    if row.get("failed_mode") != "reexport":
        return None

    def place(url: str | None) -> str | None:  # "out/", "out" and "file://out" are one destination
        if not url:
            return None
        url = local_folder(url) or url  # as destinations.open_destination reads it
        return url.rstrip("/") or url

    failed = (row["failed_start"], row["failed_end"], row["failed_type"], place(row["failed_destination"]))
    if failed == (window.start, window.end, window.export_type, place(window.destination)):
        return True
    dest = row["failed_destination"]
    where = mask_url(dest) if dest else "the project's destination"
    retry = (  # the same re-export again: a retry, which redrive may have given up (max_attempts)
        f"sluicegate run {task.name} --entity {window.entity} --type {row['failed_type']}"
        f" --time-min {row['failed_start'].isoformat()} --time-max {row['failed_end'].isoformat()}"
        + (f" --destination {mask_url(dest)}" if dest else " --ignore-watermark")
    )
    return (
        f"entity {window.entity!r} still owes a failed {row['failed_type']} re-export of"
        f" [{row['failed_start'].isoformat()}, {row['failed_end'].isoformat()}) to {where}; run"
        f" `sluicegate redrive {task.name}`, or retry it with `{retry}`, before another re-export of it"
        f" (or drop it: `sluicegate watermark forget {task.name} {window.entity}`)"
    )


def _unclaimed(task: TaskSpec, wm: WatermarkStore, values: dict[str, Any]) -> list[WatermarkClaim]:
    """Each entity's watermark as an unclaimed row (for a dry run)."""
    rows = {w["entity"]: w for w in wm.entities(task.name)}
    return [
        WatermarkClaim(
            id=0, entity=e, attempts=0, token="",
            watermark=rows.get(e, {}).get("watermark"),
            pending_start=rows.get(e, {}).get("pending_start"),  # a failed or crashed window: redone
            pending_end=rows.get(e, {}).get("pending_end"),
            pending_type=rows.get(e, {}).get("pending_type"),
        )
        for e in values
    ]  # fmt: skip


def _watermark_window(
    task: TaskSpec, c: WatermarkClaim, value: Any, export_type: str, end: dt.datetime,
    cap: tuple[dt.datetime, str],
) -> Window | str:  # fmt: skip
    """The window of a claimed entity, or why it has none (``cap``: the capped end, and why)."""
    capped, why = cap
    if c.pending_end is not None and c.pending_start is not None:
        # An export of this window died before committing: redo exactly that window (same file).
        start, stop, etype = c.pending_start, c.pending_end, c.pending_type or export_type
    else:
        start, stop, etype = c.watermark or bootstrap_start(task, end), capped, export_type
    if start >= stop:
        if capped < end and start < end:
            return f"held back to {capped.isoformat()}: {why}"
        return (
            f"the window end {stop.isoformat()} is not after the watermark {start.isoformat()}; "
            "nothing exported, watermark unchanged"
        )
    return Window(
        entity=c.entity, value=value, start=start, end=stop, export_type=etype, claim=c, mode="watermark"
    )


def window_path(task: TaskSpec, window: Window) -> str:
    """The file path of a window (its times in UTC); the entity value is checked for paths."""
    return render_window_path(task, window.entity, window.export_type, window.start, window.end)


def render_window_path(
    task: TaskSpec, entity: str, export_type: str, start: dt.datetime, end: dt.datetime
) -> str:
    """Render an incremental task's path for one entity window."""
    named = {
        task.entity: entity,
        "type": export_type,
        "start": start.astimezone(UTC),
        "end": end.astimezone(UTC),
        "format": task.format,
        "ext": task.extension,
        "task": task.name,
    }
    return paths.render(task.path, named, checked=(task.entity,))


def redrive_windows(
    task: TaskSpec, wm: WatermarkStore, source: Any, *, lease: float, max_attempts: int
) -> tuple[list[Window], list[dict[str, Any]], str | None]:
    """Windows to retry: each recorded failure, with its original window and a bounded number of attempts."""
    failures = [w for w in wm.entities(task.name) if w["failed_end"] is not None]
    notes: list[dict[str, Any]] = []
    retry = []
    for f in failures:
        if f["attempts"] >= max_attempts or f["parked"]:  # the bound of partitions: max_attempts tries
            # still owed: a failure of the run (exit 1), so that a check of redrive's exit code sees it
            how = f"run 'sluicegate reset {task.name} --failed' to retry"
            error = f"gave up after {f['attempts']} attempts: {f['last_error']}; {how}"
            if f["parked"] or (f["held"] and not f["claimed"] and f["failed_mode"] != "reexport"):  # see park
                error = parked_error(task, f["attempts"], max_attempts)
            notes.append({"entity": f["entity"], "rows": 0, "error": error})
        else:
            retry.append(f)
    by_entity = {f["entity"]: f for f in retry}
    windows: list[Window] = [
        Window(
            entity=f["entity"], value=f["entity"], start=f["failed_start"], end=f["failed_end"],
            export_type=f["failed_type"], claim=None, mode="redrive", destination=f["failed_destination"],
        )  # a failed re-export: its own window and destination again
        for f in retry
        if f["failed_mode"] == "reexport"
    ]  # fmt: skip
    marked = [e for e, f in by_entity.items() if f["failed_mode"] == "watermark"]
    claims = wm.claim(task.name, marked, lease=lease) if marked else []
    notes += _held(marked, claims, lease)  # was skipped without a word
    for c in claims:
        window = _redrive_window(task, wm, by_entity[c.entity], c)
        if isinstance(window, Window):
            windows.append(window)
        else:
            notes.append(window)
    token = claims[0].token if claims else None
    if token and not any(w.claim for w in windows):
        wm.release(token)
        token = None
    return windows, notes, token


def _redrive_window(
    task: TaskSpec, wm: WatermarkStore, f: dict[str, Any], c: WatermarkClaim
) -> Window | dict[str, Any]:
    """The window redrive exports for the failed watermark window ``f`` claimed by ``c`` (its
    pending window when a run died in one), or a note when it was exported since (cleared)."""
    if c.pending_start is not None and c.pending_end is not None:  # its file may be in place
        f = {**f, "failed_start": c.pending_start, "failed_end": c.pending_end}
        f["failed_type"] = c.pending_type or f["failed_type"]
    start = max(f["failed_start"], c.watermark) if c.watermark else f["failed_start"]
    if start >= f["failed_end"]:
        wm.clear_failure(task.name, c.entity)
        return {"entity": c.entity, "rows": 0, "note": "the failed window was exported since; nothing new"}
    return Window(
        entity=c.entity,
        value=c.entity,  # the ledger's text; the driver reads it as the column's kind
        start=start,
        end=f["failed_end"],
        export_type=f["failed_type"],
        claim=c,
        mode="watermark",
    )


def take_over_redrive(
    task: TaskSpec, wm: WatermarkStore, entities: Collection[str], *, lease: float, max_attempts: int
) -> tuple[list[Window], list[dict[str, Any]], str | None]:
    """Redrive: take over one of ``entities`` (failed windows' it found held) whose claim is dead,
    to be exported alone (or parked), as :func:`take_over_window` does for a run."""
    taken = (
        wm.take_over(task.name, sorted(entities), lease=lease, max_attempts=max_attempts) if entities else []
    )
    if not taken:
        return [], [], None
    [c] = taken
    f = next((w for w in wm.entities(task.name) if w["entity"] == c.entity), {})
    window = _redrive_window(task, wm, f, c) if f.get("failed_mode") == "watermark" else {}
    if isinstance(window, Window) and c.attempts >= max_attempts:
        return [], [park(task, wm, c, window, max_attempts)], c.entity
    if isinstance(window, Window):
        return [window], [], c.entity
    wm.release(c.token)  # nothing to redo: given back (its pending window kept)
    return [], [window] if window else [], c.entity
