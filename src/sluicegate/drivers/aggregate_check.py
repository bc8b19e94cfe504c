"""Checks of an aggregate task that read its window table: can SQLite read the window column's
values as times."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import tables

if TYPE_CHECKING:
    from .aggregate import Task


def unreadable_times(source: tables.TableDb, task: Task) -> str | None:
    """SQLite: the problem of a window column holding a value ``julianday()`` cannot read (Unix
    seconds such as 1710072000, text that is no ISO 8601 time), which no window holds: with Unix
    seconds in every row each evaluation found no row and emptied the readers' table. One row is
    looked for, through the index on ``julianday(column)`` when there is one."""
    col = tables.quote("sqlite", task.window_column)
    _, rows = source.query(
        f"SELECT {col}, typeof({col}) FROM {tables.quote('sqlite', task.window_table)}"
        f" WHERE julianday({col}) IS NULL AND {col} IS NOT NULL LIMIT 1"
    )
    if not rows:
        return None
    value, kind = rows[0]
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    table, column = task.window_table, task.window_column
    return (
        f"{task.folder / 'task.toml'} [window] column: {table}.{column} holds {shown} ({kind}), which "
        "SQLite's julianday() cannot read as a time, so no window would hold that row; store ISO 8601 "
        f"text such as 2024-03-10T12:00:00Z (Unix seconds: UPDATE {table} SET {column} = datetime({column}, "
        f"'unixepoch') WHERE julianday({column}) IS NULL AND datetime({column}, 'unixepoch') IS NOT NULL)"
    )
