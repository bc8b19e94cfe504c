"""An aggregate task's optional file: one evaluation's rows, through the pipeline, as one unit.

The file is written before the table (see :func:`sluicegate.drivers.aggregate.evaluate`), at
the path the task's template gives the tick, in the task's format, into the project's
destination. A re-evaluation of the same tick writes the same path again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import ipaddress
import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import db, paths, tabledb, tables
from ..exceptions import BadPartitionValue, ConfigError, DataError, SluicegateError
from ..formats.csv import time_text
from ..options import Budget, TaskSummary
from ..pipeline import Pipeline
from ..schedules import clock_changes, due_tick, next_tick
from ..sources import Column, ColumnKind, Slice
from ..work import Outcome, Place, WorkUnit

if TYPE_CHECKING:
    from . import Context
    from .aggregate import Task


def check_file(task: Task, raw: Mapping[str, Any], where: str) -> None:
    """ConfigError for ``format`` without ``path`` (no file is written: it was ignored), or for a
    path that names two ticks alike (:func:`check_path`)."""
    if "format" in raw and not task.file:
        raise ConfigError(
            f"{where} format: the format of the file a path writes, and there is no path; remove "
            f'format, or add a path such as path = "{{task}}/{{t:%Y%m%d%H%M}}.{{ext}}"'
        )
    if task.file:
        check_path(task, where)


class FileRecorder:
    """Remembers the file's outcome; the evaluation records it with the table."""

    def __init__(self) -> None:
        self.outcome: Outcome | None = None
        self.error: SluicegateError | None = None

    def commit(self, outcomes: Sequence[Outcome], place: Place) -> list[bool]:
        """Put the file in place, durably (the tick's claim is checked before the table is written)."""
        place(outcomes)
        [self.outcome] = outcomes
        return [True]

    def fail(self, unit: WorkUnit, error: SluicegateError) -> None:
        """Remember the error; the evaluation fails with it."""
        self.error = error

    def renew(self, tokens: Collection[str]) -> None:
        """Nothing to renew: the tick's claim is checked before the table is written."""

    def release(self, tokens: Collection[str]) -> int:
        """Nothing to release."""
        return 0


SAMPLE = dt.datetime(2024, 1, 15, 12, tzinfo=dt.UTC)  # the tick the path is tried on at load


def render_path(task: Task, tick: dt.datetime) -> str:
    """The file of ``tick``."""
    return paths.render(
        task.path, {"task": task.name, "t": tick, "format": task.format, "ext": task.extension}
    )


def check_path(task: Task, where: str) -> None:
    """Raise ConfigError for a path template with an unknown field, ending in another format's
    extension than the task's, or leaving the destination: at load, not at the first evaluation."""
    paths.check_template(
        task.path, task.folder, allowed={"task", "t", "format", "ext"}, required=(), what="evaluation field",
        fmt=task.format,
    )  # fmt: skip
    try:  # an absolute or ../ path
        render_path(task, SAMPLE)
    except BadPartitionValue as exc:
        raise ConfigError(f"{where} path: {exc}") from None
    if twins := _twin_ticks(task):
        first, second = (f"{t:%Y-%m-%dT%H:%M:%SZ}" for t in twins)
        raise ConfigError(
            f"{where} path: {paths.shown(task.path)} names the ticks {first} and {second} alike, so the "
            "later one's file would replace the earlier one's; name each tick in full, e.g. "
            "{task}/{t:%Y/%m/%d/%H%M%S}.{ext}"
        )


def _twin_ticks(task: Task) -> tuple[dt.datetime, dt.datetime] | None:
    """Two ticks of the task whose files the path names alike, in order, or None: among a first
    tick (the sample's, or the schedule's first after it: "0 12 * * * 0 2025-2099" has none in
    2024), the 60 after it and those a minute, hour, day, ..., century from it; those around new
    years (ISO weeks); and the 60 ticks from a day before each clock change of the schedule's zone
    in the year after it ("0 */24 * * *" ticks at both midnights of America/Havana's 2024-11-03)."""
    tick = _first_tick(task)
    runs = [
        [*_following(task, tick), *(t for t in paths.near_times(tick) if _is_tick(task, t))],
        _new_years(task),
    ]
    if task.schedule is not None:
        changes = clock_changes(task.schedule_zone, tick, tick + dt.timedelta(days=366))
        runs += [_following(task, _first_tick(task, at - dt.timedelta(days=1))) for at in changes]
    for run in runs:
        named: dict[str, dt.datetime] = {}
        for at in run:
            if (other := named.setdefault(render_path(task, at), at)) != at:
                return min(at, other), max(at, other)
    return None


def _new_years(task: Task) -> list[dt.datetime]:
    """The ticks due on each day from 28 December to 4 January around the new years of 2023 to 2030
    (Jan 1 on each weekday): where ISO week-years end and start, so ``{t:%Y/W%V}`` names both
    2024-01-01 and 2024-12-30 "2024/W01", and ``{t:%G%m%d}`` both 2026-01-01 and 2027-01-01."""
    ticks = []
    for year in range(SAMPLE.year - 1, SAMPLE.year + 7):
        for day in range(-4, 4):
            with contextlib.suppress(ValueError):  # before or after the schedule's years
                ticks.append(due_tick(task, SAMPLE.replace(year=year, day=1) + dt.timedelta(days=day)))
    return [t for t in ticks if t is not None]


def _first_tick(task: Task, at: dt.datetime = SAMPLE) -> dt.datetime:
    """The latest tick at or before ``at``, or the schedule's first after it when it has none."""
    try:
        tick = due_tick(task, at)
    except ValueError:  # croniter's CroniterBadDateError: the schedule's years start later
        assert task.schedule is not None
        return next_tick(task.schedule, task.schedule_zone, at)
    assert tick is not None
    return tick


def _following(task: Task, tick: dt.datetime) -> list[dt.datetime]:
    """``tick`` and the 60 ticks after it (fewer where the schedule's years end)."""
    if task.schedule is None:
        return [tick + dt.timedelta(seconds=(task.every or 0) * k) for k in range(61)]
    ticks = [tick]
    with contextlib.suppress(ValueError):  # croniter's CroniterBadDateError: the schedule's years end
        while len(ticks) < 61:
            ticks.append(next_tick(task.schedule, task.schedule_zone, ticks[-1]))
    return ticks


def _is_tick(task: Task, at: dt.datetime) -> bool:
    try:
        return due_tick(task, at) == at
    except ValueError:  # before the schedule's first year
        return False


class Names(list[str]):
    """The column names of an evaluation's result, with the kind each has by the result's type
    (``kinds``; None where the database gives no type: SQLite)."""

    def __init__(self, names: Sequence[str], kinds: Sequence[ColumnKind | None]) -> None:
        super().__init__(names)
        self.kinds = list(kinds)

    def plus(self, name: str, kind: ColumnKind) -> Names:
        """These names and ``name`` after them."""
        return Names([*self, name], [*self.kinds, kind])


def result_kinds(source: tables.TableDb) -> list[ColumnKind | None]:
    """The kinds of the columns of ``source``'s last result by their types, as :func:`_kind` gives
    them from a value (MariaDB's times come naive); None for each on SQLite, whose results have none."""
    if source.flavor == "postgresql":
        from ..sources.pg_query import KINDS

        return [KINDS.get(d.type_code, "text") for d in source.description]
    if source.flavor == "mariadb":
        from ..sources.mariadb import column_kinds

        columns = column_kinds(source.description, source.metadata)
        return ["timestamp" if c.kind == "timestamptz" else c.kind for c in columns]
    return [None] * len(source.description)


def _type_kinds(task: Task, columns: Sequence[str]) -> list[ColumnKind | None]:
    """The kind of each column by its type in the result, or (SQLite: the result has none) by its
    type in the table sink, whatever its database (SQLite: by the column's affinity); None where
    neither tells."""
    kinds: list[ColumnKind | None] = columns.kinds if isinstance(columns, Names) else [None] * len(columns)
    if all(kinds):
        return kinds
    sink = tables.TableDb(task.target.url)
    try:
        if sink.flavor == "sqlite":
            typed = {c: _declared_kind(d) for c, d in sink.sqlite_declared(task.target.table).items()}
        else:  # no row: the result's types are the table's columns', as SQLite's values have them
            names = sink.table_columns(task.target.table)  # its description stays on the sink
            plain = {k: _AS_SQLITE.get(k, k) for k in ("int", "float", "text", "binary", "bool", "decimal")}
            typed = {c: plain.get(k or "") for c, k in zip(names, result_kinds(sink), strict=True)}
    finally:
        sink.close()
    return [k or typed.get(c) for c, k in zip(columns, kinds, strict=True)]


def _declared_kind(declared: str) -> ColumnKind | None:
    """The kind of a SQLite column of the ``declared`` type, by its affinity; of NUMERIC affinity
    (no kind of its own), a BOOLEAN is an integer and a NUMERIC or DECIMAL a double, as the values
    SQLite gives for them (4.00 comes as 4); a DATE or DATETIME none (its values are text)."""
    affinity = tabledb.sqlite_affinity(declared)
    if affinity != "NUMERIC":
        return _AFFINITY_KINDS.get(affinity)
    if "BOOL" in declared:
        return "int"
    return "float" if any(w in declared for w in ("NUM", "DEC")) else None


_AFFINITY_KINDS: dict[str, ColumnKind] = {"INTEGER": "int", "REAL": "float", "TEXT": "text", "BLOB": "binary"}
_AS_SQLITE: dict[str, ColumnKind] = {"bool": "int", "decimal": "float"}  # a SQLite select's values of them


def write_file(
    context: Context, task: Task, tick: dt.datetime, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> tuple[str | None, int]:
    """Write the rows (the tick last in each) as the tick's file; return its path (None: no rows,
    no file) and its size. The kinds of a column NULL in every row, and of one of numbers, follow
    its type (see :func:`_type_kinds`), so that the files of a task share one schema."""
    path = render_path(task, tick)
    context.destination.check_path(path)
    text = "CHAR" if db.dialect_of(context.project.settings.source_url) is db.MARIADB else "text"  # its cast
    hints = _type_kinds(task, columns) if rows else [None] * len(columns)
    kinds = [
        Column(name=n, kind=_kind(n, [row[i] for row in rows], text, hints[i])) for i, n in enumerate(columns)
    ]
    rows = _as_text(rows)
    recorder = FileRecorder()
    pipeline = Pipeline(
        read=lambda units: iter([(0, list(rows))] if rows else []), format=task.format, columns=kinds,
        mode="rows", destination=context.destination, recorder=recorder, summary=TaskSummary(task=task.name),
        budget=Budget(deadline=None), lease=task.lease, fault=context.fault, feed=context.feed(task),
    )  # fmt: skip
    with pipeline:
        unit = WorkUnit(key="", slice=Slice(zone="UTC"), path=path, keys={}, version=tick.isoformat())
        pipeline.export([unit])
        pipeline.flush()
    if recorder.error is not None:
        raise recorder.error
    if recorder.outcome is None:
        return None, 0
    return recorder.outcome.path, recorder.outcome.nbytes


_KINDS: tuple[tuple[type, ColumnKind], ...] = (
    (bool, "bool"),
    (int, "int"),
    (float, "float"),
    (decimal.Decimal, "decimal"),
    (str, "text"),
    (bytes, "binary"),
    (dt.datetime, "timestamptz"),
    (dt.date, "date"),
)


def _as_text(rows: Sequence[tuple[Any, ...]]) -> Sequence[tuple[Any, ...]]:
    """The rows with each value whose text is the database's (:data:`_AS_TEXT`: uuid, time, inet)
    as that text, the kind :func:`_kind` gives its column (JSON lines had no spelling of an inet)."""
    if not any(isinstance(v, _AS_TEXT) for row in rows for v in row):
        return rows
    return [tuple(_text(v) if isinstance(v, _AS_TEXT) else v for v in row) for row in rows]


def _text(value: Any) -> str:
    """A value of :data:`_AS_TEXT` as the database writes it: a time as PostgreSQL does (its
    ``str()`` was Python's, ``12:00:00.100000``, ``12:00:00+02:00``), the others as ``str()``."""
    return time_text(value) if isinstance(value, dt.time) else str(value)


# Other values whose text (_text) is the database's: anything else (a list, a tuple, a timedelta,
# a range) would be written as Python spells it ("[1, None]", "23:59:59" for 1 day -1 second).
_AS_TEXT = (uuid.UUID, dt.time, ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Interface,
            ipaddress.IPv6Interface, ipaddress.IPv4Network, ipaddress.IPv6Network)  # fmt: skip


def _kind(
    name: str, values: Sequence[Any], text: str = "text", typed: ColumnKind | None = None
) -> ColumnKind:
    """The kind of a column from its first non-NULL value (a naive time is a timestamp), or
    ``typed`` (its type's, see :func:`_type_kinds`) when it has none; numbers are floats beside a
    float or when ``typed`` is float (SQLite gives a NUMERIC column's 4.00 as the integer 4) and a
    double holds each of them exactly (a SUM past 2**53 stays an integer).
    Raises DataError for a value the file could not hold as the database writes it (``text``: the
    type the select casts to, MariaDB's ``CHAR``)."""
    value = next((v for v in values if v is not None), None)
    if value is None:
        return typed or "text"
    if type(value) in (int, float) and all(v is None or type(v) in (int, float) for v in values):
        if any(type(v) is float for v in values):
            return "float"  # (a whole number past 2**53 beside it fails the file, naming the column)
        exact = all(v is None or abs(v) <= 2**53 for v in values)  # a double holds each whole number
        return "float" if typed == "float" and exact else "int"
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return "timestamp"
    for typ, kind in _KINDS:
        if isinstance(value, typ):
            return kind
    if not isinstance(value, _AS_TEXT):
        raise DataError(
            f"column {name!r} holds a {type(value).__name__}, which the file cannot hold as the database "
            f"writes it; cast it in select.sql: CAST({name} AS {text}) AS {name}"
        )
    return "text"  # as a NULL column of its type is (not Parquet's uuid or time64 of one tick)
