"""Incremental (watermark) exports per entity: export what is new since the last durable export.

Each (task, entity) has one watermark: the end of the last window that was durably exported.
A run exports the half-open window ``[watermark, end)`` for every entity, one file per entity
window, and moves the watermark to ``end`` only after the file is published, with a
compare-and-set that never moves it backwards. A row whose cursor equals a boundary belongs
to exactly one window. Failed windows are recorded for ``redrive``; a re-export with an
explicit window (``--ignore-watermark``) or to another destination never touches watermarks.

Late commits: a row may commit after an export with a cursor older than that export's end.

* PostgreSQL: the window end is capped at the start of the oldest transaction still open on
  the source database (other than sluicegate's own), so rows such a transaction writes with
  a cursor from its own clock (``DEFAULT now()``) fall into a later window.
* SQLite: there is one writer at a time; when a write transaction is open, watermark
  exports are held back for this run (nothing exported, nothing moved) and go out next run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import db
from .config import EXPORT_TYPES, IncrementalSpec, TaskSpec
from .exceptions import ConfigError, UsageError
from .ledger import Claim, ExportResult, WatermarkClaim, WatermarkLedger
from .masking import mask_url
from .partitions import Partition, coerce_value, render_window_path, zone_of

UTC = dt.UTC
BEGINNING = dt.datetime(1970, 1, 1, tzinfo=UTC)
REQUEST_FIELDS = (
    "endDateTime",
    "startDateTime",
    "exportType",
    "ignoreLastExportTime",
    "studyWhitelist",
    "tag",
)


@dataclass(frozen=True, kw_only=True)
class ExportRequest:
    """What an incremental run exports (from the CLI, a request message or a Python call)."""

    export_type: str | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    ignore_watermark: bool = False
    entities: tuple[str, ...] = ()
    tag: str | None = None
    destination: str | None = None

    @property
    def touches_watermarks(self) -> bool:
        """False for re-exports (explicit window, or another destination)."""
        return not (self.ignore_watermark or self.destination)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the destination URL is masked)."""
        out = dataclasses.asdict(self)
        if self.destination:
            out["destination"] = mask_url(self.destination)
        return out


def _parse_time(value: Any, field: str) -> dt.datetime:
    if not isinstance(value, str):
        raise UsageError(f"{field}: {value!r} is not an ISO 8601 date-time such as 2016-10-04T23:59:59Z")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"{field}: {value!r} is not an ISO 8601 date-time such as 2016-10-04T23:59:59Z"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _parse_bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"  # the documented re-export message writes "true" as a string
    raise UsageError(f"{field}: {value!r} is not true or false")


def parse_request(data: Mapping[str, Any]) -> ExportRequest:
    """Validate a Bridge Exporter request message (v1 fields and rules).

    One deliberate difference: an ``exportType`` beside an explicit ``startDateTime`` is
    accepted when ``ignoreLastExportTime`` is true (the original's own documented
    re-export message does this); the type then only labels the files.
    """
    if not isinstance(data, Mapping):
        raise UsageError("the request must be a JSON object")
    unknown = sorted(set(data) - set(REQUEST_FIELDS))
    if unknown:
        raise UsageError(
            f"request field {unknown[0]!r} is not supported; use only {', '.join(REQUEST_FIELDS)}"
        )
    ignore = _parse_bool(data.get("ignoreLastExportTime", False), "ignoreLastExportTime")
    export_type = data.get("exportType")
    if export_type is not None:
        if not isinstance(export_type, str) or export_type.lower() not in EXPORT_TYPES:
            raise UsageError(f"exportType: {export_type!r} is not valid; use DAILY, HOURLY or INSTANT")
        export_type = export_type.lower()
    start = (
        _parse_time(data["startDateTime"], "startDateTime") if data.get("startDateTime") is not None else None
    )
    end = _parse_time(data["endDateTime"], "endDateTime") if data.get("endDateTime") is not None else None
    whitelist = data.get("studyWhitelist")
    if whitelist is not None and (not isinstance(whitelist, list) or not whitelist):
        raise UsageError(
            "studyWhitelist: give a non-empty list of study ids, or leave it out for all studies"
        )
    if start is not None:
        if not ignore:
            raise UsageError(
                "startDateTime requires ignoreLastExportTime=true (a re-export of an explicit window)"
            )
        if end is None:
            raise UsageError("startDateTime requires endDateTime")
        if start >= end:
            raise UsageError(
                f"startDateTime {start.isoformat()} must be before endDateTime {end.isoformat()}"
            )
    elif ignore:
        raise UsageError(
            "ignoreLastExportTime=true needs startDateTime and endDateTime: the window to re-export"
        )
    if export_type is None and start is None:
        raise UsageError(
            "give exportType (DAILY, HOURLY or INSTANT), or startDateTime with ignoreLastExportTime=true"
        )
    if export_type in ("daily", "hourly") and end is None:
        raise UsageError(f"{export_type.upper()} exports require endDateTime")
    if export_type == "instant" and end is not None:
        raise UsageError("INSTANT exports must not have endDateTime (the end is now minus the safety margin)")
    if export_type in ("instant", "hourly") and not whitelist:
        raise UsageError(f"{export_type.upper()} exports require studyWhitelist")
    tag = data.get("tag")
    return ExportRequest(
        export_type=export_type or "daily",
        start=start,
        end=end,
        ignore_watermark=ignore,
        entities=tuple(str(s) for s in whitelist or ()),
        tag=None if tag is None else str(tag),
    )


def load_request(text: str) -> ExportRequest:
    """Parse a request message from JSON text."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"the request is not valid JSON: {exc}") from None
    return parse_request(data)


# ---------------------------------------------------------------------------- windows


def type_end(export_type: str, now: dt.datetime, spec: IncrementalSpec) -> dt.datetime:
    """The window end of an export type: start of today / this hour in the zone, or now minus margin."""
    if export_type == "instant":
        return now - dt.timedelta(seconds=spec.safety_margin)
    local = now.astimezone(zone_of(spec.zone))
    if export_type == "hourly":
        return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    midnight = dt.datetime.combine(local.date(), dt.time(), tzinfo=zone_of(spec.zone))
    return midnight.astimezone(UTC)


def bootstrap_start(spec: IncrementalSpec, end: dt.datetime) -> dt.datetime:
    """Where an entity without a watermark starts: the day before ``end``, the beginning, or a time."""
    if spec.bootstrap == "beginning":
        return BEGINNING
    if spec.bootstrap == "yesterday":
        local = end.astimezone(zone_of(spec.zone))
        day = local.date() - dt.timedelta(days=1)
        return dt.datetime.combine(day, dt.time(), tzinfo=zone_of(spec.zone)).astimezone(UTC)
    parsed = dt.datetime.fromisoformat(spec.bootstrap)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def commit_horizon(source: Any) -> tuple[dt.datetime | None, str | None]:
    """How far back a not-yet-committed row may still land: ``(cap, None)`` or ``(None, reason)``.

    PostgreSQL: the start of the oldest open transaction on the source database, other than
    sluicegate's own sessions (None when there is none). SQLite: a reason when a write
    transaction is open right now.
    """
    if source.dialect is db.POSTGRESQL:
        rows = source.execute(
            "SELECT min(xact_start) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL AND application_name <> 'sluicegate' "
            "AND backend_type = 'client backend'"
        )
        return rows[0][0], None
    probe = sqlite3.connect(db.sqlite_path(source.url), timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
    except sqlite3.OperationalError:
        return None, "a write transaction is open on the SQLite source; held back until it ends"
    finally:
        probe.close()
    return None, None


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


class WindowSink:
    """Commits and failures of incremental jobs go to the watermark table."""

    def __init__(
        self, task: TaskSpec, wm: WatermarkLedger, windows: Mapping[int, Window], summary: Any
    ) -> None:
        self.task = task
        self.wm = wm
        self.windows = windows
        self.summary = summary

    def commit(self, results: Sequence[ExportResult]) -> list[bool]:
        """Advance watermarks (or clear a redriven re-export's failure) after durable publishing."""
        out = []
        for result in results:
            window = self.windows[result.claim.id]
            if window.claim is not None:
                done = self.wm.commit(window.claim, end=window.end, rows=result.rows, path=result.path)
            else:
                if window.mode == "redrive":
                    self.wm.clear_failure(self.task, window.entity)
                done = True
            out.append(done)
            self._entry(window, rows=result.rows, file=result.path, ok=done)
        return out

    def fail(self, claim: Claim, exc: BaseException) -> None:
        """Record the failed window; the watermark does not move."""
        window = self.windows[claim.id]
        self.wm.fail(
            self.task,
            window.entity,
            token=window.claim.token if window.claim else None,
            error=str(exc),
            start=window.start,
            end=window.end,
            export_type=window.export_type,
            mode="watermark" if window.claim else "reexport",
            destination=window.destination,
        )
        self._entry(window, rows=0, file=None, ok=False, error=str(exc))

    def renew(self, token: str, lease: float) -> int:
        """Extend the watermark claims of a long export."""
        return self.wm.renew(token, lease=lease)

    def release(self, token: str) -> int:
        """Give back unfinished watermark claims."""
        return self.wm.release(token)

    def _entry(
        self, window: Window, *, rows: int, file: str | None, ok: bool, error: str | None = None
    ) -> None:
        self.summary.entities.append(
            {
                "entity": window.entity,
                "start": window.start.isoformat(),
                "end": window.end.isoformat(),
                "type": window.export_type,
                "rows": rows,
                "file": file,
                "watermark_moved": bool(ok and window.claim is not None),
                **({"error": error} if error else {}),
            }
        )


def discover_entities(task: TaskSpec, source: Any) -> list[Any]:
    """Every entity present in the source, with one query."""
    assert task.incremental is not None
    q = source.dialect.quote
    rows = source.execute(
        f"SELECT DISTINCT q.{q(task.incremental.entity)} FROM ({task.select_sql}) AS q "
        f"WHERE q.{q(task.incremental.entity)} IS NOT NULL"
    )
    return sorted((r[0] for r in rows), key=str)


def plan_windows(
    task: TaskSpec,
    request: ExportRequest,
    source: Any,
    wm: WatermarkLedger,
    *,
    now: dt.datetime,
    lease: float,
    claim: bool = True,
) -> tuple[list[Window], list[dict[str, Any]], str | None]:
    """Decide each entity's window; return the windows to export, notes on the others, the claim token."""
    spec = task.incremental
    assert spec is not None
    export_type = request.export_type or spec.export_type
    end = request.end or type_end(export_type, now, spec)
    values = _entity_values(task, request, source)
    notes: list[dict[str, Any]] = []
    if not request.touches_watermarks:
        windows = []
        current = {w["entity"]: w["watermark"] for w in wm.list(task)}
        for entity, value in values.items():
            start = request.start or current.get(entity) or bootstrap_start(spec, end)
            if start >= end:
                notes.append({"entity": entity, "rows": 0, "note": f"window [{start}, {end}) is empty"})
                continue
            windows.append(
                Window(
                    entity=entity,
                    value=value,
                    start=start,
                    end=end,
                    export_type=export_type,
                    claim=None,
                    mode="reexport",
                )
            )
        return windows, notes, None
    horizon, held = commit_horizon(source)
    if held:
        return [], [{"entity": e, "rows": 0, "note": held} for e in values], None
    # A row an open transaction writes may carry a cursor up to safety_margin before that
    # transaction began (a client's clock, a batch time): the window stops short of it.
    capped = min(end, horizon - dt.timedelta(seconds=spec.safety_margin)) if horizon else end
    if not claim:  # dry run: read watermarks without claiming
        rows = {w["entity"]: w for w in wm.list(task)}
        claims = [
            WatermarkClaim(
                id=0,
                entity=e,
                watermark=rows.get(e, {}).get("watermark"),
                pending_start=None,
                pending_end=None,
                pending_type=None,
                attempts=0,
                token="",
            )
            for e in values
        ]
    else:
        wm.ensure(task, list(values))
        claims = wm.claim(task, list(values), lease=lease)
    held_by_others = set(values) - {c.entity for c in claims}
    notes += [
        {"entity": e, "rows": 0, "note": "another export holds this entity; nothing exported"}
        for e in sorted(held_by_others)
    ]
    windows = []
    for c in claims:
        if c.pending_end is not None and c.pending_start is not None:
            # An export of this window died before committing: redo exactly that window (same file).
            start, stop, etype = c.pending_start, c.pending_end, c.pending_type or export_type
        else:
            start, stop, etype = c.watermark or bootstrap_start(spec, end), capped, export_type
        if start >= stop:
            reason = (
                f"the window end {stop.isoformat()} is not after the watermark {start.isoformat()}; "
                "nothing exported, watermark unchanged"
            )
            if capped < end and start < end:
                reason = f"held back to {capped.isoformat()}: a transaction that began then is still open"
            notes.append({"entity": c.entity, "rows": 0, "note": reason})
            if claim:
                wm.release_one(c)
            continue
        windows.append(
            Window(
                entity=c.entity,
                value=values[c.entity],
                start=start,
                end=stop,
                export_type=etype,
                claim=c,
                mode="watermark",
            )
        )
    token = claims[0].token if claims and claim else None
    return windows, notes, token


def _entity_values(task: TaskSpec, request: ExportRequest, source: Any) -> dict[str, Any]:
    spec = task.incremental
    assert spec is not None
    chosen = request.entities or spec.entities
    if chosen:
        return {str(e): coerce_value(str(e)) if isinstance(e, str) else e for e in chosen}
    found = discover_entities(task, source)
    if not found:
        raise ConfigError(f"{task.folder / 'select.sql'} returned no entities; nothing to export")
    return {str(v): v for v in found}


def window_partition(task: TaskSpec, window: Window) -> Partition:
    """The read-path partition of a window: the entity and its UTC cursor range."""
    return Partition(
        task=task.name,
        values=(window.value, window.start),
        zone=task.incremental.zone if task.incremental else None,
        start=window.start,
        end=window.end,
    )


def window_path(task: TaskSpec, window: Window) -> str:
    """The file path of a window."""
    return render_window_path(task, window.entity, window.export_type, window.start, window.end)


def window_claim(task: TaskSpec, index: int, window: Window) -> Claim:
    """A claim-shaped handle for the export engine; files of windows are always written."""
    return Claim(
        id=index,
        task=task.name,
        pkey=window.entity,
        keys={"entity": window.entity},
        zone=None,
        version=0,
        attempts=0,
        forced=True,
        exported_version=0,
        token=window.claim.token if window.claim else "",
        prev_path=None,
        prev_bytes=None,
        prev_checksum=None,
    )


def redrive_windows(
    task: TaskSpec, wm: WatermarkLedger, source: Any, *, lease: float, max_attempts: int
) -> tuple[list[Window], list[dict[str, Any]], str | None]:
    """Windows to retry: each recorded failure, with its original window and a bounded number of attempts."""
    failures = [w for w in wm.list(task) if w["failed_end"] is not None]
    notes: list[dict[str, Any]] = []
    retry = []
    for f in failures:
        if f["attempts"] >= max_attempts:  # the same bound as partitions: max_attempts tries in all
            notes.append(
                {
                    "entity": f["entity"],
                    "rows": 0,
                    "note": f"gave up after {f['attempts']} attempts: {f['last_error']}",
                }
            )
        else:
            retry.append(f)
    windows: list[Window] = []
    by_entity = {f["entity"]: f for f in retry}
    reexports = [f for f in retry if f["failed_mode"] == "reexport"]
    for f in reexports:
        windows.append(
            Window(
                entity=f["entity"],
                value=coerce_value(f["entity"]),
                start=f["failed_start"],
                end=f["failed_end"],
                export_type=f["failed_type"],
                claim=None,
                mode="redrive",
                destination=f["failed_destination"],
            )
        )
    marked = [e for e, f in by_entity.items() if f["failed_mode"] == "watermark"]
    claims = wm.claim(task, marked, lease=lease) if marked else []
    for c in claims:
        f = by_entity[c.entity]
        start = max(f["failed_start"], c.watermark) if c.watermark else f["failed_start"]
        if start >= f["failed_end"]:
            wm.clear_failure(task, c.entity)
            notes.append(
                {"entity": c.entity, "rows": 0, "note": "the failed window was exported since; nothing new"}
            )
            continue
        windows.append(
            Window(
                entity=c.entity,
                value=coerce_value(c.entity),
                start=start,
                end=f["failed_end"],
                export_type=f["failed_type"],
                claim=c,
                mode="watermark",
            )
        )
    token = claims[0].token if claims else None
    if token and not any(w.claim for w in windows):
        wm.release(token)
        token = None
    return windows, notes, token
