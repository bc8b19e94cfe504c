"""Parquet with real column types, zstd-compressed (snappy for files of a few dozen rows).

Timestamps carry the partition's zone (``timestamp[us, tz=...]``), integers are int64,
floats float64, ``numeric(p, s)`` is ``decimal128(p, s)``, text is string, bytes are binary.
The schema comes from the column kinds alone, never from the values of one file, so every file
of a task has the same schema. Arrow tables from ADBC are cast to it, so both read paths give
the same file for the same rows.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Sequence
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..arrowtypes import arrow_type, cast_column
from ..exceptions import DataError
from ..sources import Column, Mode, times
from .csv import not_a_time, parse_time, value_text


def _array(col: Column, typ: pa.DataType | None, values: list[Any]) -> pa.Array:
    """One column of row values as an Arrow array of ``typ``, from what the drivers return.

    SQLite stores times and dates as text and booleans as integers, and a column may hold values
    of several types; PostgreSQL decimals come as text (see the source). Text columns take
    other values in their CSV spelling.
    """
    kind = col.kind
    if kind in ("timestamptz", "timestamp", "date"):
        other = next((v for v in values if v is not None and not isinstance(v, str | dt.date)), None)
        if other is not None:
            raise DataError(not_a_time(col.name, other, date=kind == "date"))
    if kind == "timestamptz":
        values = [_instant(col, v) if isinstance(v, str) else v for v in values]
    elif kind == "timestamp":
        values = [_parse_naive(v) if isinstance(v, str) else v for v in values]
    elif kind == "date":
        values = [dt.date.fromisoformat(v) if isinstance(v, str) else v for v in values]
    elif kind == "int":
        # pyarrow would cut 2.5 to 2 without a word (SQLite may mix types in a column).
        inexact = next((v for v in values if type(v) is float and not v.is_integer()), None)
        if inexact is not None:
            raise ValueError(f"{inexact!r} is not an integer")
    elif kind == "bool":
        values = [bool(v) if isinstance(v, int) else v for v in values]
    elif kind == "binary":
        values = [v.encode() if isinstance(v, str) else v for v in values]
    elif typ == pa.string():
        values = [v if v is None or isinstance(v, str) else _text(v) for v in values]
    elif kind == "decimal" and any(isinstance(v, str) for v in values):
        return pa.array(values, type=pa.string()).cast(typ)
    return pa.array(values, type=typ)


def _instant(col: Column, text: str) -> dt.datetime:
    """A timestamptz stored as text, as a UTC instant within years 1 to 9999 (Parquet holds the
    instant: 9999-12-31T23:00-05:00 is in year 10000 there, and no reader could load it)."""
    try:
        return parse_time(text, col.name).astimezone(dt.UTC)
    except OverflowError:
        raise DataError(times.message(col.name, repr(text))) from None


def _text(value: Any) -> str:
    if isinstance(value, decimal.Decimal):
        return format(value, "f")  # as PostgreSQL writes a numeric: never with an exponent
    return str(value_text(value))


def _parse_naive(text: str) -> dt.datetime:
    """A ``timestamp`` value stored as text; one with an offset is taken as that instant in UTC."""
    value = dt.datetime.fromisoformat(text)
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value


# Row groups are cut by row count alone, so a partition's bytes depend on its rows, never on
# how the database split them into batches. A group holds ROW_GROUP_ROWS rows (DuckDB writes
# 122,880; ~10 MiB of Arrow data for OpenAQ-like rows), fewer when rows are wide: the size is
# fixed per partition from the Arrow size of its first SAMPLE_ROWS rows, so that a group stays
# near ROW_GROUP_BYTES. Those rows are the same whatever the batches, so the choice is too.
ROW_GROUP_ROWS = 1 << 17
ROW_GROUP_BYTES = 64 << 20
SAMPLE_ROWS = 1024


def _value_bytes(table: pa.Table) -> int:
    """The size of a table's values, from the values alone (``nbytes`` depends on slicing)."""
    total = 0
    for column in table.columns:
        kind = column.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
            total += int(pc.sum(pc.binary_length(column)).as_py() or 0) + 4 * table.num_rows
        else:
            try:
                total += max(1, kind.bit_width // 8) * table.num_rows
            except ValueError:  # not a fixed-width type
                total += 8 * table.num_rows
    return total


VARIABLE_WIDTH_GUESS = 32  # bytes per value of a string or binary column, for memory estimates


class _Conversion:
    """How the source's tables of one schema become a file's: the file's schema, the columns
    whose type changes (``casts``), and a row's size for back-pressure, from the types alone."""

    def __init__(self, source: pa.Schema, types: tuple[pa.DataType | None, ...]) -> None:
        self.schema = pa.schema([pa.field(f.name, t or f.type) for f, t in zip(source, types, strict=True)])
        self.casts = tuple(i for i, f in enumerate(source) if not f.type.equals(self.schema.field(i).type))
        # Replacing the cast columns alone gives exactly the file's schema unless the source's
        # schema has metadata or a field the file's differs from in more than its type (nullable).
        same = (f.equals(self.schema.field(i), check_metadata=True) for i, f in enumerate(source))
        self.in_place = source.metadata is None and all(i in self.casts or s for i, s in enumerate(same))
        self.row_bytes = _row_estimate_of(source)

    def apply(self, table: pa.Table) -> pa.Table:
        """``table`` (of the source schema) in the file's schema."""
        if not self.in_place:
            return _cast(table, self.schema)
        for i in self.casts:
            field = self.schema.field(i)
            table = table.set_column(i, field, _cast_column(table.column(i), field))
        return table


class _Layout:
    """A task's columns in one zone, in Arrow: their types, and a :class:`_Conversion` for each
    schema the source's tables come in (one, or a few when some columns' types are inferred).

    The files of a zone share one (see :func:`_layout`). Working this out for every file, with a
    memo of eight entries that the benchmark's twelve zones cycled through (OpenAQ's locations
    have hundreds), cost 25-35 µs of a 70-row file's ~250 (bench/README.md). Schemas are
    compared with ``Schema.equals`` (~0.1 µs); hashing one costs ~5 µs.
    """

    def __init__(self, columns: Sequence[Column], zone: str | None) -> None:
        self.columns = columns
        self.types = tuple(arrow_type(c, zone) for c in columns)
        self._known: tuple[tuple[pa.Schema, _Conversion], ...] = ()  # replaced whole: thread-safe

    def conversion(self, schema: pa.Schema) -> _Conversion:
        for known, conversion in self._known:
            if known.equals(schema, check_metadata=True):
                return conversion
        conversion = _Conversion(schema, self.types)
        self._known = ((schema, conversion), *self._known[:7])
        return conversion


_LAYOUTS_KEPT = 4096
_layouts: dict[tuple[int, str | None], _Layout] = {}


def _layout(columns: Sequence[Column], zone: str | None) -> _Layout:
    """The shared layout of ``columns`` (the pipeline's one list: found by identity) in ``zone``."""
    key = (id(columns), zone)
    layout = _layouts.get(key)
    if layout is None or layout.columns is not columns:  # the layout holds its list: ids are not reused
        if len(_layouts) >= _LAYOUTS_KEPT:
            _layouts.clear()
        layout = _layouts[key] = _Layout(columns, zone)
    return layout


def _row_estimate_of(schema: pa.Schema) -> int:
    """Bytes per row of a table of ``schema``, from the types alone (for back-pressure)."""
    total = 0
    for field in schema:
        try:
            total += max(1, field.type.bit_width // 8)
        except ValueError:  # not a fixed-width type
            total += VARIABLE_WIDTH_GUESS
    return total


def _cast_column(column: pa.ChunkedArray, field: pa.Field) -> pa.ChunkedArray:
    """``column`` as ``field``'s type; a value that does not fit is a DataError naming the column."""
    try:
        return cast_column(column, field.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(
            f"column {field.name!r} could not be written as Parquet {field.type}: {exc}; cast it "
            "in select.sql to a type that holds every value (text, for example)"
        ) from exc


def _cast(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` rebuilt in ``schema``, casting only the columns whose type differs."""
    if table.schema.equals(schema):
        return table
    columns = [_cast_column(c, f) for c, f in zip(table.columns, schema, strict=True)]
    return pa.Table.from_arrays(columns, schema=schema)


_NUMBERS = (pa.int64(), pa.float64())


def _settled(name: str, old: pa.DataType, new: pa.DataType, *, unwritten: bool) -> pa.DataType:
    """The type of column ``name`` (``old`` so far) after a chunk of type ``new`` (see _settle)."""
    if old.equals(new) or pa.types.is_null(new):
        return old
    if pa.types.is_null(old) and unwritten:
        return new
    if old in _NUMBERS and new in _NUMBERS:
        return pa.float64() if unwritten else old  # Arrow's cast refuses a value that changes
    if pa.types.is_binary(old) and pa.types.is_string(new):
        return old
    if pa.types.is_string(old) and pa.types.is_binary(new) and unwritten:
        return new
    if pa.types.is_null(old):  # a cast in select.sql leaves a NULL untyped: the order is the fix
        raise DataError(
            f"column {name!r} is NULL in every row of the file's first row group, written with no"
            f" type, and holds {new} values after it, which that Parquet column cannot hold; read"
            f" the rows with a value first in select.sql (ORDER BY {name} IS NULL, then its order)"
        )
    binary = pa.types.is_binary(old) or pa.types.is_binary(new)  # as text, bytes may be invalid UTF-8
    raise DataError(
        f"column {name!r} holds {old} values and later {new} values, which one Parquet column"
        f" cannot hold as they are; give it one type in select.sql, e.g."
        f" CAST({name} AS {'BLOB' if binary else 'TEXT'}) AS {name}"
    )


# Dictionary encoding pays for itself from a few thousand rows on; below that plain pages are
# smaller and a third faster to write (a location-day holds tens to hundreds of rows). The
# choice depends on the rows alone: a file written in several row groups, or with at least
# DICTIONARY_ROWS rows, uses dictionaries.
DICTIONARY_ROWS = 2048
# zstd sets up a compression context for every column chunk (on a VM that includes a CPUID
# trap): in a file of a few dozen rows that costs more than encoding the whole file, and the
# pages are too small for zstd to beat snappy (location-days of ~70 rows: 3,340 bytes a file
# with snappy, 3,355 with zstd, 0.14 against 0.33 ms to write; bench/README.md). A file
# written in one piece with fewer than SNAPPY_ROWS rows is snappy-compressed, any other zstd;
# like the dictionaries, the codec depends on the rows alone. Every Parquet reader reads both.
SNAPPY_ROWS = 128


def _codec(rows: int, *, whole: bool) -> str:
    """The compression of a file of ``rows`` rows; ``whole``: written as one row group at close."""
    return "snappy" if whole and rows < SNAPPY_ROWS else "zstd"


class ParquetWriter:
    """Writes one partition as a Parquet file (see SNAPPY_ROWS), in row groups of a fixed number of rows.

    Rows are kept until a row group is full and written then; the last (or only) group is
    written by :meth:`close`, which the engine runs on a publisher thread. Arrow chunks are
    kept as they come and cast to the file's schema only when their group is written, so for
    a partition smaller than a row group all the per-file work (cast, encoding, footer) is
    done there, in parallel with the main thread reading the next ones: a file written at
    close is encoded into memory with the GIL released and handed to ``out`` in one write.
    """

    def __init__(self, out: BinaryIO, columns: Sequence[Column], zone: str | None) -> None:
        self.rows = 0
        self._out = out
        self._layout = _layout(columns, zone)
        self._writer: pq.ParquetWriter | None = None
        self._sink: pa.BufferOutputStream | None = None
        self._schema: pa.Schema | None = None
        self._pending: list[pa.Table] = []  # cast to the file's schema
        self._raw: list[pa.Table] = []  # as written, after the pending ones: not cast yet
        self._pending_rows = 0
        self._pending_size = 0
        self._group_rows: int | None = None  # fixed once SAMPLE_ROWS rows have arrived

    @property
    def held(self) -> int:
        """Bytes kept in memory for the next row group."""
        return self._pending_size

    def write(self, chunk: Any, mode: Mode) -> None:
        """Append Arrow tables (cast to our schema when written) or row tuples."""
        table = self._from_rows(chunk) if mode == "rows" else chunk
        if not isinstance(table, pa.Table):
            raise TypeError(f"expected an Arrow table, got {type(table).__name__}")
        self.rows += table.num_rows
        self._raw.append(table)
        self._pending_rows += table.num_rows
        # An estimate from the types: nbytes or a compute call per chunk releases the GIL and
        # waits to get it back from the publisher threads (0.2-0.5 ms a call, measured).
        self._pending_size += table.num_rows * self._layout.conversion(table.schema).row_bytes
        if self._group_rows is None and self._pending_rows >= SAMPLE_ROWS:
            self._group_rows = self._choose_group_rows()
        while self._group_rows is not None and self._pending_rows >= self._group_rows:
            self._write_group(self._group_rows)

    def _choose_group_rows(self) -> int:
        """Rows per group: ROW_GROUP_ROWS, or fewer so that a group of these rows is ~ROW_GROUP_BYTES."""
        sample = self._conformed().slice(0, SAMPLE_ROWS)
        per_row = max(1, _value_bytes(sample) // SAMPLE_ROWS)
        fitting = ROW_GROUP_BYTES // per_row // SAMPLE_ROWS * SAMPLE_ROWS
        return max(SAMPLE_ROWS, min(ROW_GROUP_ROWS, fitting))

    def _conformed(self) -> pa.Table:
        """The pending chunks as one table of the file's schema (they are kept cast)."""
        for table in self._raw:  # one at a time: a chunk may change the types of those before it
            conformed = self._conform(table)
            self._pending.append(conformed)
        self._raw = []
        return self._pending[0] if len(self._pending) == 1 else pa.concat_tables(self._pending)

    def _conform(self, table: pa.Table) -> pa.Table:
        """``table`` in the file's schema: the task's types, then those of the chunks before it."""
        conversion = self._layout.conversion(table.schema)
        if self._schema is None:
            self._schema = conversion.schema
        elif not conversion.schema.equals(self._schema):
            self._settle(conversion.schema)
        return _cast(conversion.apply(table), self._schema)

    def _settle(self, schema: pa.Schema) -> None:
        """The file's types once a chunk has come whose inferred types (kind "other": a SQLite
        archive's, from its values) differ from the earlier chunks': as one chunk of all the
        rows would have them while no row group is written (NULLs take the values' type,
        integers become doubles beside a fraction, text bytes beside a BLOB), else the
        earlier type, which a later value must fit. Text beside numbers fails by column:
        a cast would turn '007' into 7."""
        assert self._schema is not None
        unwritten = self._writer is None
        settled = pa.schema(
            [
                old.with_type(_settled(old.name, old.type, new.type, unwritten=unwritten))
                for old, new in zip(self._schema, schema, strict=True)
            ]
        )
        if not settled.equals(self._schema):
            self._pending = [_cast(t, settled) for t in self._pending]
            self._schema = settled

    def _open(self, *, last: bool) -> pq.ParquetWriter:
        """The file's writer; ``last``: the first group is the whole file (written at close)."""
        if self._writer is None:
            assert self._schema is not None
            dictionary = not last or self.rows >= DICTIONARY_ROWS
            sink: Any = self._out
            if last:  # encode in memory, without calling back into Python for every page
                self._sink = sink = pa.BufferOutputStream()
            self._writer = pq.ParquetWriter(
                sink, self._schema, compression=_codec(self.rows, whole=last), use_dictionary=dictionary
            )
        return self._writer

    def _write_group(self, rows: int, *, last: bool = False) -> None:
        """Write the first ``rows`` pending rows as one row group; keep the rest."""
        pending = self._conformed()
        if rows == pending.num_rows:  # most files: one group of the rows as they came
            group, rest = pending, None
        else:
            group, rest = pending.slice(0, rows), pending.slice(rows)
        if any(column.num_chunks != 1 for column in group.columns):
            group = group.combine_chunks()  # pages must not depend on how the rows were batched
        self._open(last=last).write_table(group, row_group_size=rows)
        self._pending = [rest] if rest is not None else []
        self._pending_rows = rest.num_rows if rest is not None else 0
        # nbytes releases the GIL and waits for it (see write); most files have no rest.
        self._pending_size = rest.nbytes if rest is not None else 0

    def _from_rows(self, rows: list[tuple[Any, ...]]) -> pa.Table:
        arrays = []
        layout = self._layout
        for i, (col, typ) in enumerate(zip(layout.columns, layout.types, strict=True)):
            try:
                arrays.append(_array(col, typ, [row[i] for row in rows]))
            except (ValueError, TypeError, decimal.InvalidOperation, OverflowError) as exc:  # Arrow's too
                raise DataError(  # CAST works for every task kind; an archive task takes no [columns]
                    f"column {col.name!r} ({col.kind}) could not be encoded as Parquet: {exc}; give it one"
                    f" type in select.sql, e.g. CAST({col.name} AS TEXT) AS {col.name} (AS CHAR on MariaDB;"
                    " on SQLite, whose column's kind is that of its first non-NULL value, task.toml"
                    " [columns] can set it where the task's kind takes them)"
                ) from exc
        return pa.Table.from_arrays(arrays, names=[c.name for c in layout.columns])

    def close(self) -> None:
        """Write what is pending and the footer (an empty file with the schema when there were no rows)."""
        if self._pending_rows:
            self._write_group(self._pending_rows, last=self._writer is None)
        if self._writer is None:
            fields = [
                pa.field(c.name, t or pa.null())
                for c, t in zip(self._layout.columns, self._layout.types, strict=True)
            ]
            self._writer = pq.ParquetWriter(self._out, pa.schema(fields), compression=_codec(0, whole=True))
        self._writer.close()
        if self._sink is not None:
            self._out.write(self._sink.getvalue())
            self._sink = None
