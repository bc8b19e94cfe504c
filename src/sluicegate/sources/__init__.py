"""Sources: read a batch of partitions from a database with one query.

A :class:`Source` yields ``(index, chunk)`` pairs in partition order, where ``index`` is the
position of the partition in the batch and ``chunk`` is either a list of row tuples, a
:class:`CsvChunk` (``"csv"`` mode: records encoded by Arrow or PostgreSQL ``COPY``) or an Arrow
table (``"arrow"`` mode). All chunks
of one partition are contiguous. Nothing is materialised beyond one chunk.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

from ..config import TaskSpec
from ..db import Dialect, dialect_of
from ..partitions import Partition

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


class Source(Protocol):
    """A database that tasks read from."""

    dialect: Dialect
    modes: tuple[Mode, ...]

    def describe(self, task: TaskSpec) -> list[Column]:
        """Run the task's select with no rows and return its columns; raises on a bad query."""
        ...

    def read(
        self, task: TaskSpec, parts: Sequence[Partition], columns: Sequence[Column], mode: Mode
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, chunk)`` for the rows of ``parts``, in one query and one snapshot.

        Partitions without rows yield nothing. Rows are ordered by partition, then the
        time column, then the task's ``order_by``, then its ``primary_key`` or every column.
        """
        ...

    def zones(self, task: TaskSpec) -> dict[str, str]:
        """Map each partition's non-time key (canonical text) to its IANA zone via ``zone_sql``."""
        ...

    def execute(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        """Run a small query and return all rows (used by scans and checks)."""
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
    from .postgres import PostgresSource

    return PostgresSource(url)


def order_columns(task: TaskSpec, columns: Sequence[Column]) -> list[str]:
    """The stable row order inside a partition: time column, order_by, then the primary key.

    Without a declared primary key every column follows, so equal rows are the only ties and
    the order, hence the file's bytes, is fully determined. A declared key stands for that
    tail: the database sorts on a few columns instead of all of them (cheaper, most of all with
    wide text columns, whose ties would each be a text comparison).
    """
    names = [task.time.column] if task.time else []
    names += [c for c in task.order_by if c not in names]
    tail = list(task.primary_key) if task.primary_key else [c.name for c in columns]
    names += [c for c in tail if c not in names]
    return names


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
