"""SQLite source: the embedded default. Timestamps are ISO-8601 text, compared by julianday()."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from .. import db
from ..config import TaskSpec
from ..exceptions import ConfigError
from ..partitions import Partition, canonical_key
from . import Column, Mode, group_rows, order_columns

CHUNK_ROWS = 5000


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
        """Return the select's columns (SQLite has no declared result types: kind 'other')."""
        try:
            cur = self.conn.execute(f"SELECT * FROM ({task.select_sql}) AS q LIMIT 0")
        except sqlite3.Error as exc:
            raise ConfigError(f"{task.folder / 'select.sql'}: the query failed: {exc}; fix the SQL") from None
        time_column = task.time.column if task.time else None
        return [
            Column(name=d[0], kind="timestamptz" if d[0] == time_column else "other") for d in cur.description
        ]

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
