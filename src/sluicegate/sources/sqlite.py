"""SQLite source: the embedded default. Timestamps are ISO-8601 text, compared by julianday()."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, cast

from .. import db
from ..config import TaskSpec
from ..exceptions import ConfigError
from ..partitions import Partition, canonical_key
from . import Column, ColumnKind, Mode, group_rows, order_columns

CHUNK_ROWS = 5000
_TYPEOF: dict[str, ColumnKind] = {"integer": "int", "real": "float", "text": "text", "blob": "binary"}


def _kind(name: str) -> ColumnKind:
    """A kind named in [columns] (one of config.COLUMN_KINDS, checked when the task was loaded)."""
    return cast("ColumnKind", name)


class SqliteSource:
    """Reads task selects from a SQLite file."""

    dialect = db.SQLITE
    modes: tuple[Mode, ...] = ("rows",)

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = db.connect(url)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def describe(self, task: TaskSpec) -> list[Column]:
        """Return the select's columns and their kinds, fixed once for the task.

        SQLite results have no declared types, so a kind comes from ``[columns]`` in task.toml,
        else from the type (``typeof()``) of the column's first non-NULL value in the select's
        result; the [time] column is timestamptz, and a column that is NULL everywhere is text.
        Every file written from these columns has the same Parquet schema.
        """
        where = task.folder / "select.sql"
        try:
            cur = self.conn.execute(f"SELECT * FROM ({task.select_sql}) AS q LIMIT 0")
        except sqlite3.Error as exc:
            raise ConfigError(f"{where}: the query failed: {exc}; fix the SQL") from None
        names = [d[0] for d in cur.description]
        pinned = dict(task.columns)
        unknown = sorted(set(pinned) - set(names))
        if unknown:
            raise ConfigError(
                f"{task.folder / 'task.toml'} [columns] {unknown[0]}: the select has no such column; "
                f"its columns: {', '.join(names)}"
            )
        time_column = task.time.column if task.time else None
        kinds = [_kind(pinned[n]) if n in pinned else self._infer(task, n, time_column) for n in names]
        return [Column(name=name, kind=kind) for name, kind in zip(names, kinds, strict=True)]

    def _infer(self, task: TaskSpec, name: str, time_column: str | None) -> ColumnKind:
        """The kind of a column's first non-NULL value, by one small query."""
        if name == time_column:
            return "timestamptz"
        q = self.dialect.quote
        column = f"q.{q(name)}"
        query = f"SELECT typeof({column}) FROM ({task.select_sql}) AS q WHERE {column} IS NOT NULL LIMIT 1"
        with db.wrap_errors(self.url):
            row = self.conn.execute(query).fetchone()
        return _TYPEOF.get(row[0], "text") if row else "text"

    def execute(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        """Run a small query and return all rows."""
        with db.wrap_errors(self.url):
            return list(self.conn.execute(query, params).fetchall())

    def zones(self, task: TaskSpec) -> dict[str, str]:
        """Map canonical non-time keys to zones using the task's ``zone_sql``."""
        assert task.time and task.time.zone_sql
        return {canonical_key(row[:-1]): str(row[-1]) for row in self.execute(task.time.zone_sql)}

    def read(
        self, task: TaskSpec, parts: Sequence[Partition], columns: Sequence[Column], mode: Mode
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, rows)`` chunks for ``parts`` from one query in one read transaction."""
        q = self.dialect.quote
        nkeys = len(task.keys)
        width = nkeys + (3 if task.time else 1)
        values = ", ".join("(" + ", ".join("?" * width) + ")" for _ in parts)
        cols = ["ord", *(f"k{i}" for i in range(nkeys))] + (["ws", "we"] if task.time else [])
        on = [f"q.{q(k)} = p.k{i}" for i, k in enumerate(task.keys)]
        params: list[Any] = []
        for idx, part in enumerate(parts):
            params += [idx, *part.values[:nkeys]]
            if task.time:
                assert part.start and part.end
                params += [part.start.isoformat(), part.end.isoformat()]
        if task.time:
            t = f"julianday(q.{q(task.time.column)})"
            lo, hi = (">", "<=") if task.time.boundary == "end" else (">=", "<")
            on += [f"{t} {lo} julianday(p.ws)", f"{t} {hi} julianday(p.we)"]
        time_col = task.time.column if task.time else None
        order = ", ".join(
            f"julianday(q.{q(c)})" if c == time_col else f"q.{q(c)}" for c in order_columns(task, columns)
        )
        query = (
            f"WITH p({', '.join(cols)}) AS (VALUES {values}) "
            f"SELECT p.ord, q.* FROM ({task.select_sql}) AS q JOIN p ON {' AND '.join(on) or '1'} "
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
