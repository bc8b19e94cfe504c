"""The times a file can hold: years 1 to 9999, and no infinity.

PostgreSQL keeps dates and timestamps from 4713 BC to far past year 9999, and ``infinity``
(a common "valid until further notice"). The CSV text of a time (ISO 8601 without an expanded
year) and Python's datetime stop at years 1 to 9999. Outside them the ADBC path wrote Arrow's
placeholder text (``<value out of range: ...>``) into CSV files and meaningless instants into
Parquet, and the ``COPY`` path dropped the era of a BC time and wrote a ``timestamp`` of
``infinity`` as an empty field, all without an error. Now such a value fails its partition
(the others of its batch are read again without it) with one sentence that names the column.

CSV holds a ``timestamptz`` as local time in the partition's zone, so there the local year
counts (9999-12-31 23:00 UTC is in year 10000 at +14:00); Parquet holds the UTC instant.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..exceptions import DataError
from ..partitions import zone_of
from . import Column, Slice

if TYPE_CHECKING:
    from psycopg import sql

# Bounds as Arrow holds them: days and microseconds since 1970-01-01, the end exclusive.
FIRST_DAY, END_DAY = -719162, 2932897  # 0001-01-01, 10000-01-01
_DAY_US = 86_400_000_000
FIRST_US, END_US = FIRST_DAY * _DAY_US, END_DAY * _DAY_US
# Text that marks sluicegate's own message inside a PostgreSQL error (see ``guard``).
MARK = "sluicegate: "


def message(column: str, value: str = "a time") -> str:
    """The error of a partition with a time no file can hold in ``column``."""
    return (
        f"column {column!r} holds {value} outside the years 1 to 9999 (or infinity), which CSV "
        f"and Parquet files cannot hold as a time; cast it in select.sql (for example "
        f"CASE WHEN isfinite(x) AND x < '10000-01-01' THEN x END, or x::text; on MariaDB "
        f"CASE WHEN x >= '0001-01-02' AND x < '9999-12-31' THEN x END, or CAST(x AS CHAR))"
    )


def check_batch(batch: Any, parts: Sequence[Slice], columns: Sequence[Column], *, local: bool) -> None:
    """Raise DataError when a date or timestamp column of an Arrow batch (``ord`` first, then
    ``columns``) holds a value outside years 1 to 9999; ``local``: timestamptz values are
    written as local times in their partition's zone (CSV)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for i, column in enumerate(columns):
        array = batch.column(1 + i)
        kind = array.type
        if pa.types.is_date32(kind):
            raw, first, end = array.view(pa.int32()), FIRST_DAY, END_DAY
        elif pa.types.is_timestamp(kind) and kind.unit == "us":
            raw, first, end = array.view(pa.int64()), FIRST_US, END_US
        else:
            continue
        low, high = pc.min_max(raw).values()
        if low.as_py() is None:
            continue
        zoned = local and pa.types.is_timestamp(kind) and kind.tz is not None
        # A zone's offset is under a day: only values in the calendar's first or last day need
        # the partitions' zones to tell.
        margin = _DAY_US if zoned else 0
        if first + margin <= low.as_py() and high.as_py() < end - margin:
            continue
        if not zoned or not _inside_locally(raw, batch.column(0), parts):
            raise DataError(message(column.name))


def _inside_locally(raw: Any, ords: Any, parts: Sequence[Slice]) -> bool:
    """Whether every instant (µs) of ``raw`` is in years 1 to 9999 in its partition's zone."""
    import pyarrow.compute as pc

    runs = pc.run_end_encode(ords)
    start = 0
    for end, index in zip(runs.run_ends.to_pylist(), runs.values.to_pylist(), strict=True):
        low, high = (v.as_py() for v in pc.min_max(raw.slice(start, end - start)).values())
        start = end
        if low is None:
            continue
        zone = zone_of(parts[int(index)].zone or "UTC")
        first = FIRST_US - _offset_us(dt.datetime(1, 1, 2, tzinfo=zone))
        last = END_US - _offset_us(dt.datetime(9999, 12, 30, tzinfo=zone))
        if not first <= low <= high < last:
            return False
    return True


def _offset_us(at: dt.datetime) -> int:
    offset = at.utcoffset() or dt.timedelta(0)
    return (offset.days * 86400 + offset.seconds) * 1_000_000 + offset.microseconds


def guard(
    column: Column, local: sql.Composable, text: sql.Composable, result: str = "text"
) -> sql.Composable:
    """Server-side ``text`` of a time (``local``: the value as written, a local timestamp for a
    timestamptz), or for a time outside years 1 to 9999 an error carrying :func:`message`.

    SQL has no statement that raises; casting the message to an integer fails with the message
    quoted in the error, which :func:`unwrap` takes out (``result``: the type of ``text``, which
    the failing branch is cast to). The message holds the value, so the
    planner cannot fold the cast (and fail) ahead of the rows. '%' is doubled: the query binds
    parameters.
    """
    from psycopg import sql  # PostgreSQL only: SQLite projects do not load psycopg

    bound = "date" if column.kind == "date" else "timestamp"
    head, tail = (MARK + message(column.name, "\0")).split("\0")
    return sql.SQL(
        "CASE WHEN {local} >= '0001-01-01'::{bound} AND {local} < '10000-01-01'::{bound} THEN {text}"
        " WHEN {local} IS NOT NULL THEN ({head} OPERATOR(pg_catalog.||) {local}::pg_catalog.text"
        " OPERATOR(pg_catalog.||) {tail})::pg_catalog.int4::pg_catalog.text::pg_catalog.{result} END"
    ).format(
        local=local,
        bound=sql.SQL(bound),
        text=text,
        result=sql.SQL(result),
        head=sql.Literal(head.replace("%", "%%")),
        tail=sql.Literal(tail.replace("%", "%%")),
    )


def unwrap(detail: str) -> str | None:
    """The message of a :func:`guard` error inside a PostgreSQL error's text, if it is one: from
    :data:`MARK`, after the quote that opens it, to the message's last parenthesis, before the
    quote that closes it, each in the server's language (``"..."``, ``»...«``, ``« ... »``)."""
    start = detail.find(MARK)
    if start < 1 or detail[start - 1].isalnum():
        return None
    said = detail[start + len(MARK) :]
    return said[: said.rfind(")") + 1] or None
