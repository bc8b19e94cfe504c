"""The Arrow type of each column kind: what the Parquet writer writes and the ADBC reader yields.

Timestamps carry the partition's zone (``timestamp[us, tz=...]``), integers are int64,
floats float64, ``numeric(p, s)`` is ``decimal128(p, s)``, text is string, bytes are binary.
"""

from __future__ import annotations

import pyarrow as pa

from .sources import Column


def arrow_type(col: Column, zone: str | None) -> pa.DataType | None:
    """The Arrow type for a column kind; None means 'infer from the values'."""
    if col.kind == "int":
        return pa.int64()
    if col.kind == "float":
        return pa.float64()
    if col.kind == "decimal":  # PostgreSQL 15's scales below 0 or above the precision: no Parquet decimal
        if col.precision and col.scale is not None and 0 <= col.scale <= col.precision <= 38:
            return pa.decimal128(col.precision, col.scale)
        return pa.string()
    if col.kind == "text":
        return pa.string()
    if col.kind == "timestamptz":
        return pa.timestamp("us", tz=zone or "UTC")
    if col.kind == "timestamp":
        return pa.timestamp("us")
    if col.kind == "date":
        return pa.date32()
    if col.kind == "bool":
        return pa.bool_()
    if col.kind == "binary":
        return pa.binary()
    return None


def cast_column(column: pa.ChunkedArray, typ: pa.DataType) -> pa.ChunkedArray:
    """``column`` as ``typ``; raises Arrow's errors when a value does not fit.

    Zoned timestamps of the same unit only change their zone: Arrow stores every zoned
    timestamp in UTC, so a zero-copy view does that, without a compute call (which gives up the
    GIL and waits to get it back, 0.2-0.5 ms on a busy process).
    """
    old = column.type
    if old.equals(typ):
        return column
    if (
        pa.types.is_timestamp(old)
        and pa.types.is_timestamp(typ)
        and old.unit == typ.unit
        and old.tz is not None
        and typ.tz is not None
    ):
        return pa.chunked_array([chunk.view(typ) for chunk in column.chunks], type=typ)
    return column.cast(typ)
