"""Arrow batches from PostgreSQL through ADBC (the ``fast`` extra), for Parquet and CSV output.

ADBC's PostgreSQL driver reads the result with binary ``COPY`` straight into Arrow memory,
which is several times faster than building Arrow arrays from Python rows. The query is
rendered with psycopg's client-side binding (each distinct value once, ``pg_query.inline``),
so values are quoted by psycopg.

CSV is encoded by Arrow's C++ CSV writer a record batch at a time, after the values whose text
sluicegate defines are made text with vectorised compute: timestamps (ISO 8601, each value in
its partition's zone with its own offset, a fraction only when it has one) and, where Arrow
would spell them differently from PostgreSQL, floats. No value's text depends on the other
rows of its batch, so a partition's bytes do not depend on which partitions it was read with.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import io
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from psycopg import sql

from ..arrowtypes import arrow_type, cast_column
from ..partitions import BIN_SECONDS, zone_of
from . import Column, CsvChunk, Slice, times
from .ahead import read_ahead
from .client_sort import ClientSort, sorted_batches
from .pg_query import inline


def available() -> bool:
    """True when the ADBC PostgreSQL driver is installed."""
    return importlib.util.find_spec("adbc_driver_postgresql") is not None


def read_arrow(
    aconn: Any,
    conn: psycopg.Connection[Any],
    query: sql.Composed,
    params: list[Any],
    parts: Sequence[Slice],
    columns: Sequence[Column],
    client: ClientSort | None = None,
) -> Iterator[tuple[int, pa.Table]]:
    """Yield ``(index, table)`` slices of the batch result, split on the ``ord`` column.

    Each slice comes in the Parquet writer's types (:func:`arrow_type`, timestamps in its
    partition's zone), cast once per record batch and zone, so the writers of ~500 small
    partitions do not cast each of them again.
    """
    with contextlib.closing(_batches(aconn, conn, query, params, client)) as batches:
        for batch in batches:
            times.check_batch(batch, parts, columns, local=False)
            yield from _split(batch, parts, columns)


def _batches(
    aconn: Any, conn: psycopg.Connection[Any], query: sql.Composed, params: list[Any],
    client: ClientSort | None = None,
) -> Generator[pa.RecordBatch, None, None]:  # fmt: skip
    """The non-empty record batches of ``query``, its parameters bound by psycopg; with
    ``client``, its unsorted query's, sorted here (``query``'s when they overrun its budget).

    ADBC's connection autocommits (see ``adbc._AdbcConnection``), so the read's transaction
    ends with its statement: a long-running exporter (``run --every``, the service) holds no
    lock on the tables it read between passes (an ``ALTER TABLE`` on the source would wait for
    it, and every query after the ``ALTER`` too), and ``idle_in_transaction_session_timeout``
    does not end its session."""
    if client is not None:
        with aconn.cursor() as cur:
            cur.execute(inline(conn, client.query, client.params))
            with read_ahead(cur.fetch_record_batch()) as batches:
                done = sorted_batches((b for b in batches if b.num_rows), client.keys, client.budget)
                if done is None:  # more than may be held: not read to its end, but stopped
                    cur.cancel()
        if done is not None:
            yield from done
            return
        client.overran()
    text = inline(conn, query, params)
    with aconn.cursor() as cur:
        cur.execute(text)
        with read_ahead(cur.fetch_record_batch()) as batches:
            for batch in batches:
                if batch.num_rows:
                    yield batch


def _typed(table: pa.Table, types: Sequence[pa.DataType | None]) -> pa.Table | None:
    """``table`` with its columns cast to ``types`` (None: as they are); None when one fails.

    The Parquet writer casts each partition's slice to its types, and reports a value that
    does not fit for that partition alone.
    """
    if len(types) != table.num_columns:
        return None
    try:
        columns = [c if t is None else cast_column(c, t) for c, t in zip(table.columns, types, strict=True)]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return pa.Table.from_arrays(columns, names=table.column_names)


def _split(
    batch: pa.RecordBatch, parts: Sequence[Slice], columns: Sequence[Column]
) -> Iterator[tuple[int, pa.Table]]:
    ords = batch.column(0)
    table = pa.Table.from_batches([batch]).remove_column(0)  # by place: the select may have an "ord"
    # Cast what needs a compute call once (zoned timestamps stay in UTC), then give each zone
    # a view of that.
    utc = _typed(table, [arrow_type(c, "UTC") for c in columns])
    zoned: dict[str | None, pa.Table] = {}
    # Rows arrive ordered by ord: find the runs with run-end encoding.
    runs = pc.run_end_encode(ords)
    ends = runs.run_ends.to_pylist()
    values = runs.values.to_pylist()
    start = 0
    for end, value in zip(ends, values, strict=True):
        index = int(value)
        source = table
        if utc is not None:
            zone = parts[index].zone
            if zone not in zoned:
                typed = _typed(utc, [arrow_type(c, zone) for c in columns])
                zoned[zone] = utc if typed is None else typed
            source = zoned[zone]
        yield index, source.slice(start, end - start)
        start = end


def read_csv(
    aconn: Any,
    conn: psycopg.Connection[Any],
    query: sql.Composed,
    params: list[Any],
    parts: Sequence[Slice],
    columns: Sequence[Column],
) -> Iterator[tuple[int, CsvChunk]]:
    """Yield ``(index, csv bytes)`` per partition, encoded a record batch at a time.

    The query selects ``ord``, the ``columns``, then for each float column the server's text
    of the values whose text Arrow would spell differently (NULL for the others).
    """
    offsets = _Offsets(parts)
    floats = [i for i, c in enumerate(columns) if c.kind == "float"]
    with contextlib.closing(_batches(aconn, conn, query, params)) as batches:
        for batch in batches:
            times.check_batch(batch, parts, columns, local=True)
            yield from encode_batch(batch, offsets, floats)


def encode_batch(
    batch: pa.RecordBatch, offsets: _Offsets, floats: Sequence[int]
) -> Iterator[tuple[int, CsvChunk]]:
    """Encode one batch (``ord``, the columns, one float text column per index in ``floats``).

    When no float needs the server's text and no text value holds a line break, the whole batch
    is encoded once and split by line; with line breaks, each partition's slice is encoded on
    its own. When a float needs the server's text, which Arrow's writer would put in quotes,
    the batch is encoded by :func:`_encode_lines` instead, to the same bytes.
    """
    width = batch.num_columns - 1 - len(floats)
    runs = pc.run_end_encode(batch.column(0))
    ends, values = runs.run_ends.to_pylist(), runs.values.to_pylist()
    columns = [batch.column(1 + i) for i in range(width)]
    columns = [offsets.format(c, ends, values) if pa.types.is_timestamp(c.type) else c for c in columns]
    raw = [False] * width
    for j, i in enumerate(floats):
        server = batch.column(1 + width + j)
        if server.null_count < len(server):  # some value is spelled by the server
            columns[i] = pc.coalesce(server, pc.cast(columns[i], pa.string()))
            raw[i] = True
    table = pa.Table.from_arrays(columns, names=batch.schema.names[1 : 1 + width])
    if any(raw):
        yield from _split_lines(_encode_lines(table, raw), ends, values)
        return
    if _has_line_breaks(table):
        start = 0
        for end, value in zip(ends, values, strict=True):
            yield int(value), CsvChunk(_encode(table.slice(start, end - start)), end - start)
            start = end
        return
    if len(ends) == 1:  # the whole batch is one partition's (large partitions): no split
        yield int(values[0]), CsvChunk(_encode(table), ends[0])
        return
    lines = _encode(table).split(b"\n")
    start = 0
    for end, value in zip(ends, values, strict=True):
        yield int(value), CsvChunk(b"\n".join(lines[start:end]) + b"\n", end - start)
        start = end


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _micros(instant: dt.datetime) -> int:
    delta = instant - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_BIN_US = BIN_SECONDS * 1_000_000  # no zone changes its offset twice within 15 minutes
# Offsets are looked up for instants in years 2 to 9998 (Python's datetime range, with a margin).
_FIRST = _micros(dt.datetime(2, 1, 1, tzinfo=dt.UTC))
_LAST = _micros(dt.datetime(9998, 12, 31, tzinfo=dt.UTC))


class _Offsets:
    """Each timestamptz value's UTC offset in its partition's zone, looked up vectorised.

    Formatting with Arrow's zone-aware strftime looks up the zone for every value and is slow;
    instead each value gets its offset added to UTC and is formatted as a naive time, with the
    offset text appended. A partition's offset is constant over its window except on the days
    clocks change, so a value inside a window with one offset takes it with no lookup. Any other
    value (outside its window: another timestamptz column; or on a DST day) is keyed by (zone,
    15-minute UTC bin): the offset is computed with zoneinfo once per distinct key, at the bin's
    first and last microsecond, and per value only in the bin where those two differ.
    """

    def __init__(self, parts: Sequence[Slice]) -> None:
        self.zones = sorted({part.zone or "UTC" for part in parts})
        index = {zone: i for i, zone in enumerate(self.zones)}
        self.zone_index = [index[part.zone or "UTC"] for part in parts]
        # Per partition: an offset (seconds) that holds for every instant in [low, high) (µs).
        # Partitions of one batch share few windows (the same days in the same zones).
        windows: dict[tuple[str, dt.datetime | None, dt.datetime | None], tuple[int, int, int]] = {}
        self.constant: list[int] = []
        self.low: list[int] = []
        self.high: list[int] = []
        for part in parts:
            key = (part.zone or "UTC", part.start, part.end)
            if key not in windows:
                windows[key] = _constant_range(*key)
            offset, low, high = windows[key]
            self.constant.append(offset)
            self.low.append(low)
            self.high.append(high)

    def format(self, column: Any, ends: list[int], values: list[int]) -> Any:
        """ISO 8601 text for a timestamp column of one batch (``ends``/``values``: its partition runs)."""
        if column.type.tz is None:
            return _iso(column)
        micros = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
        shift = self._shift(micros, ends, values)
        if isinstance(shift, pa.Scalar):
            text: Any = pa.scalar(_offset_texts([shift.as_py()])[0], pa.string())
        else:
            text = _offset_text(shift)
        local = _iso(pc.add(micros, pc.multiply(shift, 1_000_000)).cast(pa.timestamp("us")))
        return pc.if_else(
            pc.is_null(column), pa.scalar(None, pa.string()), pc.binary_join_element_wise(local, text, "")
        )

    def _shift(self, micros: Any, ends: list[int], values: list[int]) -> Any:
        """Each value's offset in seconds (a scalar when the batch has one for all)."""
        low = _decode(ends, [self.low[v] for v in values])
        high = _decode(ends, [self.high[v] for v in values])
        inside = pc.and_(pc.greater_equal(micros, low), pc.less(micros, high))
        if micros.null_count:
            inside = inside.fill_null(True)
        constants = [self.constant[v] for v in values]
        if pc.all(inside).as_py():
            if len(set(constants)) == 1:
                return pa.scalar(constants[0], pa.int64())
            return _decode(ends, constants)
        outside = pc.invert(inside)
        zones = _decode(ends, [self.zone_index[v] for v in values])
        looked_up = self._lookup(micros.filter(outside), zones.filter(outside))
        return pc.replace_with_mask(_decode(ends, constants), outside, looked_up)

    def _lookup(self, micros: Any, zones: Any) -> Any:
        """Offsets of instants (µs, no NULLs) in zones (indexes into ``self.zones``)."""
        bins = pc.floor_temporal(micros.cast(pa.timestamp("us")), multiple=15, unit="minute").cast(pa.int64())
        keys = pc.add(pc.multiply(pc.divide(bins, _BIN_US), len(self.zones)), zones.cast(pa.int64()))
        distinct = pc.unique(keys)
        per_key: list[int | None] = []
        for key in distinct.to_pylist():
            bin_number, zone = divmod(key, len(self.zones))
            tz = zone_of(self.zones[zone])
            first = _offset_at(bin_number * _BIN_US, tz)
            last = _offset_at((bin_number + 1) * _BIN_US - 1, tz)
            per_key.append(first if first == last else None)
        offsets = pc.take(pa.array(per_key, pa.int64()), pc.index_in(keys, value_set=distinct))
        changing = pc.is_null(offsets)
        if not pc.any(changing).as_py():
            return offsets
        # The bins where an offset changes: each value on its own.
        instants, zone_numbers = micros.filter(changing).to_pylist(), zones.filter(changing).to_pylist()
        exact = [_offset_at(m, zone_of(self.zones[z])) for m, z in zip(instants, zone_numbers, strict=True)]
        return pc.replace_with_mask(offsets, changing, pa.array(exact, pa.int64()))


def _constant_range(zone: str, start: dt.datetime | None, end: dt.datetime | None) -> tuple[int, int, int]:
    """``(offset, low, high)``: the offset in ``zone`` of every instant in [low, high) µs, for a window.

    The range is the window [start, end) when the offset is the same at both its ends, with the
    end itself when that has it too (``boundary = "end"`` windows hold their end); else empty.
    """
    if zone == "UTC":
        return 0, _INT64_MIN, _INT64_MAX
    if start is None or end is None:
        return 0, 0, 0
    tz = zone_of(zone)
    first = _seconds(start.astimezone(tz).utcoffset())
    if _seconds((end - dt.timedelta(microseconds=1)).astimezone(tz).utcoffset()) != first:
        return 0, 0, 0
    high = _micros(end) + (1 if _seconds(end.astimezone(tz).utcoffset()) == first else 0)
    return first, _micros(start), high


def _decode(ends: list[int], values: list[int]) -> Any:
    """One int64 per row from one value per partition run."""
    return pc.run_end_decode(pa.RunEndEncodedArray.from_arrays(ends, pa.array(values, pa.int64())))


def _seconds(offset: dt.timedelta | None) -> int:
    return int(offset.total_seconds()) if offset is not None else 0


def _offset_at(micros: int, tz: dt.tzinfo) -> int:
    """The UTC offset (seconds) in ``tz`` of the instant ``micros`` µs after the epoch.

    Instants outside years 2 to 9998 take the offset at the nearer end of that range.
    """
    micros = min(max(micros, _FIRST), _LAST)
    return _seconds((_EPOCH + dt.timedelta(microseconds=micros)).astimezone(tz).utcoffset())


def _iso(column: Any) -> Any:
    """``YYYY-MM-DDTHH:MM:SS[.ffffff]`` for a zone-less timestamp column, a fraction only where non-zero.

    Whole seconds take Arrow's cast to text (``YYYY-MM-DD HH:MM:SS``) with the space made a
    ``T``: the same text as strftime, about six times faster.
    """
    if column.type != pa.timestamp("us"):
        column = column.cast(pa.timestamp("us"))
    with contextlib.suppress(pa.ArrowInvalid):  # a safe cast refuses when any value has a fraction
        return _seconds_text(column.cast(pa.timestamp("s")))
    whole = pc.floor_temporal(column, unit="second")
    micros = pc.subtract(column.cast(pa.int64()), whole.cast(pa.int64()))
    digits = pc.utf8_lpad(micros.cast(pa.string()), width=6, padding="0")
    fraction = pc.binary_join_element_wise(".", digits, "")
    text = _seconds_text(whole.cast(pa.timestamp("s")))
    return pc.if_else(pc.equal(micros, 0), text, pc.binary_join_element_wise(text, fraction, ""))


def _seconds_text(column: Any) -> Any:
    return pc.utf8_replace_slice(column.cast(pa.string()), start=10, stop=11, replacement="T")


def _offset_texts(seconds: list[int]) -> list[str]:
    """``+HH:MM``, or ``+HH:MM:SS`` for an offset with seconds (local mean time), as isoformat() has it."""
    texts = []
    for s in seconds:
        text = f"{'-' if s < 0 else '+'}{abs(s) // 3600:02d}:{abs(s) % 3600 // 60:02d}"
        texts.append(text + f":{abs(s) % 60:02d}" if abs(s) % 60 else text)
    return texts


def _offset_text(seconds: Any) -> Any:
    """``+HH:MM`` for an int64 array of offsets in seconds."""
    distinct = pc.unique(seconds).to_pylist()
    texts = _offset_texts(distinct)
    return pc.take(pa.array(texts), pc.index_in(seconds, value_set=pa.array(distinct, type=pa.int64())))


def _encode(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pa_csv.write_csv(table, out, pa_csv.WriteOptions(include_header=False, quoting_style="needed"))
    return out.getvalue()


def _encode_lines(table: pa.Table, raw: Sequence[bool]) -> pa.Array:
    """One CSV line per row, ``\\n``-terminated, as Arrow's writer makes it, ``raw`` text columns unquoted.

    Arrow's writer quotes every text value; a float spelled by the server must not be quoted, as
    Arrow writes the others unquoted. So this rebuilds the writer's output with compute
    functions: other values are cast to text as the writer casts them, and text values are
    quoted as it quotes them (always, quotes doubled), so the bytes are the writer's except for
    those floats. A batch encodes about a fifth slower this way: only batches that need it do.
    """
    fields = []
    for column, is_raw in zip(table.columns, raw, strict=True):
        if is_raw:
            text = column
        elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            text = pc.binary_join_element_wise('"', pc.replace_substring(column, '"', '""'), '"', "")
        else:
            text = pc.cast(column, pa.string())
        fields.append(pc.cast(text, pa.large_string()))  # 64-bit offsets: a batch may exceed 2 GiB of text
    comma, newline, empty = (pa.scalar(t, pa.large_string()) for t in (",", "\n", ""))
    line = pc.binary_join_element_wise(*fields, comma, null_handling="replace", null_replacement="")
    lines = pc.binary_join_element_wise(line, newline, empty)
    return lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines


def _split_lines(lines: pa.Array, ends: list[int], values: list[int]) -> Iterator[tuple[int, CsvChunk]]:
    """Each partition's run of lines, cut from the text buffer at the rows' own offsets."""
    buffers = lines.buffers()
    offsets = pa.Array.from_buffers(pa.int64(), len(lines) + 1, [None, buffers[1]], offset=lines.offset)
    cuts = pc.take(offsets, pa.array([0, *ends], pa.int64())).to_pylist()
    data = memoryview(buffers[2])
    for i, value in enumerate(values):
        yield int(value), CsvChunk(data[cuts[i] : cuts[i + 1]].tobytes(), ends[i] - (ends[i - 1] if i else 0))


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
