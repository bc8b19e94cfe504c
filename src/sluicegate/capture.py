"""Change capture: triggers, scans and explicit marks turn source changes into ledger versions.

Triggers (:mod:`sluicegate.capture_triggers`) do not touch the ledger row of a partition
directly. They append the changed rows' partition keys and 15-minute time bins to a small inbox
table in the same transaction as the data (``changes``: one bin per row; PostgreSQL's
``change_runs``: the first and last bin per keys and UTC day of a statement), and
:func:`absorb` folds the inbox into partition versions before each claim. This keeps the
partition's local day computed in one place (Python's zoneinfo, which SQLite lacks), and it keeps
concurrent ingest transactions from queueing on the same ledger row, as a trigger upserting it would
for the whole ingest transaction. No change is lost: the inbox row commits or rolls back with the data.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from . import capture_keys, capture_triggers, db
from .capture_aside import SetAside, warn_moved_zones
from .exceptions import BadPartitionValue, ConfigError, SluicegateError, UsageError, is_transient
from .keytext import coerce_value
from .ledger import Ledger
from .ledger.capture import BEYOND
from .partitions import (
    EARLIEST,
    LATEST,
    Partition,
    canonical_key,
    exportable,
    hour_of,
    make_partition,
    parse_period,
    plain_key,
    restore_partition,
    superseded,
    zone_of,
)
from .sources import ReadSpec, Source
from .sources.mariadb import from_wall_clock

if TYPE_CHECKING:
    from .drivers.partitioned import Task as TaskSpec

ABSORB_CHUNK = 20000
UTC = dt.UTC
log = logging.getLogger("sluicegate.capture")
BIN = dt.timedelta(minutes=15)  # the capture's time bin: every zone's hours begin on one
ONE_DAY = dt.timedelta(days=1)


class NoZone(ConfigError):
    """``zone_sql`` returned no zone for a key (a failing query raises a plain ConfigError)."""


class ZoneMap:
    """Resolves the zone of a partition from the task's fixed zone or its ``zone_sql`` (``source``)."""

    def __init__(self, task: TaskSpec, source: Source | None) -> None:
        self.task = task
        self.source = source
        self._map: dict[str, str | None] | None = None

    def zone(self, keys: Sequence[Any]) -> str:
        """The IANA zone for non-time key values ``keys``."""
        assert self.task.time is not None
        if self.task.time.zone:
            return self.task.time.zone
        if self._map is None:
            assert self.task.time.zone_sql and self.source is not None
            try:
                self._map = self.source.zones(self.task.time.zone_sql)
            except SluicegateError as exc:
                if is_transient(exc):
                    raise
                where = f"{self.task.folder / 'task.toml'} [time] zone_sql"
                raise ConfigError(f"{where}: the query failed: {exc}; fix the SQL") from exc
        if (zone := self._map.get(key := canonical_key(keys))) is None:  # no row, or NULL (was 'None')
            pairs = ", ".join(f"{k}={v}" for k, v in zip(self.task.keys, keys, strict=True))
            what = "NULL as the zone" if key in self._map else "no zone"
            raise NoZone(
                f"{self.task.folder / 'task.toml'} [time] zone_sql returned {what} for {pairs}; "
                "add its zone to the query's result"
            )
        zone_of(zone)
        return zone


def fold(
    task: TaskSpec,
    changes: Iterable[tuple[Sequence[Any], dt.datetime | None, dt.datetime | None]],
    zones: ZoneMap,
    wall: str | None = None,
) -> list[Partition]:
    """Map captured ``(keys, first bin, last bin)`` changes to distinct partitions.

    A change marks every partition from its first bin's to its last bin's (the same bin twice:
    one partition). ``wall``: the zone the bins are wall-clock times in (taken from a MariaDB
    DATETIME, see :func:`wall_zone`), else UTC.

    A change outside :data:`EARLIEST` to :data:`LATEST` (a row's time of ``infinity``, or in
    the year 9999), or with a NULL key value, has no partition sluicegate can export: it is
    logged as a warning and left out, so that it cannot stop every other change from being
    folded (it did: the fold failed, each run, and nothing was exported; a NULL key with a fixed
    zone was recorded exported with no file)."""
    seen, aside = dict[str, Partition](), SetAside(task, wall)
    for raw, first, last in changes:
        keys = tuple(plain_key(value) for value in raw)  # a time as its text: see sources.postgres
        if any(value is None for value in keys):  # the batch query's `=` would never read them
            aside.add(keys, "with a NULL key")
            continue
        if any(isinstance(value, Decimal) for value in keys):
            aside.add(keys, "with a number no float holds", remedy="use an integer or text key column")
            continue
        if not all(isinstance(value, str | int | float | dt.date) for value in keys):  # bytes
            aside.add(keys, "of a type no key holds", remedy="use an integer or text key column")
            continue
        if task.time is None:
            part = make_partition(task, keys, None, None)
            seen.setdefault(part.pkey, part)
            continue
        if first is None or last is None:  # MariaDB's bin of a zero date (2024-03-00) is NULL
            aside.add(keys, "at a NULL or zero time (0000-00-00)", remedy="fix their time")
            continue
        if first < EARLIEST or last > LATEST:
            edge = (
                f"before {EARLIEST.date().isoformat()}"
                if first < EARLIEST
                else f"after {LATEST.date().isoformat()}"
            )
            aside.add(keys, f"at a time {edge} UTC (or infinity)")
            continue
        try:  # a zone_sql query that fails raises: the changes stay in the inbox
            zone = zones.zone(keys)
        except (NoZone, BadPartitionValue) as exc:  # an orphan key, or a zone that is not IANA's
            aside.add(keys, f"({exc})", remedy=None, times=(first, last))
            continue
        # The bin was taken from (t - 1 µs) for time-ending tasks, so no shift here.
        if wall is not None:
            first = from_wall_clock(first.replace(tzinfo=None), wall)
            last = from_wall_clock(last.replace(tzinfo=None), wall)
        for period in _periods(first, last, zone_of(zone), task.time.grain):
            part = make_partition(task, keys, period, zone)
            seen.setdefault(part.pkey, part)
    aside.log()
    return list(seen.values())


def rezone(
    task: TaskSpec, ledger: Ledger, source: Source | None, chosen: Iterable[tuple[dict[str, Any], Any, Any]]
) -> int:
    """Mark each period of its zone now (``source`` for ``zone_sql``) holding part of a chosen
    ``(keys, start, end)`` cut in another, retiring a ``superseded`` hour (``reexport``); return how many."""
    zones, moved, grain = ZoneMap(task, source), dict[str, Partition](), task.time.grain if task.time else ""
    for keys, start, end in chosen:
        values = [keys[k] for k in task.key_names]
        try:
            part = restore_partition(task, values, zone := zones.zone(values[:-1]))
        except (NoZone, BadPartitionValue):  # no zone now: it keeps the one it was cut in
            continue
        if (part.pkey, part.start, part.end) != (canonical_key(values), start, end) and start and end:
            for period in _periods(start, end - dt.timedelta(microseconds=1), zone_of(zone), grain):
                new = make_partition(task, values[:-1], period, zone)  # a DST day may move its end alone
                moved.setdefault(new.pkey, new)
            moved.update(superseded(task, values, part, start, end))
    return ledger.partitions.mark(moved.values(), task)


def _periods(first: dt.datetime, last: dt.datetime, zone: dt.tzinfo, grain: str) -> Iterator[Any]:
    """The local periods (dates, or hours of the day) from ``first``'s to ``last``'s, in order.

    A run is recorded for one UTC day (hour) of a statement, so it spans at most three local
    periods; the one between its first's and last's holds changed rows unless it is shorter than
    the UTC day (a day whose clocks went forward), where it may be marked without need, which
    costs one export of unchanged rows and loses nothing. Local midnights are stepped over as
    instants, so a date a zone skipped (Pacific/Apia's 2011-12-30) is never made up.
    """
    instant, previous = first, None
    while instant <= last:
        local = instant.astimezone(zone)
        period: Any = local.date() if grain == "day" else hour_of(instant, zone)
        # An hour by its instant: aware times of one zone compare by wall clock (a fall-back
        # night has two 01:00s), and an hour around a change may span two offsets (Chatham).
        seen = period if grain == "day" else period.astimezone(UTC)
        if seen != previous:
            yield period
        if instant == last:  # one bin (every change on SQLite and MariaDB, and from scans): done
            return
        previous = seen
        if grain == "day":
            following = dt.datetime.combine(period + ONE_DAY, dt.time(), tzinfo=zone).astimezone(UTC)
        else:  # hours are stepped over a bin at a time: some zones' hours begin at :15, :30 or :45 UTC
            following = instant + BIN
        instant = following if following > instant else instant + BIN


def wall_zone(task: TaskSpec, source: Source, table: str | None, column: str | None) -> str | None:
    """The zone of the wall-clock times in ``table.column`` when the task names one
    (``[time] datetime_zone``) and the column is a MariaDB DATETIME; None when its times are UTC.
    With ``table`` None the column is the select's."""
    if task.time is None or task.time.datetime_zone is None or column is None:
        return None
    if table is None:
        spec = ReadSpec(select_sql=task.select_sql, folder=task.folder)
        zoneless = any(c.zoneless for c in source.describe(spec) if c.name == column)
    else:
        schema, _, name = table.rpartition(".")
        rows = source.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = "
            f"{'?' if schema else 'DATABASE()'} AND table_name = ? AND column_name = ?",
            [schema, name, column] if schema else [name, column],
        )
        zoneless = bool(rows) and str(rows[0][0]).lower() == "datetime"
    return task.time.datetime_zone if zoneless else None


def absorb(task: TaskSpec, ledger: Ledger, inbox: Ledger, source: Source) -> int:
    """Fold the task's captured changes into ledger versions; return partitions marked.

    ``inbox`` is the ledger-table access on the source database (the same object as
    ``ledger`` when they share a database). With two databases the ledger commits first,
    then the inbox delete: a crash between them re-marks the same partitions, which costs
    at most an export whose unchanged bytes are detected by checksum.
    """
    if inbox is not ledger:
        # The inbox tables in the source database are upgraded with the ledger's (by the owner's
        # first run after an upgrade): an inbox of schema 10 lacks change_runs, which the fold reads.
        inbox.ensure_schema()
    _warn_unless_installed(task, inbox, source)
    zones = ZoneMap(task, source)
    wall = wall_zone(task, source, task.capture.table, task.capture.time)
    total = 0
    while True:
        with inbox.core.transaction() as cur:
            changes = inbox.capture.take_changes(task.name, limit=ABSORB_CHUNK, cur=cur)
            parts = fold(task, capture_keys.of_keys(task, changes), zones, wall)
            warn_moved_zones(task, ledger, parts, cur if inbox is ledger else None)
            if parts and inbox is ledger:
                ledger.partitions.mark(parts, task, cur=cur)
            elif parts:
                ledger.partitions.mark(parts, task)
        total += len(parts)
        if len(changes) < ABSORB_CHUNK:
            return total


def _warn_unless_installed(task: TaskSpec, inbox: Ledger, source: Source) -> None:
    """Say so when the task's triggers are missing (never installed, the table made again) or
    were made for another boundary, time or keys: a run took nothing from the inbox, exit 0, and
    no one heard. MariaDB shows triggers only to a role with TRIGGER on the table: not asked."""
    if source.dialect is db.MARIADB:
        return
    try:
        missing = capture_triggers.missing_triggers(task, source, inbox.schema)
    except SluicegateError:  # the catalog out of reach: the run goes on, as it did before it asked
        return
    if missing:
        log.warning(
            "task %s: capture triggers %s are not installed on %s as the task is now set up, so its"
            " changes go unseen; run 'sluicegate install %s'",
            task.name, ", ".join(missing), task.capture.table, task.name,
        )  # fmt: skip


def peek(task: TaskSpec, inbox: Ledger, source: Source, *, limit: int = ABSORB_CHUNK) -> list[Partition]:
    """The partitions the inbox's first ``limit`` changes would mark, leaving them in the inbox."""
    wall = wall_zone(task, source, task.capture.table, task.capture.time)
    return fold(task, capture_keys.peek_changes(task, inbox, limit), ZoneMap(task, source), wall)


def scan(task: TaskSpec, ledger: Ledger, source: Source) -> int:
    """Mark partitions whose rows have a cursor newer than the last scan minus the overlap."""
    cap = task.capture
    assert cap.table and cap.cursor
    dq = source.dialect.quote

    def q(name: str) -> str:  # qualified: SQLite reads an unqualified quoted name that is no column as text
        return f"c.{dq(name)}"

    table = f"{dq(cap.table)} AS c"
    high_water = source.execute(f"SELECT max({q(cap.cursor)}) FROM {table}")[0][0]
    if high_water is None:
        return 0
    try:
        high = _as_time(high_water)
    except ValueError:  # an id, a TIME: str() of it is no ISO 8601 time
        raise ConfigError(
            f"{task.folder / 'task.toml'} [capture] cursor: {cap.cursor!r} holds {high_water!r}, which is"
            " not a time; name a column holding the time each row was written, such as ingested_at"
        ) from None
    last = ledger.capture.get_scan(task.name)
    since = _as_time(last) - dt.timedelta(seconds=cap.overlap) if last else None
    cols = [q(cap.keys[k]) for k in task.keys]
    time_ending = bool(task.time and task.time.boundary == "end")
    if task.time:
        assert cap.time
        cols.append(source.dialect.bin_expr(q(cap.time), time_ending))
    exact = source.dialect.exact_copies(cols[: len(task.keys)])
    select = f"SELECT DISTINCT {', '.join(cols + exact) or '1'} FROM {table}"
    params: list[Any] = []
    if since is not None:
        if source.dialect is db.SQLITE:
            select += f" WHERE julianday({q(cap.cursor)}) > julianday(?)"
            params.append(since.isoformat())
        else:
            select += f" WHERE {q(cap.cursor)} > %s"
            params.append(since)
    rows = [r[: len(cols)] for r in source.execute(select, params)]
    changes = _one_bin_each(rows, len(task.keys), timed=task.time is not None)
    parts = fold(task, changes, ZoneMap(task, source), wall_zone(task, source, cap.table, cap.time))
    warn_moved_zones(task, ledger, parts)
    ledger.partitions.mark(parts, task)
    ledger.capture.set_scan(task.name, high)
    return len(parts)


BACKFILL_STEP = dt.timedelta(days=7)  # the time range one backfill query covers


def backfill(
    task: TaskSpec,
    ledger: Ledger,
    source: Source,
    *,
    time_min: dt.datetime | None = None,
    time_max: dt.datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Mark every partition that has rows in the task's select (optionally within a time range).

    For rows that were there before the capture triggers were installed, which the triggers
    never see. One pass over the select, a week of rows per query, so memory stays bounded;
    ``progress(done, total)`` is called after each week. Returns the partitions marked.
    """
    q = source.dialect.quote
    keys = [f"q.{q(k)}" for k in task.keys]
    exact = "".join(f", {c}" for c in source.dialect.exact_copies(keys))  # cut off each row below
    select = f"SELECT DISTINCT {', '.join(keys) or '1'}"
    zones = ZoneMap(task, source)
    if task.time is None:
        rows = source.execute(f"{select}{exact} FROM ({task.select_sql}) AS q")
        keyed = [(r[: len(keys)], None, None) for r in rows]
        return ledger.partitions.mark(fold(task, keyed, zones), task)
    column = f"q.{q(task.time.column)}"
    lo, hi = _time_range(task, source, column, time_min, time_max)
    if lo is None or hi is None:
        return 0
    bin_sql = source.dialect.bin_expr(column, task.time.boundary == "end")
    wall = wall_zone(task, source, None, task.time.column)
    weeks = max(1, -(-(hi - lo) // BACKFILL_STEP))
    marked: set[str] = set()  # a local day across two weeks' chunks is marked (and counted) once
    for week in range(weeks):
        start, end = lo + week * BACKFILL_STEP, min(lo + (week + 1) * BACKFILL_STEP, hi)
        rows = source.execute(
            f"{select}, {bin_sql}{exact} FROM ({task.select_sql}) AS q WHERE {_between(source, column)}",
            _bounds(source, start, end),
        )
        changes = _one_bin_each([r[: len(keys) + 1] for r in rows], len(task.keys), timed=True)
        new = [p for p in fold(task, changes, zones, wall) if p.pkey not in marked]
        ledger.partitions.mark(new, task)
        marked.update(p.pkey for p in new)
        if progress is not None:
            progress(week + 1, weeks)
    return len(marked)


def _time_range(
    task: TaskSpec, source: Source, column: str, time_min: dt.datetime | None, time_max: dt.datetime | None
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The first and last row times of the select, within the bounds given (the end exclusive)."""
    sqlite = source.dialect is db.SQLITE
    value = f"julianday({column})" if sqlite else column
    # Rows at times no partition can have (outside EARLIEST to LATEST, or infinity) are counted
    # and left out: a max() of 'infinity' cannot be read back, and the backfill failed.
    inside = f"{_between(source, column)} AND {column} IS NOT NULL"
    first, last, outside = source.execute(
        f"SELECT min(CASE WHEN {inside} THEN {value} END), max(CASE WHEN {inside} THEN {value} END),"
        f" sum(CASE WHEN {column} IS NULL OR {inside} THEN 0 ELSE 1 END) FROM ({task.select_sql}) AS q",
        [*_bounds(source, EARLIEST, LATEST)] * 3,
    )[0]
    if outside:
        log.warning(
            "task %s: %s row(s) at a time before %s or after %s UTC (or infinity, a zero date) have no "
            "partition and are not marked; fix their time",
            task.name, outside, EARLIEST.date().isoformat(), LATEST.date().isoformat(),
        )  # fmt: skip
    if first is None:
        return None, None
    # A julianday is a double: about 40 µs apart today, so the row times it gives back may lie a
    # little either side of the real first and last rows. Widen the range by more than that
    # (only rows inside it are marked); once, the rows at the very last time were left out.
    slack = dt.timedelta(milliseconds=1) if sqlite else dt.timedelta(0)
    if sqlite:
        first, last = _from_julian(first), _from_julian(last)
    lo = max(_as_time(first) - slack, time_min) if time_min else _as_time(first) - slack
    hi = _as_time(last) + slack + dt.timedelta(microseconds=1)
    return lo, (min(hi, time_max) if time_max else hi)


def _from_julian(day: float) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(days=float(day) - 2440587.5)


def _between(source: Source, column: str) -> str:
    if source.dialect is db.SQLITE:
        return f"julianday({column}) >= julianday(?) AND julianday({column}) < julianday(?)"
    valid = f"TIMESTAMPDIFF(SECOND, '1970-01-01', {column}) IS NOT NULL"  # not a zero date (2024-03-00)
    return f"{column} >= %s AND {column} < %s" + (f" AND {valid}" if source.dialect is db.MARIADB else "")


def _bounds(source: Source, start: dt.datetime, end: dt.datetime) -> list[Any]:
    return [start.isoformat(), end.isoformat()] if source.dialect is db.SQLITE else [start, end]


def _as_time(value: Any) -> dt.datetime:
    parsed = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _one_bin_each(
    rows: Iterable[Sequence[Any]], nkeys: int, *, timed: bool
) -> list[tuple[Sequence[Any], dt.datetime | None, dt.datetime | None]]:
    """Changes of one bin each (its first and last bin the same) from rows of the key values
    followed, when ``timed``, by the bin (scans and backfills read rows, not runs)."""
    changes = []
    for row in rows:
        bin_start = _bin_time(row[nkeys]) if timed else None
        changes.append((row[:nkeys], bin_start, bin_start))
    return changes


def _bin_time(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    try:
        return dt.datetime.fromtimestamp(int(value), UTC)
    except (OverflowError, ValueError, OSError):  # beyond datetime's years: fold sets it aside
        return BEYOND


def typed_keys(task: TaskSpec, source: Source, assignments: Mapping[str, Any]) -> dict[str, Any]:
    """Command-line key values (of the non-time keys given) as the select's key columns hold them:
    `7` stays text for a text column (as an integer it was a second partition beside the one the
    triggers mark); `mark`, and `reexport`'s filter, where `1.50` was not the float key 1.5."""
    from .drivers.partitioned import read_spec

    texts = [k for k in task.keys if isinstance(assignments.get(k), str)]
    try:
        kinds = {c.name.lower(): c.kind for c in source.describe(read_spec(task))} if texts else {}
    except SluicegateError:  # the select cannot be described now: `run` will say why
        kinds = {}

    def typed(key: str) -> Any:
        text, kind = assignments[key], kinds.get(key.lower())
        if key not in texts or kind == "text":
            return text
        if kind in ("float", "decimal"):  # `1.50` is the key 1.5, as the triggers record it
            try:
                return plain_key(Decimal(text.strip()))
            except ArithmeticError:
                return text
        return coerce_value(text, unsigned=kind == "int" and source.dialect is db.MARIADB)

    return {k: typed(k) for k in task.keys if k in assignments}


def mark(task: TaskSpec, ledger: Ledger, source: Source, assignments: Mapping[str, Any]) -> int:
    """Mark one partition changed from explicit key values (``sluicegate mark``)."""
    missing = [k for k in task.key_names if k not in assignments]
    if missing:
        raise UsageError(
            f"task {task.name!r} needs a value for {missing[0]}; give {'=... '.join(task.key_names)}=..."
        )
    keys = tuple(typed_keys(task, source, assignments).values())  # every key: checked above
    inexact = [f"{k}={v}" for k, v in zip(task.keys, keys, strict=True) if isinstance(v, Decimal)]
    if inexact:
        raise UsageError(f"{inexact[0]} has more digits than a float holds: no partition can have it")
    if task.time is None:
        return ledger.partitions.mark([make_partition(task, keys, None, None)], task, strict=True)
    zone = ZoneMap(task, source).zone(keys)
    raw = assignments[task.time.name]
    period = raw if isinstance(raw, dt.date) else parse_period(str(raw), task.time, zone, strict=True)
    part = make_partition(task, keys, exportable(period, task.time), zone)
    return ledger.partitions.mark([part], task, strict=True)
