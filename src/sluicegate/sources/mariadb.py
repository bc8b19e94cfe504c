"""MariaDB / MySQL source: one streamed query per batch in a consistent snapshot.

The session is pinned to UTC (:mod:`sluicegate.mariadb_conn`). Time columns:

- ``TIMESTAMP`` holds an instant; the server shows it in the session zone, UTC, so it reads
  as UTC whatever the server's ``time_zone``.
- ``DATETIME`` holds a wall-clock time without a zone. sluicegate takes it as **UTC**, unless
  the task names the zone of its wall-clock times (``ReadSpec.datetime_zone``, a partitioned
  task's ``[time] datetime_zone``): then windows are compared as wall-clock times in that zone
  and values are read as instants in it. A time the clocks pass twice (the repeated hour in
  autumn) is taken as the second, later one, which is also how the windows cut it.

Both are read as aware UTC datetimes of kind ``timestamptz``. A batch is one query joining the
task's select to a derived table of the batch's slices (key values, UTC windows), with the keys
and the overall time range repeated as plain predicates the optimizer pushes into the select.
It runs in ``START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY`` at ``REPEATABLE READ`` and is
read with an unbuffered cursor, so memory is bounded by a chunk, not by the batch. Rows only:
the CSV and Parquet writers encode them (there is no COPY or Arrow path on MariaDB).

Archive tasks read and delete in one ``SERIALIZABLE`` transaction (:meth:`MariaDbSource.snapshot`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from .. import db, mariadb_conn
from ..exceptions import ConfigError, DataError, SourceUnavailable, StatementTimedOut
from ..formats.csv import single_text
from ..masking import mask_url
from ..partitions import zone_of
from . import Column, ColumnKind, Mode, ReadSpec, Slice, group_rows, mariadb_values, order_columns, zone_map
from .mariadb_values import decimal_type, is_signed_tiny, signed_tiny, signed_tiny_columns, with_signed_tiny

CHUNK_ROWS = 10000
# The most parameters a prepared statement takes: rows are read in the binary protocol (see
# mariadb_values.row_cursor), so a larger batch is read in several queries of one snapshot.
MAX_PLACEHOLDERS = 65535
_INT = (1, 2, 3, 8, 9, 13)  # TINY, SHORT, LONG, LONGLONG, INT24, YEAR
_TIMES = (7, 12, 17, 18)  # TIMESTAMP, DATETIME and their fractional variants
_ZONELESS = (12, 18)  # DATETIME
_STRINGS = (15, 249, 250, 251, 252, 253, 254)  # VARCHAR, the BLOB/TEXT family, VAR_STRING, STRING
_OTHER: dict[int, ColumnKind] = {4: "float", 5: "float", 0: "decimal", 246: "decimal", 10: "date", 14: "date"}
_AS_TEXT = (11, 19, 245, 247, 248)  # TIME, JSON, ENUM, SET: the server's text
_BINARY_CHARSET = 63


def column_kinds(description: Sequence[Any], metadata: dict[str, Any]) -> list[Column]:
    """The columns of a MariaDB result, from the driver's description and metadata (charset, decimals)."""
    columns = []
    for desc, charset, decimals in zip(description, metadata["charset"], metadata["decimals"], strict=True):
        name, code, scale = desc[0], desc[1], desc[5]
        if code in _INT:
            columns.append(Column(name=name, kind="int"))
        elif code in _TIMES:
            columns.append(Column(name=name, kind="timestamptz", zoneless=code in _ZONELESS))
        elif code in _STRINGS:
            columns.append(Column(name=name, kind="binary" if charset == _BINARY_CHARSET else "text"))
        elif code in _AS_TEXT:
            columns.append(Column(name=name, kind="text", as_text=True))
        elif code in _OTHER:
            kind = _OTHER[code]
            digits: int | None = 24 if code == 4 else None
            if kind == "decimal":
                scale, digits = decimal_type(desc, decimals)
            columns.append(Column(name=name, kind=kind, precision=digits, scale=scale))
        else:  # BIT, GEOMETRY: bytes; NULL: nothing to encode
            columns.append(Column(name=name, kind="text" if code == 6 else "binary"))
    return columns


def utc_naive(value: dt.datetime) -> dt.datetime:
    """A window bound as MariaDB compares it: naive UTC (the driver drops tzinfo, it does not convert)."""
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value


def wall_clock(value: dt.datetime, zone: str | None) -> dt.datetime:
    """A window bound as a DATETIME holding wall-clock times in ``zone`` compares it (naive UTC
    when ``zone`` is None)."""
    if zone is None or value.tzinfo is None:
        return utc_naive(value)
    return value.astimezone(zone_of(zone)).replace(tzinfo=None)


def from_wall_clock(value: dt.datetime, zone: str) -> dt.datetime:
    """A DATETIME value holding a wall-clock time in ``zone`` as an aware UTC instant (a repeated
    wall-clock time is the later instant: see :func:`wall_clock`, which puts it in that window)."""
    return value.replace(tzinfo=zone_of(zone), fold=1).astimezone(dt.UTC)


class MariaDbSource:
    """Reads task selects from MariaDB 10.6+ or MySQL 8 through MariaDB Connector/Python."""

    dialect = db.MARIADB
    modes: tuple[Mode, ...] = ("rows",)

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = db.connect(url)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def reconnect(self, stop: threading.Event | None = None, seconds: float | None = None) -> None:
        """After a lost connection: wait, with backoff, up to ``seconds`` for a new one."""
        with contextlib.suppress(Exception):
            self.conn.close()
        self.conn = db.reconnect(self.url, seconds=seconds, stop=stop, grace=0.0)  # told to stop: no wait

    def _reconnect_if_lost(self) -> None:
        if self.conn.closed:
            self.conn = db.reconnect(self.url)

    def describe(self, spec: ReadSpec) -> list[Column]:
        """Run the select with no rows and map the result's types to column kinds."""
        if spec.columns:
            raise ConfigError(
                f"{spec.folder / 'task.toml'} [columns]: only SQLite sources take column kinds; on "
                "MariaDB the select's result types give them (CAST in select.sql instead)"
            )
        self._reconnect_if_lost()
        import mariadb

        cur, where, kinds = self.conn.cursor(), spec.folder / "select.sql", None
        try:
            cur.execute(f"SELECT * FROM ({spec.select_sql}) AS q LIMIT 0")
            kinds = column_kinds(cur.description or [], cur.metadata)
            # The reads put ? parameters after the select: the driver must find them where the server does.
            cur.execute(*probe_query(spec, kinds))
            return kinds
        except mariadb.Error as exc:
            if db.classify(exc) == "transient":
                with db.wrap_errors(self.url):
                    raise
            if kinds is not None:  # the select alone ran
                raise ConfigError(
                    f"{where}: MariaDB Connector/Python misreads this query once it has parameters (to it a "
                    "quote escaped with a backslash, \\' or \\\", ends the string, and one in a comment or "
                    'in a string of the other quote, "don\'t", starts one); write the quote doubled in a '
                    "string of its own quote ('don''t'), and none in comments"
                ) from None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{where}: the query failed: {first}; fix the SQL") from None
        finally:
            cur.close()

    def execute(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        """Run a small query and return all rows (aware UTC datetimes for times)."""
        self._reconnect_if_lost()
        values: Any = (
            bound(query, params)
            if isinstance(params, dict)
            else tuple(utc_naive(v) if isinstance(v, dt.datetime) else v for v in params)
        )
        with db.wrap_errors(self.url):
            cur = self.conn.raw.cursor(binary=True)  # the text protocol's YEAR 0000 fails the driver
            try:
                cur.execute(query, values or ())
                rows = cur.fetchall() if cur.description else []
                converters = [_converter(desc) for desc in cur.description or ()]
            finally:
                cur.close()
        return [tuple(convert(v) for v, convert in zip(row, converters, strict=True)) for row in rows]

    def zones(self, zone_sql: str) -> dict[str, str | None]:
        """Map canonical key text to zones with a ``zone_sql`` query."""
        return zone_map(self.execute(zone_sql))

    def read(
        self, spec: ReadSpec, slices: Sequence[Slice], columns: Sequence[Column], mode: Mode
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, rows)`` chunks for ``slices`` from streamed queries in one snapshot: one,
        unless the batch has more parameters than a prepared statement takes (65535)."""
        group = max(1, (MAX_PLACEHOLDERS - 2) // (2 * len(spec.keys) + 3))  # a slice's most, ws/we too
        times = [
            (i, spec.datetime_zone if c.zoneless else None)
            for i, c in enumerate(columns)
            if c.kind == "timestamptz"
        ]
        self._reconnect_if_lost()
        with db.wrap_errors(self.url):
            cur = mariadb_values.row_cursor(self.conn)
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            try:
                for first in range(0, len(slices), group):
                    cur.execute(*batch_query(spec, slices[first : first + group], columns))
                    for ordinal, rows in group_rows(_Converting(cur, self.conn, self.url), CHUNK_ROWS):
                        yield first + ordinal, _with_zones(rows, times) if times else rows
            finally:
                with contextlib.suppress(Exception):  # a lost connection: the read already failed
                    cur.close()
                    self.conn.execute("COMMIT").close()

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[_Snapshot]:
        """A ``SERIALIZABLE`` transaction: the delete finds exactly the rows the read returned.

        Not ``REPEATABLE READ`` as on PostgreSQL: InnoDB's snapshot applies to plain reads only,
        and a ``DELETE`` (its subqueries too) reads the latest committed rows, so it would also
        remove a row inserted or updated after the read. ``SERIALIZABLE`` makes the read a
        locking read: the rows and gaps it scanned (in index order, the order the delete scans
        them again) stay as read until the commit; writers to them wait for it.
        """
        self._reconnect_if_lost()
        with db.wrap_errors(self.url):
            cur = self.conn.cursor()
            cur.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")  # this transaction only
            cur.execute("START TRANSACTION")
        snapshot = _Snapshot(self.conn, cur, self.url)
        try:
            yield snapshot
            with db.wrap_errors(self.url):
                snapshot.end_read()
                cur.execute("COMMIT")
        except BaseException:
            rolled_back = True
            try:
                snapshot.end_read()
                cur.execute("ROLLBACK")
            except Exception:
                rolled_back = False
            _close(cur)
            if not rolled_back:  # the server rolls back a transaction whose connection is gone
                self.conn.close()
            raise
        _close(cur)


def _close(cursor: Any) -> None:
    """Close a cursor now (its connection may be gone already: nothing to do then)."""
    with contextlib.suppress(Exception):
        cursor.close()


def bound(statement: str, params: dict[str, Any]) -> dict[str, Any] | tuple[()]:
    """The named parameters ``statement`` uses (the driver refuses others), datetimes as naive UTC."""
    used = {k: v for k, v in params.items() if f"%({k})s" in statement}
    return {k: utc_naive(v) if isinstance(v, dt.datetime) else v for k, v in used.items()} or ()


class _Snapshot:
    """A read-then-delete transaction on MariaDB (archive tasks), on one connection.

    The read streams through an unbuffered cursor of its own; the delete and the ledger's
    statements run on :attr:`cursor` once the read has ended (one result at a time per connection).
    """

    def __init__(self, conn: Any, cursor: Any, url: str) -> None:
        self.conn, self.cursor, self.url = conn, cursor, url
        self._reader: Any = None

    def read(
        self, query: str, params: dict[str, Any], mode: Mode
    ) -> tuple[list[Column], Mode, Iterator[Any]]:
        """Rows, with the columns of types sluicegate has no encoding for as the server's text."""
        values = bound(query, params)
        with db.wrap_errors(self.url):
            self.cursor.execute(f"SELECT * FROM ({query}) AS q LIMIT 0", values)
            columns = column_kinds(self.cursor.description or [], self.cursor.metadata)
            q = db.MARIADB.quote_name
            projection = ", ".join(
                f"CAST(q.{q(c.name)} AS CHAR)" if c.as_text else f"q.{q(c.name)}" for c in columns
            )
            self._reader = mariadb_values.row_cursor(self.conn)
            self._reader.execute(f"SELECT {projection} FROM ({query}) AS q", values)
        times: list[tuple[int, str | None]] = [
            (i, None) for i, c in enumerate(columns) if c.kind == "timestamptz"
        ]
        return columns, "rows", self._rows(times)

    def _rows(self, times: Sequence[tuple[int, str | None]]) -> Iterator[list[tuple[Any, ...]]]:
        with db.wrap_errors(self.url):
            reader = _Converting(self._reader, self.conn, self.url)
            while chunk := reader.fetchmany(CHUNK_ROWS):
                yield _with_zones(chunk, times) if times else [tuple(r) for r in chunk]
        self.end_read()

    def end_read(self) -> None:
        """Close the read's cursor (skipping rows not fetched), so the connection takes statements."""
        if self._reader is not None:
            reader, self._reader = self._reader, None
            _close(reader)

    def execute(self, statement: str, params: dict[str, Any]) -> int:
        """Run ``statement`` (after the read); return the rows it changed."""
        self.end_read()
        with db.wrap_errors(self.url):
            self.cursor.execute(statement, bound(statement, params))
            return int(self.cursor.rowcount)


def probe_query(spec: ReadSpec, columns: Sequence[Column]) -> tuple[str, list[Any]]:
    """The reads' query (of one made-up slice, no row read) that describe runs: a column named with a
    quote is in it more than once, as in the reads. The select with one ? when it cannot be made."""
    at = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    with contextlib.suppress(KeyError, ConfigError):  # a missing column: describe's caller names it
        query, params = batch_query(spec, [Slice(keys=(0,) * len(spec.keys), start=at, end=at)], columns)
        return f"{query} LIMIT 0", params
    return f"SELECT 1 FROM ({spec.select_sql}) AS q JOIN (SELECT ? AS p) AS p LIMIT 0", [0]


def batch_query(spec: ReadSpec, slices: Sequence[Slice], columns: Sequence[Column]) -> tuple[str, list[Any]]:
    """The one query that reads every slice of a batch, and its ``?`` parameters."""
    q = db.MARIADB.quote_name
    timed = spec.time_column is not None
    by_name = {c.name: c for c in columns}
    zone = _time_zone(spec, by_name)
    width = len(spec.keys) + 1
    first = ["? AS ord", *(f"? AS k{i}" for i in range(len(spec.keys)))]
    if timed:  # DATETIME(6): the derived column must keep microseconds whatever the first row's
        first += ["CAST(? AS DATETIME(6)) AS ws", "CAST(? AS DATETIME(6)) AS we"]
        width += 2
    rest = "SELECT " + ", ".join(["?"] * width)
    derived = " UNION ALL ".join(["SELECT " + ", ".join(first)] + [rest] * (len(slices) - 1))
    params: list[Any] = []
    for idx, piece in enumerate(slices):
        params += [idx, *piece.keys]
        if timed:
            assert piece.start and piece.end
            params += [wall_clock(piece.start, zone), wall_clock(piece.end, zone)]
    on = [_key_match(q(k), i, by_name.get(k)) for i, k in enumerate(spec.keys)]
    where: list[str] = []
    for i, k in enumerate(spec.keys):
        values = sorted({s.keys[i] for s in slices}, key=str)
        value = "CAST(? AS FLOAT)" if _single(by_name.get(k)) else "?"
        where.append(f"q.{q(k)} IN ({', '.join([value] * len(values))})")
        params += values
    if spec.time_column is not None:
        t = f"q.{q(spec.time_column)}"
        lo, hi = (">", "<=") if spec.time_ending else (">=", "<")
        on += [f"{t} {lo} p.ws", f"{t} {hi} p.we"]
        where += [f"{t} {lo} ?", f"{t} {hi} ?"]
        params += [
            wall_clock(min(s.start for s in slices if s.start), zone),
            wall_clock(max(s.end for s in slices if s.end), zone),
        ]
    projection = ", ".join(f"CAST(q.{q(c.name)} AS CHAR)" if c.as_text else f"q.{q(c.name)}" for c in columns)
    order = ", ".join(_order_expr(q(c), by_name[c]) for c in order_columns(spec, columns))
    query = (
        f"SELECT p.ord, {projection} FROM ({spec.select_sql}) AS q JOIN ({derived}) AS p "
        f"ON {' AND '.join(on) or 'TRUE'} WHERE {' AND '.join(where) or 'TRUE'} ORDER BY p.ord, {order}"
    )
    return query, params


def _order_expr(name: str, column: Column) -> str:
    """A column of the rows' order; text also by its bytes, after the collation's order.

    A collation may tie different text (utf8mb4_general_ci, the default, ties Gent, gent and
    'gent '): the tie is broken byte for byte, so the same rows always come in one order and
    give one file, whatever order the server read them in.
    """
    value = f"CAST(q.{name} AS CHAR)" if column.as_text else f"q.{name}"
    if column.kind != "text":
        return value
    return f"{value}, CAST(CONVERT({value} USING utf8mb4) AS BINARY)"


def _key_match(key: str, index: int, column: Column | None) -> str:
    """A row's key equals the slice's: text byte for byte (a column's collation may ignore case
    or trailing spaces, and Gent and gent are two partitions); the IN list before narrows by index."""
    if column is not None and column.kind == "text":
        return f"CAST(CONVERT(q.{key} USING utf8mb4) AS BINARY) = CAST(p.k{index} AS BINARY)"
    if _single(column):
        return f"q.{key} = CAST(p.k{index} AS FLOAT)"
    return f"q.{key} = p.k{index}"


def _single(column: Column | None) -> bool:
    """Whether ``column`` is a FLOAT: its key values come from triggers, scans and backfills as
    the digits of the single-precision value (0.1), which equal it only as a FLOAT again (as a
    double, 0.1 is not the FLOAT 0.1, and the partition's rows were in no file)."""
    return column is not None and column.kind == "float" and column.precision == 24


def _time_zone(spec: ReadSpec, by_name: dict[str, Column]) -> str | None:
    """The zone the time column's values are wall-clock times in; None when they are UTC."""
    if spec.datetime_zone is None or spec.time_column is None:
        return None
    column = by_name.get(spec.time_column)
    if column is None or not column.zoneless:
        raise ConfigError(
            f"{spec.folder / 'task.toml'} [time] datetime_zone: the time column {spec.time_column} is not "
            "a DATETIME (a TIMESTAMP is an instant already); remove datetime_zone"
        )
    return spec.datetime_zone


class _Converting:
    """A streamed cursor whose ``fetchmany`` fails on every error the server sent, and turns the
    driver's failure to convert a value into a DataError.

    MariaDB Connector/Python 1.1 does not raise an error the server sends in the middle of an
    unbuffered result (a subquery that returns more than one row, a lost connection): the fetch
    returns one row of unset values, which crashed the interpreter when read, and then ends as if
    the result were complete (without an ORDER BY, the rows before the error are a complete-looking
    partition). So each fetch's last row is kept until the next fetch, and when the result ends
    the server's diagnostics (``SHOW ERRORS``) are asked before that row is handed over; with an
    error there, the read fails with it and the row is never read.

    It raises a ValueError ("year 0 is out of range"), or a ``SystemError`` around one, for a
    value it cannot make a Python object of: a zero date (``0000-00-00``, which a ``sql_mode``
    without ``NO_ZERO_DATE`` lets a table hold). The partition failed with that text alone.
    """

    def __init__(self, cursor: Any, conn: Any, url: str) -> None:
        self.cursor, self.conn, self.url = cursor, conn, url
        self._tiny = signed_tiny_columns(cursor.description)  # read as unsigned by the driver
        self._held: list[Any] = []  # the last row fetched: read only once the stream is known sound

    def fetchmany(self, size: int) -> Any:
        # The driver may leave its error pending after a fetch returned (a read alone after a
        # failed batch): it is raised a few steps later, so the whole fetch is guarded.
        try:
            rows = self._sound(size)  # the tiny values of the rows known sound only: the last may be unset
        except (SystemError, ValueError) as exc:  # a ValueError's context is the batch's error
            cause = (exc.__cause__ or exc.__context__ or exc) if isinstance(exc, SystemError) else exc
            raise DataError(mariadb_values.unreadable(cause, self.cursor.description)) from exc
        return with_signed_tiny(rows, self._tiny) if self._tiny and rows else rows

    def _sound(self, size: int) -> Any:
        while True:
            rows = self.cursor.fetchmany(size)
            if not rows:
                self._check()
                rows, self._held = self._held, []
                return rows
            rows, self._held = self._held + rows[:-1], rows[-1:]
            if rows:
                return rows

    def _check(self) -> None:
        """Raise the error the server ended the result with, as :func:`db.wrap_errors` would."""
        with contextlib.closing(self.conn.execute("SHOW ERRORS LIMIT 1")) as cur:
            errors = cur.fetchall()
        if errors:
            self._held = []  # a row of unset values: never read
            _, code, message = errors[0]
            where = f"database {mask_url(self.url)}"
            if int(code) in mariadb_conn.TIMEOUT_ERRNOS:
                raise StatementTimedOut.said(where, message)
            if mariadb_conn.transient_errno(int(code)):
                raise SourceUnavailable(f"{where}: {message}; will retry")
            raise DataError(f"{where}: {message}")


def _single_digits(value: Any) -> Any:
    """A FLOAT as the shortest digits of its single-precision value (0.1), as a CSV file writes it
    (:func:`~sluicegate.formats.csv.single_text`): the driver reads it so without parameters and
    widened (0.10000000149011612) with them, and a scan or backfill marked the same rows under
    both keys, each with its own file."""
    if not isinstance(value, float) or not math.isfinite(value):
        return value
    return float(single_text(value))


def _converter(desc: Sequence[Any]) -> Any:
    """How a small query's value of a result column is returned: a FLOAT as its single-precision
    digits, a TIME as the server's text, a signed TINYINT signed, a time as an aware UTC datetime."""
    if is_signed_tiny(desc):
        return signed_tiny
    if desc[1] == 4:  # FLOAT
        return _single_digits
    if desc[1] in (11, 19):  # TIME
        return lambda v: _time_text(v, int(desc[5] or 0)) if isinstance(v, dt.timedelta) else v
    return _aware


def _time_text(value: dt.timedelta, decimals: int) -> str:
    """A TIME as MariaDB writes it (``-10:00:00``, ``838:59:59.500000``), and as a capture trigger's
    JSON records a TIME key: the driver's timedelta was a key of no type a partition holds, so a
    scan or backfill set aside every row the triggers exported."""
    micros = value // dt.timedelta(microseconds=1)
    seconds, fraction = divmod(abs(micros), 1_000_000)
    text = f"{'-' if micros < 0 else ''}{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return text + f".{fraction:06d}"[: decimals + 1] if decimals else text


def _aware(value: Any) -> Any:
    return value.replace(tzinfo=dt.UTC) if isinstance(value, dt.datetime) else value


def _with_zones(rows: list[tuple[Any, ...]], times: Sequence[tuple[int, str | None]]) -> list[Any]:
    """Rows with their time columns as aware UTC datetimes: naive UTC, or wall-clock times in a zone."""
    out = []
    for row in rows:
        values = list(row)
        for i, zone in times:
            if values[i] is not None:
                values[i] = from_wall_clock(values[i], zone) if zone else values[i].replace(tzinfo=dt.UTC)
        out.append(tuple(values))
    return out
