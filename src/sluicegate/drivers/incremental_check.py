"""Incremental tasks against the live source: what ``check`` reports, and what a run refuses
before it claims anything (exit 2) rather than failing every entity's window (exit 1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import db
from ..exceptions import SluicegateError
from ..sources import Column, Source
from ..sources.sqlite import unreadable_times

if TYPE_CHECKING:
    from .incremental import Task

CURSOR_KINDS = ("timestamptz", "timestamp", "date")


def check(task: Task, source: Source) -> list[str]:
    """Problems of an incremental task against the live source."""
    from .incremental import read_spec

    try:
        described = source.describe(read_spec(task))
    except SluicegateError as exc:
        return [str(exc)]
    problems = missing_columns(task, {c.name for c in described})
    problems += entity_problems(task, described) + cursor_problems(task, described, source)
    problems += horizon_problems(task, source)
    if task.cursor in {c.name for c in described}:
        problems += null_cursors(task, source)
    problems += naive_cursor_zone(task, described, source)
    if task.cursor in {c.name for c in described} and source.dialect is db.SQLITE:
        problems += unreadable_cursors(task, source) + sqlite_cursor_forms(task, source)
    return problems


def null_cursors(task: Task, source: Source) -> list[str]:
    """Rows whose cursor is NULL: no window ``[start, end)`` holds them, so no run exports them
    and none says so; select.sql should give them a time or leave them out, as it means."""
    cursor = f"q.{source.dialect.quote(task.cursor)}"
    query = f"SELECT count(*) FROM ({task.select_sql.rstrip().rstrip(';')}) AS q WHERE {cursor} IS NULL"
    if not (count := source.execute(query)[0][0]):
        return []
    return [
        f"{task.folder / 'select.sql'}: {count} row(s) have a NULL {task.cursor}, which no window holds,"
        f" so they are never exported; give them a time (COALESCE({task.cursor}, ...) AS {task.cursor})"
        f" or leave them out (WHERE {task.cursor} IS NOT NULL)"
    ]


def horizon_problems(task: Task, source: Source) -> list[str]:
    """PostgreSQL: a source role that cannot see other roles' ``xact_start`` (neither superuser nor
    in ``pg_read_all_stats``) caps no window for their open transactions, and a row one of them
    writes lands below a watermark that has passed it, never exported; ``check`` says so."""
    if source.dialect is not db.POSTGRESQL:
        return []
    if source.execute("SELECT pg_has_role('pg_read_all_stats', 'USAGE')")[0][0]:
        return []
    return [
        f"task {task.name}: the source role cannot see other roles' open transactions, so the late-commit"
        " cap misses them and their rows can fall below the watermark, never exported; grant it"
        " pg_read_all_stats (see `sluicegate grants`)"
    ]


def unreadable_cursors(task: Task, source: Source, *, first: bool = False) -> list[str]:
    """SQLite: rows whose cursor is set but is no time julianday() reads as such: text it cannot
    read (ISO 8601's basic form 20260101T000000Z, an offset +0100), or an integer (or text with
    no date in it), which it reads as a Julian day number, not Unix time. They are in no window
    the writer meant, and no run says so. A REAL is a Julian day, as SQLite documents.

    ``first``: judge the first row with a cursor only (a run's cheap probe, before it claims).
    """
    return unreadable_times(source, task.folder, task.select_sql, task.cursor, first=first)


def missing_columns(task: Task, names: set[str]) -> list[str]:
    """The entity, cursor, order_by and primary_key columns the select does not return (``names``)."""
    wanted = [("entity", task.entity), ("cursor", task.cursor)]
    wanted += [("order_by", c) for c in task.order_by] + [("primary_key", c) for c in task.primary_key]
    return [
        f"{task.folder / 'task.toml'} {field}: {name!r} is not a column of select.sql's result"
        for field, name in wanted
        if name not in names
    ]


# PostgreSQL types whose values cannot name an entity: no equality a DISTINCT can use (json, xml,
# the geometric types: "could not identify an equality operator"), or read as a dict (jsonb).
NO_ENTITY_TYPES = frozenset(
    ("json", "jsonb", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle")
)


def entity_problems(task: Task, described: list[Column]) -> list[str]:
    """PostgreSQL: an entity column of json, xml or a geometric type (no '=': the entities'
    DISTINCT fails), jsonb or an array (read as dicts and lists, which name no entity): every run
    failed, with a traceback. (A domain over one of them is not looked through.)"""
    column = next((c for c in described if c.name == task.entity), None)
    shown = column.pg_type if column is not None and column.pg_type else ""
    if shown not in NO_ENTITY_TYPES and not shown.endswith("]"):
        return []
    name = task.entity if task.entity == task.entity.lower() else db.POSTGRESQL.quote_name(task.entity)
    return [
        f"{task.folder / 'task.toml'} entity: column {task.entity!r} is {shown}, whose values cannot name"
        f" an entity; cast it to text in select.sql ({name}::text AS {name})"
    ]


def cursor_problems(task: Task, described: list[Column], source: Source, *, probe: bool = False) -> list[str]:
    """A cursor that is not a time: windows compare it with times, so every window fails (or,
    on SQLite, an integer is read as a Julian day number and no window holds its row).

    ``probe``: on SQLite, look at the first row's cursor (``check`` counts every row instead).
    """
    toml = task.folder / "task.toml"
    cursor = next((c for c in described if c.name == task.cursor), None)
    if cursor is None:
        return []
    if cursor.kind not in CURSOR_KINDS:  # SQLite reports every cursor as timestamptz
        return [
            f"{toml} cursor: column {task.cursor!r} is {cursor.kind}, not a time; windows compare it "
            "with times, so cast it in select.sql (to timestamptz on PostgreSQL, for example)"
        ]
    if not probe or source.dialect is not db.SQLITE:
        return []
    return unreadable_cursors(task, source, first=True)


# The database's TimeZone, and whether it was UTC all of the past year (whatever its spelling:
# 'utc', 'Etc/Zulu', 'GMT0', '+00:00'; a list of names took those for other zones).
_ZONE = (
    "SELECT s.reset_val, (SELECT bool_and(t AT TIME ZONE s.reset_val = t AT TIME ZONE 'UTC')"
    " FROM generate_series(now() - interval '1 year', now(), interval '1 week') AS t)"
    " FROM pg_catalog.pg_settings AS s WHERE s.name = 'TimeZone'"
)


def naive_cursor_zone(task: Task, described: list[Column], source: Source) -> list[str]:
    """PostgreSQL: a ``timestamp`` cursor (without time zone) is read as UTC. In a database whose
    TimeZone is another zone a writer's ``now()`` stores that zone's wall-clock time, hours off:
    west of UTC its rows fall below an instant window's watermark and are never exported."""
    cursor = next((c for c in described if c.name == task.cursor), None)
    if source.dialect is not db.POSTGRESQL or cursor is None or cursor.kind != "timestamp":
        return []
    [(zone, utc)] = source.execute(_ZONE)
    if utc:
        return []
    return [
        f"{task.folder / 'task.toml'} cursor: column {task.cursor!r} is a timestamp without time zone,"
        f" read as UTC, but the database's TimeZone is {zone!r}, where now() stores wall-clock times"
        f" and rows can fall below the watermark; in select.sql read it in its zone ({task.cursor}"
        f" AT TIME ZONE '{zone}' AS {task.cursor}; 'UTC' if its writers store UTC times), or make"
        " the column timestamptz"
    ]


def sqlite_cursor_forms(task: Task, source: Source) -> list[str]:
    """SQLite: cursors julianday() reads but that are no time of the calendar (2024-02-30 as March
    1, hour 24 as the next midnight: every run fails their window), and dates alone among times
    (a run judges the cursor by its first row: a time there, and a window ending during a day
    passed the rows dated that day, never exported)."""
    c = f"q.{db.SQLITE.quote(task.cursor)}"
    text = f"typeof({c}) = 'text' AND julianday({c}) IS NOT NULL"
    day_of = f"substr({c}, 1, 10)"  # read alone, an impossible day moves on: its text differs
    bad = f"({text} AND (date(julianday({day_of})) IS NOT {day_of} OR substr({c}, 12, 2) = '24'))"
    day = f"({text} AND length({c}) = 10 AND NOT {bad})"
    select = task.select_sql.rstrip().rstrip(";")
    query = (
        f"SELECT sum({bad}), min(CASE WHEN {bad} THEN {c} END), sum({day}),"
        f" min(CASE WHEN {day} THEN {c} END), sum({text} AND length({c}) > 10) FROM ({select}) AS q"
    )
    try:
        [(bad_rows, bad_example, days, day_example, times)] = source.execute(query)
    except SluicegateError:  # a select this wrapping does not suit: as unreadable_cursors
        return []
    where, problems = task.folder / "select.sql", []
    if bad_rows:
        problems.append(
            f"{where}: {bad_rows:,} row(s) have a {task.cursor} that is no time of the calendar (such as"
            f" {bad_example!r}), which SQLite reads as another time and a run cannot write, so every run"
            " fails their window; correct them in the source"
        )
    if days and times:
        problems.append(
            f"{where}: {days:,} row(s) have a {task.cursor} that is a date alone (such as {day_example!r})"
            f" among times; a run judges the cursor by its first row, and when that is a time, a window"
            " that ends during a day leaves the later rows dated that day below the watermark, never"
            f" exported; return one form in select.sql (date({task.cursor}) for dates, or times)"
        )
    return problems


def sqlite_dates(task: Task, source: Source) -> bool:
    """SQLite: whether the first row's cursor is a date alone (YYYY-MM-DD text, such as
    date('now')), which compares as its UTC midnight, as a date column does elsewhere."""
    if source.dialect is not db.SQLITE:
        return False
    cursor = f"q.{db.SQLITE.quote(task.cursor)}"
    query = (
        f"SELECT typeof({cursor}) = 'text' AND length({cursor}) = 10"
        f" FROM ({task.select_sql.rstrip().rstrip(';')}) AS q WHERE {cursor} IS NOT NULL LIMIT 1"
    )
    try:
        return bool((source.execute(query) or [(0,)])[0][0])
    except SluicegateError:  # a select this wrapping does not suit: as unreadable_cursors
        return False
