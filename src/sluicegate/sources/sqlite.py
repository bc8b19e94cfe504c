"""SQLite source: the embedded default. Timestamps are ISO-8601 text, compared by julianday()."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from .. import db
from ..exceptions import ConfigError, SluicegateError
from . import Column, ColumnKind, Mode, ReadSpec, Slice, group_rows, order_columns, zone_map

CHUNK_ROWS = 5000
_TYPEOF: dict[str, ColumnKind] = {"integer": "int", "real": "float", "text": "text", "blob": "binary"}
_NAMED_PARAM = re.compile(r"%\((\w+)\)s")


def _kind(name: str) -> ColumnKind:
    """A kind named in [columns] (one of specs.COLUMN_KINDS, checked when the task was loaded)."""
    return cast("ColumnKind", name)


def bind_named(query: str) -> str:
    """PostgreSQL-style ``%(name)s`` placeholders (the Common Knowledge layout) as SQLite's ``:name``."""
    return _NAMED_PARAM.sub(r":\1", query)


class SqliteSource:
    """Reads task selects from a SQLite file."""

    dialect = db.SQLITE
    modes: tuple[Mode, ...] = ("rows",)

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = db.connect(url)
        self.conn.create_function(_NEGATIVE_ZERO, 1, _negative_zero, deterministic=True)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def reconnect(self, stop: threading.Event | None = None, seconds: float | None = None) -> None:
        """Nothing to wait for: a file has no connection to lose (its errors are never SourceLost)."""

    def describe(self, spec: ReadSpec) -> list[Column]:
        """Return the select's columns and their kinds, fixed once for the task.

        SQLite results have no declared types, so a kind comes from ``[columns]`` in task.toml,
        else from the type (``typeof()``) of the column's first non-NULL value in the select's
        result; the time column is timestamptz, and a column that is NULL everywhere is text.
        Every file written from these columns has the same Parquet schema.
        """
        where = spec.folder / "select.sql"
        try:
            cur = self.conn.execute(f"SELECT * FROM ({spec.select_sql}) AS q LIMIT 0")
        except sqlite3.Error as exc:
            raise ConfigError(f"{where}: the query failed: {exc}; fix the SQL") from None
        names = [d[0] for d in cur.description]
        pinned = dict(spec.columns)
        unknown = sorted(set(pinned) - set(names))
        if unknown:
            raise ConfigError(
                f"{spec.folder / 'task.toml'} [columns] {unknown[0]}: the select has no such column; "
                f"its columns: {', '.join(names)}"
            )
        kinds = [_kind(pinned[n]) if n in pinned else self._infer(spec, n) for n in names]
        return [Column(name=name, kind=kind) for name, kind in zip(names, kinds, strict=True)]

    def _infer(self, spec: ReadSpec, name: str) -> ColumnKind:
        """The kind of a column's first non-NULL value, by one small query."""
        if name == spec.time_column:
            return "timestamptz"
        column = f"q.{self.dialect.quote_name(name)}"
        query = f"SELECT typeof({column}) FROM ({spec.select_sql}) AS q WHERE {column} IS NOT NULL LIMIT 1"
        with db.wrap_errors(self.url):
            row = self.conn.execute(query).fetchone()
        return _TYPEOF.get(row[0], "text") if row else "text"

    def execute(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        """Run a small query and return all rows."""
        with db.wrap_errors(self.url):
            return list(self.conn.execute(query, params).fetchall())

    def zones(self, zone_sql: str) -> dict[str, str | None]:
        """Map canonical key text to zones with a ``zone_sql`` query."""
        return zone_map(self.execute(zone_sql))

    def read(
        self, spec: ReadSpec, slices: Sequence[Slice], columns: Sequence[Column], mode: Mode
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, rows)`` chunks for ``slices`` from one query in one read transaction."""
        q = self.dialect.quote_name
        timed = spec.time_column is not None
        nkeys = len(spec.keys)
        width = nkeys + (3 if timed else 1)
        values = ", ".join("(" + ", ".join("?" * width) + ")" for _ in slices)
        cols = ["ord", *(f"k{i}" for i in range(nkeys))] + (["ws", "we"] if timed else [])
        on = [f"q.{q(k)} = p.k{i}" for i, k in enumerate(spec.keys)]
        params: list[Any] = []
        for idx, piece in enumerate(slices):
            params += [idx, *piece.keys]
            if timed:
                assert piece.start and piece.end
                params += [piece.start.isoformat(), piece.end.isoformat()]
        if spec.time_column is not None:
            t = f"julianday(q.{q(spec.time_column)})"
            lo, hi = (">", "<=") if spec.time_ending else (">=", "<")
            on += [f"{t} {lo} julianday(p.ws)", f"{t} {hi} julianday(p.we)"]
        value_order = _value_order if not spec.primary_key else str  # a unique key leaves no ties
        order = ", ".join(
            _time_order(f"q.{q(c)}") if c == spec.time_column else value_order(f"q.{q(c)}")
            for c in order_columns(spec, columns)
        )
        query = (
            f"WITH p({', '.join(cols)}) AS (VALUES {values}) "
            f"SELECT p.ord, q.* FROM ({spec.select_sql}) AS q JOIN p ON {' AND '.join(on) or '1'} "
            f"ORDER BY p.ord, {order}"
        )
        with db.wrap_errors(self.url):
            cur = self.conn.cursor()
            cur.execute("BEGIN")
            try:
                cur.execute(query, params)
                yield from group_rows(cur, CHUNK_ROWS)
            finally:
                cur.execute("ROLLBACK")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[_Snapshot]:
        """The write lock for the block (``BEGIN IMMEDIATE``): nothing changes between read and delete."""
        with db.wrap_errors(self.url), db.transaction(self.conn, self.dialect, immediate=True) as cur:
            yield _Snapshot(cur, self.url)


def _time_order(column: str) -> str:
    """The order of a time column's text: by julianday(), then within its millisecond by the text.

    julianday() rounds to the nearest millisecond, so times less than a millisecond apart
    (``.0001`` and ``.0002``) tied and came in the order SQLite read them: the same rows inserted
    in another order gave another file. Their text tells them apart (in their time order when
    they are written in one form), so the order is total.
    """
    return f"julianday({column}), {column}"


def _value_order(column: str) -> str:
    """A column of the rows' order: by value, then numbers equal as numbers by type and sign.

    A column without a type (or an expression) keeps 1 and 1.0, and 0.0 and -0.0, apart, and
    each is written in its own way (JSON ``1`` and ``1.0``, CSV ``0`` and ``-0``), but SQLite
    sorts them as ties: they came in the order it read them, and the same rows gave another
    file. An integer comes first, then a real, 0.0 before -0.0 (whose sign SQL cannot see).
    """
    sign = f"CASE WHEN {column} = 0 THEN {_NEGATIVE_ZERO}({column}) ELSE 0 END"
    return f"{column}, CASE typeof({column}) WHEN 'integer' THEN 0 WHEN 'real' THEN 1 + {sign} END"


_NEGATIVE_ZERO = "sluicegate_negative_zero"


def _negative_zero(value: Any) -> int:
    return int(type(value) is float and math.copysign(1.0, value) < 0)


def unreadable_time_rows(task: Any, source: Any) -> list[str]:
    """SQLite: a partitioned task's rows whose [time] column no partition reads (see below).

    Their changes were logged as set aside at a NULL time, and ``check`` said every task was ok.
    """
    if task.time is None or source.dialect is not db.SQLITE:
        return []
    return unreadable_times(source, task.folder, task.select_sql, task.time.column)


def blob_key_rows(task: Any, source: Any) -> list[str]:
    """SQLite: a partitioned task's rows with a BLOB in a key column, a type no partition key
    holds. Capture and ``backfill`` set their changes aside with a warning, so they are never
    exported, and ``check`` said every task was ok."""
    if source.dialect is not db.SQLITE:
        return []
    problems = []
    for key in task.keys:
        column = f"q.{db.SQLITE.quote(key)}"
        count, example = _rows_where(source, task.select_sql, f"typeof({column}) = 'blob'", f"hex({column})")
        if count:
            problems.append(
                f"{task.folder / 'select.sql'}: {count:,} row(s) have a {key} that is a BLOB (such as"
                f" X'{example}'), which no partition key holds, so they are never exported; return the"
                f" key as text or an integer in select.sql, for example CASE WHEN typeof({key}) = 'blob'"
                f" THEN hex({key}) ELSE {key} END AS {key} (the other rows' keys unchanged)"
            )
    return problems


def unreadable_times(
    source: Any, folder: Path, select_sql: str, column: str, *, first: bool = False
) -> list[str]:
    """Rows whose time ``column`` is set but is no time julianday() reads as such: text it cannot
    read (ISO 8601's basic form 20260101T000000Z, an offset +0100), or an integer (or text with
    no date in it), which it reads as a Julian day number, not Unix time. They are in no window
    (an incremental task's cursor) or partition (a partitioned task's [time] column) the writer
    meant. A REAL is a Julian day, as SQLite documents.

    ``first``: judge the first row with a time only (a run's cheap probe, before it claims).
    """
    cursor = f"q.{db.SQLITE.quote(column)}"
    number = f"typeof({cursor}) = 'integer' OR (typeof({cursor}) = 'text' AND {cursor} NOT LIKE '%-%')"
    bad = f"(julianday({cursor}) IS NULL OR {number})"
    if first:  # the first row with a time: (whether it is bad, it)
        count, example = _rows_where(source, select_sql, f"{cursor} IS NOT NULL", cursor, judged=bad)
    else:
        count, example = _rows_where(source, select_sql, f"{cursor} IS NOT NULL AND {bad}", cursor)
    if not count:
        return []
    return [
        f"{folder / 'select.sql'}: {'the first' if first else f'{count:,}'} row(s) have a {column}"
        f" SQLite cannot read as a time (such as {example!r}), so they are in no window and never exported;"
        " write them as YYYY-MM-DD HH:MM:SS[.fff] with an optional Z or ±HH:MM, or convert them in"
        " select.sql (Unix seconds: datetime(col, 'unixepoch'))"
    ]


def _rows_where(
    source: Any, select_sql: str, where: str, example: str, *, judged: str | None = None
) -> tuple[Any, Any]:
    """How many rows of ``select_sql`` (as ``q``) hold ``where``, and one ``example`` of them (the
    least); with ``judged``: the first such row's ``judged`` and ``example`` instead. (0, None)
    when the select does not suit this wrapping (its describe judged it already)."""
    rows = f"FROM ({select_sql.rstrip().rstrip(';')}) AS q WHERE {where}"
    head = f"{judged}, {example}" if judged else f"count(*), min({example})"
    query = f"SELECT {head} {rows}" + (" LIMIT 1" if judged else "")
    try:
        count, found = (source.execute(query) or [(0, None)])[0]
        return count, found
    except SluicegateError:
        return 0, None


def _utc_text(params: dict[str, Any]) -> dict[str, Any]:
    """Aware times as UTC text in the form Python's adapter gives, ``2026-12-05 15:00:00+00:00``.

    The adapter bound them in their own offset (``2026-12-06 00:00:00+09:00``), so a text
    comparison with times stored in UTC put a Tokyo boundary's next hours before it: archived
    and deleted early. In UTC, the space keeps both common stored forms right: ``...T...Z``
    compares after it from the boundary's date on, and SQLite's own ``2026-12-05 15:00:00``
    compares by its time; julianday() reads it.
    """
    return {
        name: value.astimezone(dt.UTC).isoformat(" ")
        if isinstance(value, dt.datetime) and value.tzinfo is not None
        else value
        for name, value in params.items()
    }


class _Snapshot:
    """A read-then-change transaction on SQLite (archive tasks)."""

    def __init__(self, cursor: Any, url: str) -> None:
        self.cursor = cursor
        self.url = url

    def read(
        self, query: str, params: dict[str, Any], mode: Mode
    ) -> tuple[list[Column], Mode, Iterator[Any]]:
        """Run ``query``; rows of values as SQLite stores them (kind "other": written as they are)."""
        with db.wrap_errors(self.url):
            self.cursor.execute(bind_named(query), _utc_text(params))
        columns = [Column(name=d[0], kind="other") for d in self.cursor.description]
        return columns, "rows", self._chunks()

    def _chunks(self) -> Iterator[list[tuple[Any, ...]]]:
        with db.wrap_errors(self.url):
            while chunk := self.cursor.fetchmany(CHUNK_ROWS):
                yield [tuple(r) for r in chunk]

    def execute(self, statement: str, params: dict[str, Any]) -> int:
        """Run ``statement``; return the rows it changed."""
        with db.wrap_errors(self.url):
            self.cursor.execute(bind_named(statement), _utc_text(params))
            return int(self.cursor.rowcount)
