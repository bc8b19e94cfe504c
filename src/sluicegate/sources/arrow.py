"""Arrow batches from PostgreSQL through ADBC (the ``fast`` extra), for Parquet output.

ADBC's PostgreSQL driver reads the result with binary ``COPY`` straight into Arrow memory,
which is several times faster than building Arrow arrays from Python rows. The query is
rendered with psycopg's client-side binding, so values are quoted by psycopg.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import io
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from psycopg import sql

from ..partitions import Partition, zone_of
from . import CsvChunk


def available() -> bool:
    """True when the ADBC PostgreSQL driver is installed."""
    return importlib.util.find_spec("adbc_driver_postgresql") is not None


def open_arrow(url: str) -> Any:
    """An ADBC connection with the session settings the batch query expects."""
    import adbc_driver_postgresql.dbapi as adbc

    conn = adbc.connect(url)
    with conn.cursor() as cur:
        cur.execute("SET TimeZone TO 'UTC'")
        cur.execute("SET work_mem TO '64MB'")
        cur.execute("SET jit TO off")  # JIT compiled the batch query for seconds and won nothing back
    return conn


def read_arrow(
    aconn: Any, conn: psycopg.Connection[Any], query: sql.Composed, params: list[Any]
) -> Iterator[tuple[int, pa.Table]]:
    """Yield ``(index, table)`` slices of the batch result, split on the ``ord`` column."""
    text = psycopg.ClientCursor(conn).mogrify(query, params)
    with aconn.cursor() as cur:
        cur.execute(text)
        reader = cur.fetch_record_batch()
        for batch in reader:
            yield from _split(batch)


def _split(batch: pa.RecordBatch) -> Iterator[tuple[int, pa.Table]]:
    if batch.num_rows == 0:
        return
    ords = batch.column(0)
    table = pa.Table.from_batches([batch]).drop_columns([batch.schema.names[0]])
    # Rows arrive ordered by ord: find the runs with run-end encoding.
    runs = pc.run_end_encode(ords)
    ends = runs.run_ends.to_pylist()
    values = runs.values.to_pylist()
    start = 0
    for end, value in zip(ends, values, strict=True):
        yield int(value), table.slice(start, end - start)
        start = end


def read_csv(
    aconn: Any,
    conn: psycopg.Connection[Any],
    query: sql.Composed,
    params: list[Any],
    parts: Sequence[Partition],
) -> Iterator[tuple[int, CsvChunk]]:
    """Yield ``(index, csv bytes)`` per partition, encoded by Arrow's C++ CSV writer a batch at a time.

    Timestamps with a zone become ISO 8601 text in each partition's zone. When no text value
    holds a line break, the whole batch is encoded once and split by line; otherwise each
    partition's slice is encoded on its own.
    """
    text = psycopg.ClientCursor(conn).mogrify(query, params)
    offsets = _Offsets(parts)
    with aconn.cursor() as cur:
        cur.execute(text)
        for batch in cur.fetch_record_batch():
            if batch.num_rows == 0:
                continue
            ords = batch.column(0)
            table = pa.Table.from_batches([batch]).drop_columns([batch.schema.names[0]])
            runs = pc.run_end_encode(ords)
            ends, values = runs.run_ends.to_pylist(), runs.values.to_pylist()
            columns = [
                offsets.format(c, ends, values) if pa.types.is_timestamp(c.type) else c for c in table.columns
            ]
            table = pa.Table.from_arrays(columns, names=table.column_names)
            if _has_line_breaks(table):
                start = 0
                for end, value in zip(ends, values, strict=True):
                    yield int(value), CsvChunk(_encode(table.slice(start, end - start)), end - start)
                    start = end
                continue
            if len(ends) == 1:  # the whole batch is one partition's (large partitions): no split
                yield int(values[0]), CsvChunk(_encode(table), ends[0])
                continue
            lines = _encode(table).split(b"\n")
            start = 0
            for end, value in zip(ends, values, strict=True):
                yield int(value), CsvChunk(b"\n".join(lines[start:end]) + b"\n", end - start)
                start = end


class _Offsets:
    """UTC offsets per partition: constant over a window except on DST-change days.

    Formatting with Arrow's zone-aware strftime looks up the zone for every value and is slow;
    instead each row gets its partition's offset added to UTC and is formatted as a naive time,
    with the offset text appended. Windows that span an offset change get per-row offsets.
    """

    def __init__(self, parts: Sequence[Partition]) -> None:
        self.parts = parts
        self.constant: list[int | None] = []
        for part in parts:
            tz = zone_of(part.zone or "UTC")
            if part.start is None or part.end is None:
                # No time key: there is no window to look at, and the zone is UTC unless set.
                self.constant.append(0 if part.zone in (None, "UTC") else None)
                continue
            first = part.start.astimezone(tz).utcoffset()
            last = (part.end - dt.timedelta(microseconds=1)).astimezone(tz).utcoffset()
            same = first == last and first is not None
            self.constant.append(int(first.total_seconds()) if same and first is not None else None)

    def format(self, column: Any, ends: list[int], values: list[int]) -> Any:
        """ISO 8601 text for a timestamp column of one batch."""
        if column.type.tz is None:
            return _iso(column)
        utc = column.cast(pa.timestamp("us", tz="UTC"))
        fixed = [self.constant[v] for v in values]
        if len(set(fixed)) == 1 and fixed[0] is not None:  # one offset for the whole batch
            shift: Any = pa.scalar(fixed[0], pa.int64())
            text: Any = pa.scalar(_offset_texts([fixed[0]])[0], pa.string())
        else:
            shift = self._shift(utc, ends, values)
            text = _offset_text(shift)
        micros = pc.add(utc.cast(pa.int64()), pc.multiply(shift, 1_000_000))
        local = _iso(micros.cast(pa.timestamp("us")))
        return pc.if_else(
            pc.is_null(column), pa.scalar(None, pa.string()), pc.binary_join_element_wise(local, text, "")
        )

    def _shift(self, utc: Any, ends: list[int], values: list[int]) -> Any:
        """Each row's offset in seconds: run-length decoded for fixed offsets, per row on DST days."""
        if all(self.constant[v] is not None for v in values):
            runs = pa.RunEndEncodedArray.from_arrays(ends, [self.constant[v] for v in values])
            return pc.run_end_decode(runs).cast(pa.int64())
        seconds: list[int] = []
        start = 0
        for end, value in zip(ends, values, strict=True):
            fixed = self.constant[value]
            if fixed is not None:
                seconds.extend([fixed] * (end - start))
            else:
                tz = zone_of(self.parts[value].zone or "UTC")
                for instant in utc.slice(start, end - start).to_pylist():
                    offset = instant.astimezone(tz).utcoffset() if instant is not None else None
                    seconds.append(int(offset.total_seconds()) if offset is not None else 0)
            start = end
        return pa.array(seconds, type=pa.int64())


def _iso(column: Any) -> Any:
    """``YYYY-MM-DDTHH:MM:SS[.ffffff]`` for a zone-less timestamp column.

    Whole seconds take Arrow's cast to text (``YYYY-MM-DD HH:MM:SS``) with the space made a
    ``T``: the same text as strftime, about six times faster.
    """
    whole = _whole_seconds(column)
    if whole.type.unit == "s":
        return pc.utf8_replace_slice(whole.cast(pa.string()), start=10, stop=11, replacement="T")
    return pc.strftime(whole, format="%Y-%m-%dT%H:%M:%S")


def _whole_seconds(column: Any) -> Any:
    """Drop the fraction when no value has one (a safe cast refuses otherwise)."""
    unit_tz = column.type.tz
    with contextlib.suppress(pa.ArrowInvalid):
        return column.cast(pa.timestamp("s", tz=unit_tz))
    return column


def _offset_texts(seconds: list[int]) -> list[str]:
    return [f"{'-' if s < 0 else '+'}{abs(s) // 3600:02d}:{abs(s) % 3600 // 60:02d}" for s in seconds]


def _offset_text(seconds: Any) -> Any:
    """``+HH:MM`` for an int64 array of offsets in seconds."""
    distinct = pc.unique(seconds).to_pylist()
    texts = _offset_texts(distinct)
    return pc.take(pa.array(texts), pc.index_in(seconds, value_set=pa.array(distinct, type=pa.int64())))


def _encode(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pa_csv.write_csv(table, out, pa_csv.WriteOptions(include_header=False, quoting_style="needed"))
    return out.getvalue()


def _has_line_breaks(table: pa.Table) -> bool:
    """Whether a text value may hold CR or LF (then rows cannot be split on line ends).

    Scans the string data buffers with ``bytes.find`` (memchr) rather than a regex per value.
    A buffer can hold bytes outside a sliced array's range: a line break there only costs the
    slower, exact path.
    """
    for column in table.columns:
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        for chunk in column.chunks:
            data = chunk.buffers()[2]
            if data is not None:
                raw = data.to_pybytes()
                if raw.find(b"\n") >= 0 or raw.find(b"\r") >= 0:
                    return True
    return False
