"""Capture columns capture cannot use: MariaDB trigger key columns whose values a trigger cannot
record as JSON, and scan cursors that hold no time."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import db
from .exceptions import ConfigError, SluicegateError
from .ledger import Ledger
from .sources import ReadSpec, Source

if TYPE_CHECKING:
    from .drivers.partitioned import Task as TaskSpec

log = logging.getLogger("sluicegate.capture")


def of_keys(task: TaskSpec, changes: Sequence[Any]) -> list[Any]:
    """The captured ``(keys, first, last)`` changes with a value for each of the task's keys. The
    others, recorded by triggers installed before a key was added or removed, can be no partition's:
    they are left out with a warning (folding them failed every run, a traceback, exit 1)."""
    kept = [change for change in changes if len(change[0]) == len(task.keys)]
    if len(kept) < len(changes):
        log.warning(
            "task %s: %d captured change(s) hold other keys than %s (their triggers were installed "
            "before keys changed) and are not exported; run 'sluicegate install %s', then "
            "'sluicegate backfill %s' over the periods they changed",
            task.name, len(changes) - len(kept), ", ".join(task.keys), task.name, task.name,
        )  # fmt: skip
    return kept


def peek_changes(task: TaskSpec, inbox: Ledger, limit: int) -> list[Any]:
    """The inbox's first ``limit`` changes of ``task`` (:func:`of_keys`), left in the inbox."""
    return of_keys(task, inbox.capture.peek_changes(task.name, limit=limit))


_MARIADB_KEY_TYPES = (
    "SELECT column_name, data_type FROM information_schema.columns"
    " WHERE table_schema = COALESCE(%s, DATABASE()) AND table_name = %s"
)
# Bytes a JSON text cannot hold: the trigger's JSON_ARRAY of such a key (x'00ff') failed the
# application's INSERT ("Incorrect string value" for the inbox's `keys`).
_MARIADB_BYTES = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "bit", "geometry",
                  "point", "linestring", "polygon", "multipoint", "multilinestring", "multipolygon",
                  "geometrycollection"}  # fmt: skip


def refuse_binary_keys(task: TaskSpec, inbox: Ledger) -> None:
    """Refuse ``[capture] keys`` columns of a bytes type before any trigger could fail a write,
    and FLOAT ones, whose values a trigger records inexactly."""
    cap = task.capture
    assert cap.table
    where = cap.table.rsplit(".", 1) if "." in cap.table else (None, cap.table)
    with inbox.core.transaction() as cur:
        cur.execute(_MARIADB_KEY_TYPES, tuple(where))
        types = {str(name).lower(): str(kind).lower() for name, kind in cur.fetchall()}
    for key in task.keys:
        kind = types.get(cap.keys[key].lower())
        if kind == "float":  # JSON_ARRAY writes 6 significant digits: 1.2345678 matched no row
            raise ConfigError(
                f"{task.folder / 'task.toml'} [capture] keys.{key}: column {cap.keys[key]!r} of"
                f" {cap.table} is FLOAT, which a capture trigger records with 6 significant digits"
                " (1.2345678 as 1.23457, matching no row: its partition would be exported without its"
                " rows); make it DOUBLE or DECIMAL, or use a text or integer key column"
            )
        if kind in _MARIADB_BYTES:
            raise ConfigError(
                f"{task.folder / 'task.toml'} [capture] keys.{key}: column {cap.keys[key]!r} of"
                f" {cap.table} is {kind.upper()}, whose bytes a capture trigger cannot record (it would"
                " fail the table's writes); use a text or integer key column"
            )


_NO_TIME = ("int", "float", "decimal", "bool", "binary")  # no max() of these reads as a time


def scan_cursor_problems(task: TaskSpec, source: Source) -> list[str]:
    """A scan's cursor of a type that holds no time (an AUTO_INCREMENT id, a MariaDB TIME): `check`
    passed it, and every run with a row in the table failed (exit 2) on the scan's max() of it."""
    cap = task.capture
    if cap.mode != "scan" or not cap.table or not cap.cursor or source.dialect is db.SQLITE:
        return []  # SQLite: every value may be a time's text
    q = source.dialect.quote
    try:
        [column] = source.describe(
            ReadSpec(select_sql=f"SELECT {q(cap.cursor)} FROM {q(cap.table)}", folder=task.folder)
        )
    except SluicegateError:  # unreadable: capture_problems said why
        return []
    if column.kind not in _NO_TIME and not column.as_text:
        return []
    kind = "text" if column.as_text else column.kind
    return [
        f"{task.folder / 'task.toml'} [capture] cursor: column {cap.cursor!r} of {cap.table} is {kind}, not a"
        " time; name a column holding the time each row was written, such as ingested_at"
    ]
