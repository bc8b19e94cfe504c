"""PostgreSQL source: one query per batch, CSV straight from ``COPY ... TO STDOUT``.

The batch query joins the task's select to a ``VALUES`` list of the claimed partitions (their
keys and UTC windows) and also repeats the keys and the overall time range as plain
predicates, which PostgreSQL pushes down into the select so indexes are used. In ``csv``
mode without the ADBC driver the server formats every value (timestamps in each partition's
own zone, ISO 8601 with offset) and the client only splits the stream by partition.

Every read path sees the same text for a value: types sluicegate has no encoding of its own
for (``numeric``, ``json``, ``uuid``, ``interval``, ...) are read as the server's text for them
(``::text``), ``bytea`` as ``\\x`` and hex, and the session settings that change the server's
text (date style, float digits) are pinned in :data:`SESSION`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql

from .. import db
from ..config import TaskSpec
from ..exceptions import ConfigError, SluicegateError
from ..partitions import Partition, canonical_key
from . import Column, ColumnKind, CsvChunk, Mode, group_rows, order_columns
from .arrow import available as arrow_available

CHUNK_BYTES = 1 << 20
CHUNK_ROWS = 10000

_KINDS: dict[int, ColumnKind] = {
    16: "bool",
    20: "int",
    21: "int",
    23: "int",
    700: "float",
    701: "float",
    1700: "decimal",
    25: "text",
    1043: "text",
    1042: "text",
    1114: "timestamp",
    1184: "timestamptz",
    1082: "date",
    17: "binary",
}
_REAL_OID = 700

# Every session that reads rows, psycopg's and ADBC's. Naive timestamps are read as UTC, and
# windows are compared in UTC. Batches are sorted by partition: enough work_mem keeps that sort
# in memory. JIT compiled the batch query for seconds and won nothing back. The rest pins the
# server's text for values (a role or database may set other defaults): ISO dates, floats in
# their shortest exact form, intervals and bytea as PostgreSQL writes them by default.
SESSION = (
    "SET TimeZone TO 'UTC'",
    "SET work_mem TO '64MB'",
    "SET jit TO off",
    "SET DateStyle TO 'ISO, YMD'",
    "SET extra_float_digits TO 1",
    "SET IntervalStyle TO 'postgres'",
    "SET bytea_output TO 'hex'",
)


class PostgresSource:
    """Reads task selects from PostgreSQL through psycopg 3."""

    dialect = db.POSTGRESQL
    modes: tuple[Mode, ...] = ("csv", "arrow", "rows")

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = self._session(db.connect(url))
        self._arrow: Any = None

    def _session(self, conn: Any) -> Any:
        with db.wrap_errors(self.url):
            for setting in SESSION:
                conn.execute(setting)
        return conn

    def _reconnect_if_lost(self) -> None:
        """After a lost connection (terminated backend, server restart), wait for a new one."""
        if self.conn.closed or self.conn.broken:
            self.conn = self._session(db.reconnect(self.url))

    def _after_error(self) -> None:
        """Leave the ADBC connection usable after a failed query: roll back, or drop it if lost."""
        if self._arrow is None:
            return
        try:
            self._arrow.rollback()
        except Exception:  # the connection is gone: a new one is opened on the next read
            with contextlib.suppress(Exception):
                self._arrow.close()
            self._arrow = None

    def close(self) -> None:
        """Close the connections."""
        if self._arrow is not None:
            self._arrow.close()
        self.conn.close()

    def _select(self, task: TaskSpec) -> sql.Composable:
        # User SQL is trusted configuration; '%' is doubled so it survives parameter binding.
        return sql.SQL(task.select_sql.replace("%", "%%"))

    def describe(self, task: TaskSpec) -> list[Column]:
        """Run the select with no rows and map result types to column kinds."""
        query = sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(self._select(task))
        try:
            with self.conn.cursor() as cur:
                cur.execute(query, ())
                desc = cur.description or []
        except psycopg.OperationalError:
            with db.wrap_errors(self.url):
                raise
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"{task.folder / 'select.sql'}: the query failed: {first}; fix the SQL"
            ) from None
        if task.columns:
            raise ConfigError(
                f"{task.folder / 'task.toml'} [columns]: only SQLite sources take column kinds; on "
                "PostgreSQL the select's result types give them (cast in select.sql instead)"
            )
        return [_column(d) for d in desc]

    def execute(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        """Run a small query and return all rows."""
        self._reconnect_if_lost()
        with db.wrap_errors(self.url), self.conn.cursor() as cur:
            cur.execute(query, params)
            return list(cur.fetchall()) if cur.description else []

    def zones(self, task: TaskSpec) -> dict[str, str]:
        """Map canonical non-time keys to zones using the task's ``zone_sql``."""
        assert task.time and task.time.zone_sql
        return {canonical_key(row[:-1]): str(row[-1]) for row in self.execute(task.time.zone_sql)}

    # ------------------------------------------------------------------ the batch query

    def batch_query(
        self, task: TaskSpec, parts: Sequence[Partition], columns: Sequence[Column], mode: Mode
    ) -> tuple[sql.Composed, list[Any]]:
        """Build the one query that reads every partition of a batch, and its parameters."""
        nkeys = len(task.keys)
        # Daily partitions in one fixed zone also join on the local date, an equality the planner
        # can hash: without it, a task with no other key compares every row with every window.
        # (Not for hours: a local hour is ambiguous when clocks go back. Not for incremental
        # windows, which may span several days.)
        by_day = (
            task.kind == "partitioned"
            and task.time is not None
            and task.time.grain == "day"
            and task.time.zone is not None
        )
        names = ["ord", *(f"k{i}" for i in range(nkeys))] + (["ws", "we", "zone"] if task.time else [])
        row_sql = ["%s"] * (nkeys + 1) + (
            ["%s::timestamptz", "%s::timestamptz", "%s::text"] if task.time else []
        )
        if by_day:
            names.append("day")
            row_sql.append("%s::date")
        values = sql.SQL(", ").join(sql.SQL("(" + ", ".join(row_sql) + ")") for _ in parts)
        params: list[Any] = []
        for idx, part in enumerate(parts):
            params += [idx, *part.values[:nkeys]]
            if task.time:
                params += [part.start, part.end, part.zone]
            if by_day:
                params.append(part.values[-1])  # the partition's local day, its time key
        on: list[sql.Composable] = [
            sql.SQL("q.{} = p.{}").format(sql.Identifier(k), sql.Identifier(f"k{i}"))
            for i, k in enumerate(task.keys)
        ]
        where: list[sql.Composable] = []
        where_params: list[Any] = []
        for i, k in enumerate(task.keys):
            where.append(sql.SQL("q.{} = ANY(%s)").format(sql.Identifier(k)))
            where_params.append(sorted({p.values[i] for p in parts}, key=str))
        if task.time:
            t = sql.Identifier(task.time.column)
            lo, hi = (">", "<=") if task.time.boundary == "end" else (">=", "<")
            on += [sql.SQL("q.{} " + lo + " p.ws").format(t), sql.SQL("q.{} " + hi + " p.we").format(t)]
            if by_day:
                assert task.time.zone is not None
                # (start, end] windows: an instant at midnight belongs to the day before.
                shift = sql.SQL(" - interval '1 microsecond'" if task.time.boundary == "end" else "")
                on.append(
                    sql.SQL("((q.{}{}) AT TIME ZONE {})::date = p.day").format(
                        t, shift, sql.Literal(task.time.zone)
                    )
                )
            where += [sql.SQL("q.{} " + lo + " %s").format(t), sql.SQL("q.{} " + hi + " %s").format(t)]
            where_params += [min(p.start for p in parts if p.start), max(p.end for p in parts if p.end)]
        zone = sql.SQL("p.zone") if task.time else sql.Literal("UTC")
        projection = sql.SQL(", ").join(_projection(columns, mode, zone))
        # Types read as text may have no ordering (json): they are sorted by that text.
        by_name = {c.name: c for c in columns}
        order = sql.SQL(", ").join(
            sql.SQL("q.{}::text" if by_name[c].as_text else "q.{}").format(sql.Identifier(c))
            for c in order_columns(task, columns)
        )
        query = sql.SQL(
            "SELECT p.ord, {projection} FROM ({select}) AS q "
            "JOIN (VALUES {values}) AS p({names}) ON {on} WHERE {where} ORDER BY p.ord, {order}"
        ).format(
            projection=projection,
            select=self._select(task),
            values=values,
            names=sql.SQL(", ").join(sql.Identifier(n) for n in names),
            on=sql.SQL(" AND ").join(on) if on else sql.SQL("true"),
            where=sql.SQL(" AND ").join(where) if where else sql.SQL("true"),
            order=order,
        )
        return query, params + where_params

    def read(
        self, task: TaskSpec, parts: Sequence[Partition], columns: Sequence[Column], mode: Mode
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, chunk)`` for ``parts``: CSV bytes, Arrow tables or row lists."""
        query, params = self.batch_query(task, parts, columns, mode)
        self._reconnect_if_lost()
        try:
            with db.wrap_errors(self.url):
                if mode == "csv" and not arrow_available():
                    yield from self._read_csv(query, params)
                elif mode == "csv":
                    from .arrow import read_csv

                    yield from read_csv(self._arrow_conn(), self.conn, query, params, parts, columns)
                elif mode == "arrow":
                    from .arrow import read_arrow

                    yield from read_arrow(self._arrow_conn(), self.conn, query, params)
                else:
                    yield from self._read_rows(query, params)
        except SluicegateError:
            self._after_error()
            raise

    def _arrow_conn(self) -> Any:
        if self._arrow is None:
            from .arrow import open_arrow

            with db.wrap_errors(self.url):
                self._arrow = open_arrow(self.url, SESSION)
        return self._arrow

    def _read_csv(self, query: sql.Composed, params: list[Any]) -> Iterator[tuple[int, CsvChunk]]:
        copy_sql = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)
        with self.conn.cursor() as cur, cur.copy(copy_sql, params) as copy:
            current = -1
            prefix = b"\x00"  # no CSV row starts with NUL, so the first row sets the partition
            cut = 0
            buf: list[bytes] = []
            size = 0
            for data in copy:
                row = bytes(data)
                if not row.startswith(prefix):
                    if buf:
                        yield current, CsvChunk(b"".join(buf), len(buf))
                        buf, size = [], 0
                    cut = row.index(b",") + 1
                    current, prefix = int(row[: cut - 1]), row[:cut]
                buf.append(row[cut:])
                size += len(row)
                if size >= CHUNK_BYTES:
                    yield current, CsvChunk(b"".join(buf), len(buf))
                    buf, size = [], 0
            if buf:
                yield current, CsvChunk(b"".join(buf), len(buf))

    def _read_rows(
        self, query: sql.Composed, params: list[Any]
    ) -> Iterator[tuple[int, list[tuple[Any, ...]]]]:
        with self.conn.transaction(), self.conn.cursor(name="sluicegate_batch") as cur:
            cur.itersize = CHUNK_ROWS
            cur.execute(query, params)
            yield from group_rows(cur, CHUNK_ROWS)


def _column(desc: Any) -> Column:
    """The column of a result description: its kind, and how the read paths carry it."""
    kind = _KINDS.get(desc.type_code)
    if kind is None:  # json, uuid, interval, arrays, ...: the server's text
        return Column(name=desc.name, kind="text", as_text=True)
    precision = 24 if desc.type_code == _REAL_OID else desc.precision
    return Column(name=desc.name, kind=kind, precision=precision, scale=desc.scale)


def _projection(columns: Sequence[Column], mode: Mode, zone: sql.Composable) -> list[sql.Composable]:
    """The batch query's select list after ``p.ord``, per read path."""
    if mode == "csv" and not arrow_available():  # COPY formats every value on the server
        return [_csv_expr(c, zone) for c in columns]
    if mode == "csv":
        floats = [c for c in columns if c.kind == "float"]
        return [_arrow_csv_expr(c) for c in columns] + [_float_text_expr(c) for c in floats]
    return [_typed_expr(c) for c in columns]


def _ref(col: Column) -> sql.Composable:
    return sql.SQL("q.{}").format(sql.Identifier(col.name))


def _typed_expr(col: Column) -> sql.Composable:
    """Arrow batches and psycopg rows (Parquet): decimals and text-only types as the server's text.

    A ``real`` is widened to ``double precision`` on the server (exactly), so both paths get the
    same double: psycopg would read the real's shortest text (``0.1``) as the nearest double,
    ADBC the single-precision value itself (``0.10000000149011612``).
    """
    c = _ref(col)
    if col.kind == "decimal" or col.as_text:
        return sql.SQL("{}::text").format(c)
    if col.kind == "float" and col.precision == 24:
        return sql.SQL("{}::float8").format(c)
    return c


def _arrow_csv_expr(col: Column) -> sql.Composable:
    """Arrow batches encoded by Arrow's CSV writer: what it cannot write as we do comes as text."""
    if col.kind == "binary":
        return _hex_expr(_ref(col))
    if col.kind == "decimal" or col.as_text:
        return sql.SQL("{}::text").format(_ref(col))
    return _ref(col)


def _float_text_expr(col: Column) -> sql.Composable:
    """The server's text for a float whose text Arrow would spell differently, else NULL.

    Arrow and PostgreSQL write the same shortest digits, both in plain notation, for magnitudes
    from 1e-4 below 1e10 (``real``: 1e6) and for zero; outside that (exponents, NaN, Infinity)
    the spelling differs, and this column carries PostgreSQL's.
    """
    c = _ref(col)
    high = sql.SQL("1e6" if col.precision == 24 else "1e10")
    return sql.SQL(
        "CASE WHEN (abs({c}) >= 1e-4 AND abs({c}) < {high}) OR {c} = 0 THEN NULL ELSE {c}::text END"
    ).format(c=c, high=high)


def _hex_expr(c: sql.Composable) -> sql.Composable:
    """``bytea`` as PostgreSQL's hex output, ``\\x`` and lowercase hex, whatever ``bytea_output``."""
    return sql.SQL("E'\\\\x' || encode({}, 'hex')").format(c)


def _csv_expr(col: Column, zone: sql.Composable) -> sql.Composable:
    """Server-side text for one column in our CSV dialect (ISO 8601 times with offset)."""
    c = _ref(col)
    if col.kind == "timestamptz":
        off = sql.SQL("extract(epoch FROM ({c} AT TIME ZONE {z}) - ({c} AT TIME ZONE 'UTC'))::int").format(
            c=c, z=zone
        )
        # The offset of each value's own instant in the zone, with seconds only when it has them
        # (local mean time before standard zones), as Python's isoformat() writes it.
        return sql.SQL(
            "to_char({c} AT TIME ZONE {z}, 'YYYY-MM-DD\"T\"HH24:MI:SS')"
            " || CASE WHEN date_trunc('second', {c}) = {c} THEN '' ELSE to_char({c}, '.US') END"
            " || CASE WHEN {off} < 0 THEN '-' ELSE '+' END"
            " || to_char(abs({off}) / 3600, 'FM00') || ':' || to_char(mod(abs({off}), 3600) / 60, 'FM00')"
            " || CASE WHEN mod(abs({off}), 60) = 0 THEN ''"
            " ELSE ':' || to_char(mod(abs({off}), 60), 'FM00') END"
        ).format(c=c, off=off, z=zone)
    if col.kind == "timestamp":
        return sql.SQL(
            "to_char({c}, 'YYYY-MM-DD\"T\"HH24:MI:SS')"
            " || CASE WHEN date_trunc('second', {c}) = {c} THEN '' ELSE to_char({c}, '.US') END"
        ).format(c=c)
    if col.kind == "bool":
        return sql.SQL("CASE WHEN {c} THEN 'true' WHEN NOT {c} THEN 'false' END").format(c=c)
    if col.kind == "binary":
        return _hex_expr(c)
    return c
