"""PostgreSQL source: one query per batch (see :mod:`.pg_query`), read by the fastest path.

CSV comes from Arrow batches through ADBC (the ``fast`` extra), or without it straight from
``COPY ... TO STDOUT`` with every value formatted by the server; Parquet from Arrow batches
or psycopg rows. Every read path sees the same text for a value: types sluicegate has no
encoding of its own for are read as the server's text, and the session settings that change
the server's text (date style, float digits) are pinned in :data:`SESSION`.

A connection lost mid-run (a terminated backend, a server restart) is replaced before the
next read, with backoff (:func:`sluicegate.db.reconnect`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.types.string import TextLoader

from .. import db
from ..exceptions import ConfigError, PermissionDenied, SluicegateError, SourceLost
from . import Column, CsvChunk, Mode, ReadSpec, Slice, client_sort, distinct_names, group_rows, zone_map
from .arrow import available as arrow_available
from .client_sort import ClientSort, order_keys
from .pg_query import KINDS, batch_query, column_of, projection, select_sql

_T = TypeVar("_T")
CHUNK_BYTES = 1 << 20
CHUNK_ROWS = 10000
# A batch of more partitions than this is read without the server's parallel workers. For ~500
# location-days (24k rows) a parallel plan doubled the server's CPU (69 against 34 ms) and was
# slower (42 against 35 ms); for three partitions of 333k rows it was 25-35% faster. Many small
# partitions have their parallelism already: the exporters (run --workers).
PARALLEL_SLICES = 16
# A batch whose partitions the planner expects to hold this many rows each is read one
# partition per query, when that does not multiply the planner's cost of the read (a query per
# partition over a table with no index on the keys would scan it once per partition). Each
# partition then gets its own, smaller sort, on its order columns alone: at 10M rows in three
# partitions that cut the server's CPU by a fifth and the run's time by 13 % (bench/README.md).
SPLIT_ROWS = 50_000
SPLIT_COST = 1.25  # the one-partition plan's cost x partitions, at most this x the batch plan's

# Every session that reads rows, psycopg's and ADBC's. Naive timestamps are read as UTC, and
# windows are compared in UTC. Batches are sorted by partition: enough work_mem keeps that sort
# in memory. JIT compiled the batch query for seconds and won nothing back. The rest pins the
# server's text for values (a role or database may set other defaults): ISO dates, floats in
# their shortest exact form, intervals and bytea as PostgreSQL writes them by default. Text comes
# as UTF-8: psycopg reads the text of a SQL_ASCII database (client_encoding SQL_ASCII) as bytes.
SESSION = (
    "SET client_encoding TO 'UTF8'",
    "SET TimeZone TO 'UTC'",
    "SET work_mem TO '64MB'",
    "SET jit TO off",
    "SET DateStyle TO 'ISO, YMD'",
    "SET extra_float_digits TO 1",
    "SET IntervalStyle TO 'postgres'",
    "SET bytea_output TO 'hex'",
)


# The types a small query (a scan's or backfill's keys, zone_sql, an incremental task's entities)
# reads as the server's text, the text the read paths and the capture triggers have for them
# (12:00:00.1+02, not Python's 12:00:00.100000+02:00): as Python times their keys were set aside
# or failed to match the triggers' partitions, and 24:00:00, which PostgreSQL takes and Python's
# time cannot hold, failed every scan and backfill of the table ("can't parse time").
TEXT_TYPES = ("time", "timetz")


def read_times_as_text(conn: Any) -> None:
    """Have a psycopg connection read :data:`TEXT_TYPES` as the server's text."""
    for type_name in TEXT_TYPES:
        conn.adapters.register_loader(type_name, TextLoader)


class PostgresSource:
    """Reads task selects from PostgreSQL through psycopg 3 (and ADBC when installed)."""

    dialect = db.POSTGRESQL
    modes: tuple[Mode, ...] = ("csv", "arrow", "rows")

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = self._session(db.connect(url))
        self._arrow: Any = None
        self._parallel: dict[bool, bool] = {}  # per connection (ADBC's or not): parallel workers allowed
        self._split: dict[ReadSpec, bool] = {}  # per task: read a batch one partition per query
        self._overran: set[ReadSpec] = set()  # tasks a batch of which was too large to sort here

    def _session(self, conn: Any) -> Any:
        with db.wrap_errors(self.url):
            for setting in SESSION:
                conn.execute(setting)
        read_times_as_text(conn)
        return conn

    def _reconnect_if_lost(self) -> None:
        """After a lost connection (terminated backend, server restart), wait for a new one."""
        if self.conn.closed or self.conn.broken:
            self.conn = self._session(db.reconnect(self.url))
            self._parallel.pop(False, None)

    def reconnect(self, stop: threading.Event | None = None, seconds: float | None = None) -> None:
        """After a lost connection (see :class:`~sluicegate.source_outage.SourceOutage`): drop both
        connections and wait, with backoff, up to ``seconds`` for a new one (ADBC's is opened again
        on the next read)."""
        if self._arrow is not None:
            with contextlib.suppress(Exception):
                self._arrow.close()
            self._arrow = None
        with contextlib.suppress(Exception):
            self.conn.close()
        # Told to stop: no wait (the grace a ledger's commit gets), the batch is given back already.
        self.conn = self._session(db.reconnect(self.url, seconds=seconds, stop=stop, grace=0.0))
        self._parallel.clear()

    def _after_error(self) -> None:
        """After a failed query, drop the ADBC connection if it is lost (a new one is opened on
        the next read); it autocommits, so a failed statement left nothing to roll back."""
        if self._arrow is None or self._arrow.alive():
            return
        with contextlib.suppress(Exception):
            self._arrow.close()
        self._arrow = None
        self._parallel.pop(True, None)

    def close(self) -> None:
        """Close the connections."""
        if self._arrow is not None:
            self._arrow.close()
        self.conn.close()

    def describe(self, spec: ReadSpec) -> list[Column]:
        """Run the select with no rows and map result types to column kinds (once more on a new
        connection when the connection was lost, see :meth:`_once_more`)."""
        return self._once_more(lambda: self._describe(spec))

    def _once_more(self, call: Callable[[], _T]) -> _T:
        """``call()`` (a read-only query), run once more on a new connection when the connection
        was lost. One lost while idle (terminated, the server restarted, while a read ran on ADBC's
        connection) is seen only when used, and failed a task that had done nothing wrong. The
        query is run again as well when its own connection was ended under it (an operator's
        ``pg_terminate_backend``, a query that crashes its backend): once, then the loss fails."""
        self._reconnect_if_lost()
        try:
            return call()
        except SourceLost:
            if not (self.conn.closed or self.conn.broken):
                raise
        self._reconnect_if_lost()
        return call()

    def _describe(self, spec: ReadSpec) -> list[Column]:
        query = sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(select_sql(spec))
        try:
            with self.conn.cursor() as cur:
                cur.execute(query, ())
                desc = cur.description or []
                types = _type_names(cur, {d.type_code for d in desc})
        except psycopg.OperationalError:
            with db.wrap_errors(self.url):
                raise
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if db.denied(exc):  # the SQL is fine; the role is not (exit 1, not a config error)
                raise PermissionDenied(
                    f"{spec.folder / 'select.sql'}: {first}; the role lacks a privilege it needs: "
                    f"run `sluicegate grants {spec.folder.name}` and apply its GRANTs as the owner"
                ) from exc
            raise ConfigError(
                f"{spec.folder / 'select.sql'}: the query failed: {first}; fix the SQL"
            ) from None
        if spec.columns:
            raise ConfigError(
                f"{spec.folder / 'task.toml'} [columns]: only SQLite sources take column kinds; on "
                "PostgreSQL the select's result types give them (cast in select.sql instead)"
            )
        return distinct_names(spec, [column_of(d, types) for d in desc])

    def execute(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        """Run a small read-only query and return all rows (once more on a new connection when the
        connection was lost, see :meth:`_once_more`)."""
        return self._once_more(lambda: self._execute(query, params))

    def _execute(self, query: str, params: Sequence[Any] | dict[str, Any]) -> list[tuple[Any, ...]]:
        with db.wrap_errors(self.url), self.conn.cursor() as cur:
            cur.execute(query, params)
            return list(cur.fetchall()) if cur.description else []

    def zones(self, zone_sql: str) -> dict[str, str | None]:
        """Map canonical key text to zones with a ``zone_sql`` query."""
        return zone_map(self.execute(zone_sql))

    def read(
        self, spec: ReadSpec, slices: Sequence[Slice], columns: Sequence[Column], mode: Mode
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, chunk)`` for ``slices``: CSV bytes, Arrow tables or row lists."""
        if len(slices) > 1 and self._one_by_one(spec, slices, columns, mode):
            for index, piece in enumerate(slices):
                for _, chunk in self._read(spec, [piece], columns, mode):
                    yield index, chunk
            return
        yield from self._read(spec, slices, columns, mode)

    def _one_by_one(
        self, spec: ReadSpec, slices: Sequence[Slice], columns: Sequence[Column], mode: Mode
    ) -> bool:
        """Whether batches of this task are read a partition per query (see SPLIT_ROWS); decided
        from the planner's estimates for the task's first batch of more than one partition."""
        if spec not in self._split:
            server_text = mode == "csv" and not arrow_available()
            rows, cost = self._estimate(batch_query(spec, slices, columns, mode, server_text=server_text))
            split = rows >= SPLIT_ROWS * len(slices)
            if split:
                _, one = self._estimate(batch_query(spec, slices[:1], columns, mode, server_text=server_text))
                split = one * len(slices) <= SPLIT_COST * cost
            self._split[spec] = split
        return self._split[spec]

    def _estimate(self, built: tuple[sql.Composed, list[Any]]) -> tuple[float, float]:
        """The planner's estimate of a query's rows and total cost (``EXPLAIN``, not run)."""
        plan = self._plan(built)
        return float(plan.get("Plan Rows", 0)), float(plan.get("Total Cost", 0))

    def _plan(self, built: tuple[sql.Composed, list[Any]]) -> dict[str, Any]:
        query, params = built
        self._reconnect_if_lost()
        with db.wrap_errors(self.url), self.conn.cursor() as cur:
            cur.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(query), params)
            row = cur.fetchone()
        return dict((row[0] if row else [{}])[0].get("Plan", {}))

    def _client_sort(
        self, spec: ReadSpec, slices: Sequence[Slice], columns: Sequence[Column], mode: Mode
    ) -> ClientSort | None:
        """The batch read unsorted and sorted by Arrow (see client_sort), when its order columns
        allow it and the planner expects it to be large enough to gain and small enough to hold."""
        if (
            spec in self._overran
            or len(slices) > PARALLEL_SLICES
            or (keys := order_keys(spec, columns)) is None
        ):
            return None  # many small partitions: each sort is a few ms, or one Arrow may misorder
        unsorted = batch_query(spec, slices, columns, mode, server_text=False, ordered=False)
        plan = self._plan(unsorted)
        rows, width = float(plan.get("Plan Rows", 0)), float(plan.get("Plan Width", 0))
        if (
            rows < client_sort.MIN_ROWS
            or rows * width * client_sort.ESTIMATE_MARGIN > client_sort.BUDGET_BYTES
        ):
            return None
        return ClientSort(*unsorted, keys, client_sort.HOLD_BYTES, lambda: self._overran.add(spec))

    def _read(
        self, spec: ReadSpec, slices: Sequence[Slice], columns: Sequence[Column], mode: Mode
    ) -> Iterator[tuple[int, Any]]:
        server_text = mode == "csv" and not arrow_available()  # no ADBC: COPY's text
        query, params = batch_query(spec, slices, columns, mode, server_text=server_text)
        parallel = len(slices) <= PARALLEL_SLICES
        self._reconnect_if_lost()
        try:
            with db.wrap_errors(self.url):
                if server_text:
                    self._allow_parallel(parallel)
                    yield from self._read_csv(query, params)
                elif mode == "csv":
                    from .arrow import read_csv

                    aconn = self._allow_parallel(parallel, self._arrow_conn())
                    yield from read_csv(aconn, self.conn, query, params, slices, columns)
                elif mode == "arrow":
                    from .arrow import read_arrow

                    aconn = self._allow_parallel(parallel, self._arrow_conn())
                    client = self._client_sort(spec, slices, columns, mode)
                    yield from read_arrow(aconn, self.conn, query, params, slices, columns, client)
                else:
                    self._allow_parallel(parallel)
                    yield from self._read_rows(query, params)
        except SluicegateError:
            self._after_error()
            raise

    def _allow_parallel(self, allowed: bool, aconn: Any = None) -> Any:
        """Let the server plan parallel workers for the next read (on ``aconn``, ADBC's
        connection, or psycopg's), or not (see PARALLEL_SLICES); returns ``aconn``."""
        if self._parallel.get(aconn is not None) != allowed:
            statement = f"SET max_parallel_workers_per_gather TO {'DEFAULT' if allowed else 0}"
            if aconn is None:
                self.conn.execute(statement)  # autocommit
            else:
                with aconn.cursor() as cur:
                    cur.execute(statement)  # autocommit
            self._parallel[aconn is not None] = allowed
        return aconn

    def _arrow_conn(self) -> Any:
        if self._arrow is None:
            from .adbc import open_arrow

            with db.wrap_errors(self.url):
                # Named as psycopg's session is: the late-commit cap (watermark_ends) must not
                # take a read of its in progress for a writer's open transaction.
                named = f"SET application_name TO '{db.APPLICATION_NAME}'"
                self._arrow = open_arrow(self.url, (*SESSION, named))
            self._parallel.pop(True, None)
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

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[_Snapshot]:
        """A ``REPEATABLE READ`` transaction: a read and a delete in it see the same rows. A
        connection lost while idle (an archive task with no delete.sql to EXPLAIN first) is seen by
        a ``SELECT 1`` and opened again, not by the snapshot's first statement, failing the run."""
        self._once_more(lambda: self._execute("SELECT 1", ()))  # autocommit: no transaction left open
        with db.wrap_errors(self.url), self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield _Snapshot(cur, self.url)


def _type_names(cur: Any, oids: set[int]) -> dict[int, str]:
    """The types of ``oids`` read as text (see column_of), as PostgreSQL writes them in SQL."""
    carried = sorted(oid for oid in oids if oid not in KINDS)
    if not carried:
        return {}
    cur.execute("SELECT oid::int, format_type(oid, NULL) FROM pg_type WHERE oid = ANY(%s)", (carried,))
    return {int(oid): str(name) for oid, name in cur.fetchall()}


class _Snapshot:
    """A read-then-change transaction on PostgreSQL (archive tasks)."""

    def __init__(self, cursor: Any, url: str) -> None:
        self.cursor = cursor
        self.url = url

    def read(
        self, query: str, params: dict[str, Any], mode: Mode
    ) -> tuple[list[Column], Mode, Iterator[Any]]:
        """``csv``: the server's own ``COPY ... CSV`` text (the original service's bytes); else rows."""
        with db.wrap_errors(self.url):
            self.cursor.execute(sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(sql.SQL(query)), params)
            columns = [column_of(d) for d in self.cursor.description or []]
        if mode == "csv":
            return columns, "csv", self._copy(query, params)
        # As a partitioned task's rows: a time outside years 1 to 9999 fails by column's name.
        typed = sql.SQL("SELECT {} FROM ({}) AS q").format(
            sql.SQL(", ").join(projection(columns, "rows", sql.Literal("UTC"), server_text=False)),
            sql.SQL(query),
        )
        with db.wrap_errors(self.url):
            self.cursor.execute(typed, params)
        return columns, "rows", self._rows()

    def _copy(self, query: str, params: dict[str, Any]) -> Iterator[CsvChunk]:
        statement = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(sql.SQL(query))
        with db.wrap_errors(self.url), self.cursor.copy(statement, params) as copy:
            buf: list[bytes] = []
            size = 0
            for data in copy:
                buf.append(bytes(data))
                size += len(data)
                if size >= CHUNK_BYTES:
                    yield CsvChunk(b"".join(buf), len(buf))
                    buf, size = [], 0
            if buf:
                yield CsvChunk(b"".join(buf), len(buf))

    def _rows(self) -> Iterator[list[tuple[Any, ...]]]:
        with db.wrap_errors(self.url):
            while chunk := self.cursor.fetchmany(CHUNK_ROWS):
                yield [tuple(r) for r in chunk]

    def execute(self, statement: str, params: dict[str, Any]) -> int:
        """Run ``statement``; return the rows it changed."""
        with db.wrap_errors(self.url):
            self.cursor.execute(statement, params)
            return int(self.cursor.rowcount)
