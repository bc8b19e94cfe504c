"""Record sinks: write JSON-like records into a database table, an idempotent upsert by a declared key.

A :class:`RecordSink` takes JSON-like records (dicts), checks each against the declared
columns (:data:`KINDS`), and upserts the valid ones into its table in **one transaction per
call**: ``INSERT ... ON CONFLICT (key) DO UPDATE``, so writing the same records twice leaves
one row per key. Nothing is dropped silently: a record that fails the checks, or that the
database rejects (a constraint, a type), is counted in :attr:`UpsertResult.errors` with its
first messages, and the others are written. When the whole batch is rejected by the
database, each record is tried again alone (inside savepoints), so one bad record cannot
keep the others out.

PostgreSQL and SQLite. Identifiers are validated names, quoted by the dialect; values are
always bound parameters. Used by the ``load`` stage of blocks tasks. (``tables.py`` is the
other table writer, for rows of SQL results: aggregate tasks' atomic replace and upsert.)
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import db
from .exceptions import ConfigError, DataError, SluicegateError

# The declared kinds of columns and the SQL type a created table gives them.
KINDS: dict[str, tuple[str, str]] = {  # kind: (PostgreSQL type, SQLite type)
    "text": ("text", "TEXT"),
    "int": ("bigint", "INTEGER"),
    "float": ("double precision", "REAL"),
    "bool": ("boolean", "INTEGER"),
    "json": ("jsonb", "TEXT"),
    "timestamptz": ("timestamptz", "TEXT"),  # ISO 8601 text, or a number of seconds
    "epoch_ms": ("timestamptz", "TEXT"),  # unix milliseconds, as MDS times are
}
MAX_MESSAGES = 5


@dataclass(frozen=True, kw_only=True)
class TableSpec:
    """Where records go: a table, its key columns, and every column with its kind."""

    table: str  # a validated name, optionally schema-qualified ("public.trips")
    key: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]  # (name, kind), in table order
    create: bool = False  # create the table (with the key as primary key) when it is missing


@dataclass(frozen=True, kw_only=True)
class UpsertResult:
    """How many records came, how many were written, how many were rejected, and why (the first few)."""

    total: int
    processed: int
    errors: int
    messages: list[str] = field(default_factory=list)


def coerce(value: Any, kind: str) -> Any:
    """``value`` as the database takes a ``kind`` column; raises ValueError when it does not fit."""
    if value is None:
        return None
    if kind == "text":
        if isinstance(value, dict | list):
            raise ValueError(f"{type(value).__name__} is not text")
        return str(value)
    if kind == "int":
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{value!r} is not a whole number")
        return int(value)
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not true or false")
        return value
    if kind == "json":
        return json.dumps(value, separators=(",", ":"))
    return _timestamp(value, kind)


def _timestamp(value: Any, kind: str) -> dt.datetime:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a time")
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value / 1000 if kind == "epoch_ms" else value, dt.UTC)
    if kind == "epoch_ms":
        raise ValueError(f"{value!r} is not unix milliseconds")
    parsed = dt.datetime.fromisoformat(str(value))
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset")
    return parsed


class RecordSink:
    """Upserts records into one table of one database."""

    def __init__(self, url: str, spec: TableSpec) -> None:
        self.url = url
        self.spec = spec
        self.dialect = db.dialect_of(url)
        self.conn = db.connect(url)
        self._names = [name for name, _ in spec.columns]
        self._statement = self._upsert_sql()
        if spec.create:
            self.create()

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def __enter__(self) -> RecordSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self) -> None:
        """Create the table if it does not exist, the key as its primary key."""
        column = 0 if self.dialect is db.POSTGRESQL else 1
        cols = [f"{self.dialect.quote(n)} {KINDS[k][column]}" for n, k in self.spec.columns]
        cols.append(f"PRIMARY KEY ({', '.join(self.dialect.quote(k) for k in self.spec.key)})")
        statement = f"CREATE TABLE IF NOT EXISTS {self.dialect.quote(self.spec.table)} ({', '.join(cols)})"
        with db.wrap_errors(self.url), db.transaction(self.conn, self.dialect, immediate=True) as cur:
            if self.dialect is db.POSTGRESQL:  # concurrent CREATE ... IF NOT EXISTS can still collide
                cur.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"sluicegate table {self.spec.table}",)
                )
            cur.execute(statement)

    def check(self) -> list[str]:
        """Problems of the table: missing, or without a declared column."""
        probe = f"SELECT * FROM {self.dialect.quote(self.spec.table)} WHERE 1 = 0"
        try:
            with db.wrap_errors(self.url), db.transaction(self.conn, self.dialect) as cur:
                cur.execute(probe)
                have = {d[0] for d in cur.description}
        except SluicegateError as exc:
            return [f"table {self.spec.table}: {exc}"]
        return [f"table {self.spec.table} has no column {n!r}" for n in self._names if n not in have]

    def _upsert_sql(self) -> str:
        q = self.dialect.quote
        mark = "%s" if self.dialect is db.POSTGRESQL else "?"
        values = ", ".join(self._cast(mark, kind) for _, kind in self.spec.columns)
        updates = [f"{q(n)} = EXCLUDED.{q(n)}" for n in self._names if n not in self.spec.key]
        action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
        return (
            f"INSERT INTO {q(self.spec.table)} ({', '.join(q(n) for n in self._names)}) VALUES ({values}) "
            f"ON CONFLICT ({', '.join(q(k) for k in self.spec.key)}) {action}"
        )

    def _cast(self, mark: str, kind: str) -> str:
        return f"{mark}::jsonb" if kind == "json" and self.dialect is db.POSTGRESQL else mark

    def rows(self, records: Iterable[dict[str, Any]]) -> tuple[list[tuple[Any, ...]], int, list[str]]:
        """The valid records as parameter rows; and how many records were rejected, with messages."""
        rows: list[tuple[Any, ...]] = []
        errors, messages = 0, list[str]()
        for number, record in enumerate(records, 1):
            try:
                rows.append(self._row(record))
            except ValueError as exc:
                errors += 1
                if len(messages) < MAX_MESSAGES:
                    messages.append(f"record {number}: {exc}")
        return rows, errors, messages

    def _row(self, record: dict[str, Any]) -> tuple[Any, ...]:
        out = []
        for name, kind in self.spec.columns:
            value = record.get(name)
            if value is None and name in self.spec.key:
                raise ValueError(f"key {name} is missing")
            try:
                value = coerce(value, kind)
            except (ValueError, TypeError, OverflowError) as exc:
                raise ValueError(f"{name}: {exc}") from None
            if isinstance(value, dt.datetime) and self.dialect is db.SQLITE:
                value = value.isoformat()  # SQLite has no timestamp type: ISO 8601 text sorts right
            out.append(value)
        return tuple(out)

    def upsert(self, records: Iterable[dict[str, Any]]) -> UpsertResult:
        """Check and upsert ``records`` in one transaction; count what is rejected (see the module)."""
        rows, errors, messages = self.rows(records)
        total = len(rows) + errors
        if not rows:
            return UpsertResult(total=total, processed=0, errors=errors, messages=messages)
        with db.wrap_errors(self.url), db.transaction(self.conn, self.dialect) as cur:
            rejected = self._write(cur, rows, messages)
        return UpsertResult(
            total=total, processed=len(rows) - rejected, errors=errors + rejected, messages=messages
        )

    def _write(self, cur: Any, rows: Sequence[tuple[Any, ...]], messages: list[str]) -> int:
        """Write ``rows`` at once, or row by row if the batch is rejected; return how many were rejected."""
        try:
            self._savepoint(cur, lambda: cur.executemany(self._statement, rows))
            return 0
        except DataError:
            pass
        rejected = 0
        for row in rows:
            try:
                self._savepoint(cur, lambda row=row: cur.execute(self._statement, row))
            except DataError as exc:
                rejected += 1
                if len(messages) < MAX_MESSAGES:
                    key = dict(zip(self._names, row, strict=True))
                    shown = ", ".join(f"{k}={key[k]!r}" for k in self.spec.key)
                    messages.append(f"{shown}: {exc}")
        return rejected

    def _savepoint(self, cur: Any, step: Any) -> None:
        """Run ``step``; on a terminal database error undo only it (transient errors end the transaction)."""
        cur.execute("SAVEPOINT sluicegate_row")
        try:
            with db.wrap_errors(self.url):
                step()
        except DataError:
            cur.execute("ROLLBACK TO SAVEPOINT sluicegate_row")
            raise
        cur.execute("RELEASE SAVEPOINT sluicegate_row")


def table_spec(raw: Any, where: str) -> TableSpec:
    """Read a ``[stages.load]`` table declaration: ``table``, ``key``, ``[columns]``, ``create``."""
    from . import validate

    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: use a table with table, key and [columns]")
    table = raw.get("table")
    if not isinstance(table, str) or not all(validate.NAME.match(p) for p in table.split(".")):
        raise ConfigError(
            f"{where} table: {table!r} is not a table name; use letters, digits and underscores"
        )
    columns = raw.get("columns")
    if not isinstance(columns, dict) or not columns:
        raise ConfigError(f'{where} columns: declare each column and its kind, e.g. {{ trip_id = "text" }}')
    for name, kind in columns.items():
        validate.identifier(name, f"{where} columns")
        if kind not in KINDS:
            raise ConfigError(
                f"{where} columns.{name}: {kind!r} is not a kind; use one of {', '.join(KINDS)}"
            )
    key = validate.identifiers(raw.get("key"), f"{where} key", '["trip_id"]')
    if not key or any(k not in columns for k in key):
        raise ConfigError(f'{where} key: name one or more of the declared columns, e.g. key = ["trip_id"]')
    create = raw.get("create", False)
    if not isinstance(create, bool):
        raise ConfigError(f"{where} create: use true or false")
    return TableSpec(table=table, key=key, columns=tuple(columns.items()), create=create)
