"""Sources: read a batch of units (partitions, windows) from a database with one query.

A :class:`Source` yields ``(index, chunk)`` pairs in unit order, where ``index`` is the
position of the unit's :class:`Slice` in the batch and ``chunk`` is either a list of row tuples, a
:class:`CsvChunk` (``"csv"`` mode: records encoded by Arrow or PostgreSQL ``COPY``) or an Arrow
table (``"arrow"`` mode). All chunks
of one partition are contiguous. Nothing is materialised beyond one chunk.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

from ..db import Dialect, dialect_of
from ..exceptions import ConfigError
from ..partitions import canonical_key

Mode = Literal["rows", "csv", "arrow"]
ColumnKind = Literal[
    "int", "float", "decimal", "text", "timestamptz", "timestamp", "date", "bool", "binary", "other"
]


class CsvChunk(NamedTuple):
    """CSV records of one partition, already encoded, and how many records they hold."""

    data: bytes
    rows: int


@dataclass(frozen=True, kw_only=True)
class Column:
    """One column of a task's select, with the kind used to encode it.

    ``precision`` and ``scale`` are a decimal's; for a float, ``precision`` 24 marks a
    single-precision one (PostgreSQL ``real``). ``as_text`` marks a column of a type sluicegate
    has no encoding of its own for (``json``, ``uuid``, ``interval``, arrays, ...): the source
    reads it as the database's text for the value, and it is written as text (``kind`` "text").
    The kind "other" (values of unknown type, inferred per file) is left to archive tasks.
    """

    name: str
    kind: ColumnKind
    precision: int | None = None
    scale: int | None = None
    as_text: bool = False
    zoneless: bool = False  # a time without a zone (MariaDB DATETIME): see ReadSpec.datetime_zone
    pg_type: str | None = None  # an as_text column's PostgreSQL type (format_type): key values are cast to it


@dataclass(frozen=True, kw_only=True)
class ReadSpec:
    """What a source needs to read a task's units: the select and how units cut its rows.

    Each driver builds one from its task. ``keys`` are the select's columns matched against
    each :class:`Slice`'s key values; ``time_column`` is compared with the slices' windows,
    ``[start, end)`` or with ``time_ending`` ``(start, end]``. ``day_zone`` (daily partitions in
    one fixed zone) also joins on the local date, which the planner can hash. Rows are ordered
    by ``time_column``, ``order_by``, then ``primary_key`` or every column, so the order, and a
    file's bytes, is fully determined.
    """

    select_sql: str
    folder: Path  # the task folder, named in messages
    keys: tuple[str, ...] = ()
    time_column: str | None = None
    time_ending: bool = False
    day_zone: str | None = None
    order_by: tuple[str, ...] = ()
    primary_key: tuple[str, ...] = ()
    columns: tuple[tuple[str, str], ...] = ()  # [columns] kind pins (SQLite)
    datetime_zone: str | None = None  # MariaDB: the zone of DATETIME values (None: UTC)


@dataclass(frozen=True, kw_only=True)
class Slice:
    """The rows of one unit: key values (of ``ReadSpec.keys``) and a UTC window, with its zone."""

    keys: tuple[Any, ...] = ()
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    zone: str | None = None  # timestamps are written in this zone
    day: dt.date | None = None  # the local day, for ``ReadSpec.day_zone``


class Snapshot(Protocol):
    """One transaction on the source that reads and then changes rows (archive tasks).

    PostgreSQL: ``REPEATABLE READ``, so what is read is what is deleted; MariaDB:
    ``SERIALIZABLE`` (InnoDB's deletes do not see a snapshot, so the read locks what it read);
    SQLite: the write lock (``BEGIN IMMEDIATE``). Committed when the block ends, rolled back on error.
    """

    cursor: Any  # the transaction's cursor, for ledger writes in the same database

    def read(
        self, query: str, params: dict[str, Any], mode: Mode
    ) -> tuple[list[Column], Mode, Iterator[Any]]:
        """Run ``query``; return its columns, the mode of its chunks (``mode`` or "rows") and the chunks."""
        ...

    def execute(self, statement: str, params: dict[str, Any]) -> int:
        """Run ``statement`` and return how many rows it changed."""
        ...


class Source(Protocol):
    """A database that tasks read from."""

    dialect: Dialect
    modes: tuple[Mode, ...]
    url: str

    def describe(self, spec: ReadSpec) -> list[Column]:
        """Run the select with no rows and return its columns; raises ConfigError on a bad query."""
        ...

    def read(
        self, spec: ReadSpec, slices: Sequence[Slice], columns: Sequence[Column], mode: Mode
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, chunk)`` for the rows of ``slices``, in one query and one snapshot.

        Slices without rows yield nothing; all chunks of one slice are contiguous, in order.
        """
        ...

    def zones(self, zone_sql: str) -> dict[str, str | None]:
        """Map canonical key text to an IANA zone (None: NULL) with a ``zone_sql`` query (keys, then zone)."""
        ...

    def execute(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        """Run a small query and return all rows (used by scans and checks); a time of day (a
        PostgreSQL time or timetz, a MariaDB TIME) as the server's text, as a capture trigger
        records it."""
        ...

    def snapshot(self) -> contextlib.AbstractContextManager[Snapshot]:
        """One read-then-change transaction (see :class:`Snapshot`)."""
        ...

    def reconnect(self, stop: threading.Event | None = None, seconds: float | None = None) -> None:
        """After a lost connection: wait for a new one, with backoff (:func:`sluicegate.db.reconnect`),
        for up to ``seconds`` (default: its own); raises :class:`~sluicegate.exceptions.SourceLost`
        when the source stays away."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...


def open_source(url: str) -> Source:
    """Open the source database at ``url``."""
    dialect = dialect_of(url)
    if dialect.name == "sqlite":
        from .sqlite import SqliteSource

        return SqliteSource(url)
    if dialect.name == "mariadb":
        from .mariadb import MariaDbSource

        return MariaDbSource(url)
    from .postgres import PostgresSource

    return PostgresSource(url)


def distinct_names(spec: ReadSpec, columns: list[Column]) -> list[Column]:
    """``columns``, when no two share a name; a batch query names each (``q."v"`` would be
    ambiguous) and a file's header and schema must tell them apart."""
    seen: set[str] = set()
    for column in columns:
        if column.name in seen:
            raise ConfigError(
                f"{spec.folder / 'select.sql'}: the result has two columns named {column.name!r}; "
                "give each its own name (AS ...)"
            )
        seen.add(column.name)
    return columns


def order_columns(spec: ReadSpec, columns: Sequence[Column]) -> list[str]:
    """The stable row order inside a unit: time column, order_by, then the primary key.

    Without a declared primary key every column follows, so equal rows are the only ties and
    the order, hence the file's bytes, is fully determined. A declared key stands for that
    tail: the database sorts on a few columns instead of all of them (cheaper, most of all with
    wide text columns, whose ties would each be a text comparison).
    """
    names = [spec.time_column] if spec.time_column else []
    names += [c for c in spec.order_by if c not in names]
    tail = list(spec.primary_key) if spec.primary_key else [c.name for c in columns]
    names += [c for c in tail if c not in names]
    return names


def zone_map(rows: Sequence[Sequence[Any]]) -> dict[str, str | None]:
    """A ``zone_sql`` result (keys, then the zone) by canonical key; a NULL zone as None (its text
    was 'None', which a message showed as if the data held it)."""
    return {canonical_key(row[:-1]): None if row[-1] is None else str(row[-1]) for row in rows}


def group_rows(cur: Any, chunk_rows: int) -> Iterator[tuple[int, list[tuple[Any, ...]]]]:
    """Group a cursor's ``(ord, *row)`` results into ``(ord, rows)`` chunks of at most ``chunk_rows``."""
    current = -1
    chunk: list[tuple[Any, ...]] = []
    while rows := cur.fetchmany(chunk_rows):
        for row in rows:
            if row[0] != current:
                if chunk:
                    yield current, chunk
                current, chunk = row[0], []
            chunk.append(tuple(row[1:]))
        if len(chunk) >= chunk_rows:
            yield current, chunk
            chunk = []
    if chunk:
        yield current, chunk
