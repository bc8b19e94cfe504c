"""CSV and deterministic CSV.gz.

Dialect: a header line, RFC 4180 quoting (only where needed; every line break, CR or LF, is
quoted), UTF-8, ``\\n`` line ends, NULL as an empty field, booleans as ``true``/``false``,
timestamps as ISO 8601 with the offset of the partition's zone, floats and bytes as PostgreSQL
writes them. The gzip header carries no file name and a zero mtime, so equal rows give equal
bytes. An empty string is written as ``""`` to tell it from NULL (in a file of one column a
NULL is an empty line, as PostgreSQL's COPY writes it). On PostgreSQL the same dialect is
produced from Arrow batches (or by COPY when the ADBC driver is missing); Arrow quotes every
non-empty text value, which is valid RFC 4180 either way.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import functools
import io
import math
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

from ..exceptions import DataError
from ..partitions import zone_of
from ..sources import Column, Mode, times
from .deflate import GzipWriter


class CsvWriter:
    """Writes one partition as CSV, optionally gzip-compressed.

    Compression is deferred: ``deflate.GzipWriter`` keeps the CSV until it fills a 1 MiB block,
    and :meth:`close`, which the engine calls on a publisher thread (zlib releases the GIL),
    compresses the rest. So a small partition is compressed in parallel with reading the next
    ones, and a larger one in blocks on other cores as it streams. The bytes are the same
    either way.
    """

    def __init__(
        self, out: BinaryIO, columns: Sequence[Column], zone: str | None, gzip_level: int | None
    ) -> None:
        self.rows = 0
        self._gz = GzipWriter(out, gzip_level) if gzip_level is not None else None
        self._out: Any = self._gz if self._gz is not None else out
        self._columns, self._zone = columns, zone
        self._convert: list[Callable[[Any], Any]] | None = None  # rows mode only, made on first use
        self._out.write(header(tuple(c.name for c in columns)))

    @property
    def held(self) -> int:
        """Bytes kept in memory for :meth:`close` to compress."""
        return self._gz.buffered if self._gz is not None else 0

    def write(self, chunk: Any, mode: Mode) -> None:
        """Append CSV bytes (from COPY, or encoded from Arrow batches), or encode row tuples."""
        if mode == "csv":
            self._out.write(chunk.data)
            self.rows += chunk.rows
            return
        if self._convert is None:
            self._convert = [_converter(c, self._zone) for c in self._columns]
        convert = self._convert
        try:
            data = encode_rows([[f(v) for f, v in zip(convert, row, strict=True)] for row in chunk])
        except (ValueError, TypeError, OverflowError) as exc:  # Overflow: a local time past year 9999
            raise DataError(f"a row could not be encoded as CSV: {exc}") from exc
        self._out.write(data)
        self.rows += len(chunk)

    def close(self) -> None:
        """Compress what is still buffered and write the gzip trailer, if any."""
        if self._gz is not None:
            self._gz.close()


@functools.lru_cache(maxsize=64)
def header(names: tuple[str, ...]) -> bytes:
    """The header line of ``names``: the same for every file of a task, so made once (a
    ``csv.writer`` per file cost ~4% of a run's CPU)."""
    return encode_rows([list(names)])


# Stand-ins the csv module writes bare, replaced in its output: an empty string (which it
# writes as nothing, like None) by ``""``, and the NULL of a one-column row (which it writes as
# ``""``) by nothing. Lone surrogates: no text read from a database holds one (a driver decodes
# UTF-8, and surrogateescape makes only U+DC80..U+DCFF), and none could be encoded as UTF-8.
_EMPTY, _NULL = "\ud800", "\ud801"


def encode_rows(rows: list[list[Any]]) -> bytes:
    """Rows as UTF-8 CSV lines, quoting a field with a CR as well as one with an LF, and an
    empty string (``""``, where a NULL is an empty field).

    The csv module quotes only the characters of its line terminator (``\\n``), so a lone CR
    would be written bare and split the record for most readers. Rows are encoded in one C
    call; only when the result holds a CR are they encoded again, the rows with a CR in a
    field by a writer whose terminator is CRLF (which quotes both), its CRLF made LF.

    The ``csv.writer`` lives for one call only: once it has written, it keeps a 128 KiB record
    buffer, and an exporter holds hundreds of open files (a writer each) until their batch
    commits. One writer per file cost 64 MiB per exporter.
    """
    if rows and len(rows[0]) == 1:
        rows = [[_NULL if v is None else _EMPTY if v == "" else v for v in row] for row in rows]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    value = text.getvalue()
    if "\r" in value:
        text = io.StringIO()
        plain = csv.writer(text, lineterminator="\n")
        crlf = csv.writer(text, lineterminator="\r\n")
        for row in rows:
            if any(isinstance(v, str) and "\r" in v for v in row):
                crlf.writerow(row)
                text.seek(text.tell() - 2)  # its CRLF made LF
                text.truncate()
                text.write("\n")
            else:
                plain.writerow(row)
        value = text.getvalue()
    if _EMPTY in value or _NULL in value:
        value = value.replace(_EMPTY, '""').replace(_NULL, "")
    return value.encode("utf-8")


def _converter(col: Column, zone: str | None) -> Callable[[Any], Any]:
    if col.kind in ("timestamptz", "timestamp"):
        tz = zone_of(zone) if zone else None
        return lambda v: _format_time(v, tz, col)
    if col.kind == "date":  # SQLite stores dates as text: a number or BLOB is no date (as in Parquet)
        return lambda v: cell_text(v) if v is None or isinstance(v, str | dt.date) else _not_a_date(col, v)
    if col.kind == "bool":  # SQLite stores booleans as integers; other values are written as stored
        return lambda v: ("true" if v else "false") if isinstance(v, int) else cell_text(v)
    if col.kind == "binary":  # text in a SQLite column of kind binary: its UTF-8 bytes, as in Parquet
        return lambda v: value_text(v.encode() if isinstance(v, str) else v)
    if col.kind == "float" and col.precision == 24:  # MariaDB's FLOAT: as PostgreSQL writes a real
        return lambda v: single_text(v) if type(v) is float else cell_text(v)
    return cell_text


def cell_text(value: Any) -> Any:
    """:func:`value_text` for a CSV field: an empty string becomes the stand-in that
    :func:`encode_rows` writes as ``""``."""
    if type(value) is str:
        return value or _EMPTY
    return value_text(value)


def value_text(value: Any) -> Any:
    """A value as PostgreSQL writes it where Python's text differs: floats, bytes and decimals
    (MariaDB's driver returns a Decimal, whose str() is 1E-10 for 0.0000000001).

    Other values are returned as they are, for the csv module to write.
    """
    if type(value) is float:
        return float_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, decimal.Decimal):
        return format(value, "f")  # never with an exponent, every digit of its scale
    return value


def time_text(value: dt.time) -> str:
    """A Python time of day as PostgreSQL writes a ``time`` or ``timetz``, the text a partitioned
    read path has for such a column (``value::text``): fractions without trailing zeros
    (``12:00:00.1``), an offset as ``+02``, ``+05:45`` or ``-00:17:30``, where Python's
    ``str()`` and ``isoformat()`` write ``12:00:00.100000+02:00``. TypeError for an offset with
    a fraction of a second, which no PostgreSQL offset has."""
    text = f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    offset = value.utcoffset()
    if offset is None:  # naive, or a zone whose offset needs a date (as isoformat: none)
        return text
    if offset.microseconds:
        raise TypeError(
            f"the time {value.isoformat()} has an offset with a fraction of a second; "
            "round it to whole seconds"
        )
    seconds = int(offset.total_seconds())
    hours, rest = divmod(abs(seconds), 3600)
    text += f"{'-' if seconds < 0 else '+'}{hours:02d}"
    if rest:
        text += f":{rest // 60:02d}" + (f":{rest % 60:02d}" if rest % 60 else "")
    return text


def float_text(value: float) -> str:
    """A float as PostgreSQL writes it: the shortest round-trip digits, ``NaN``, ``Infinity``.

    That is Python's ``repr`` without a trailing ``.0``, except that PostgreSQL switches to an
    exponent from 1e15 on, Python from 1e16 on.
    """
    text = repr(value)
    if text.endswith(".0"):
        text = text[:-2]
    if "e" in text or "n" in text:  # an exponent, or inf / nan
        return _SPECIAL.get(text, text)
    if 1e15 <= abs(value) < 1e16:
        sign, digits = ("-", text[1:]) if text.startswith("-") else ("", text)
        digits = digits.replace(".", "").rstrip("0") or "0"
        return f"{sign}{digits[0]}{'.' + digits[1:] if len(digits) > 1 else ''}e+15"
    return text


_SPECIAL = {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}


def single_text(value: float) -> str:
    """A single-precision float (widened to a double) as PostgreSQL writes a ``real``: the
    shortest digits that read back as that single (strictly inside its rounding interval, as
    PostgreSQL's Ryu picks them), plain from 1e-4 below 1e6, else with an exponent (``0.1``,
    ``1.234567e+06``), where the double's digits would be 0.10000000149011612."""
    if not math.isfinite(value) or value == 0:
        return float_text(value)
    size = abs(value)
    text = _shortest_single(size)
    if text is None:  # not a single's value (a driver gave a double): the double's text
        return float_text(value)
    mantissa, exponent = text.split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    power = int(exponent)
    sign = "-" if value < 0 else ""
    if -4 <= power < 6:
        return sign + float_text(float(text))
    return f"{sign}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"


def _shortest_single(size: float) -> str | None:
    """The fewest digits (``%e``) strictly inside the positive ``size``'s rounding interval, or None.

    This runs for every FLOAT value of a CSV file: the bounds of a single's interval are exact
    doubles, and rounding a decimal to a double keeps its order, so a candidate whose double is
    strictly between them is inside; only one that rounds onto a bound is compared exactly (the
    Decimal arithmetic for every candidate took 20 times float_text's time)."""
    (bits,) = _BITS.unpack(_SINGLE.pack(size))
    if _SINGLE.unpack(_BITS.pack(bits))[0] != size:  # a double, not a single: compared exactly
        if bits == 0:  # below the smallest single
            return None
        low, high = _single_interval(size)
        return next((t for t in _candidates(size) if low < decimal.Decimal(t) < high), None)
    below, above = _SINGLE.unpack(_BITS.pack(bits - 1))[0], _SINGLE.unpack(_BITS.pack(bits + 1))[0]
    if math.isinf(above):  # the largest single: its interval is as wide above as below
        above = size + (size - below)
    low_bound, high_bound = (size + below) / 2, (size + above) / 2  # exact: singles' midpoints fit a double
    for form in _FORMS:
        text = form % size
        near = float(text)
        if low_bound < near < high_bound:
            return text
        if near in (low_bound, high_bound) and low_bound < decimal.Decimal(text) < high_bound:
            return text
    return None


def _candidates(size: float) -> Iterator[str]:
    """``size`` with 1 to 9 significant digits: nine tell every single apart."""
    return (form % size for form in _FORMS)


_SINGLE, _BITS = struct.Struct("<f"), struct.Struct("<I")
_FORMS = tuple(f"%.{digits}e" for digits in range(9))


def _single_interval(size: float) -> tuple[decimal.Decimal, decimal.Decimal]:
    """The decimals that round to the positive single ``size``: between the midpoints to its neighbours."""
    (bits,) = struct.unpack("<I", struct.pack("<f", size))
    below, above = (struct.unpack("<f", struct.pack("<I", b))[0] for b in (bits - 1, bits + 1))
    exact = decimal.Decimal(size)
    if math.isinf(above):  # the largest single: its interval is as wide above as below
        above = size + (size - below)
    with decimal.localcontext() as context:
        context.prec = 200
        return (exact + decimal.Decimal(below)) / 2, (exact + decimal.Decimal(above)) / 2


def _format_time(value: Any, tz: dt.tzinfo | None, col: Column) -> Any:
    if isinstance(value, str):
        if col.kind != "timestamptz":
            return value or _EMPTY  # a SQLite timestamp's text, as stored ('' too, not NULL)
        value = parse_time(value, col.name)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None and tz is not None:
            try:
                value = value.astimezone(tz)
            except OverflowError:  # its local time is in year 10000 (or 0)
                raise DataError(times.message(col.name)) from None
        return value.isoformat()
    if value is None:
        return None
    raise DataError(not_a_time(col.name, value))


def _not_a_date(col: Column, value: Any) -> Any:
    raise DataError(not_a_time(col.name, value, date=True))


def not_a_time(column: str, value: Any, *, date: bool = False) -> str:
    """The error of a value in a time column that is no time (SQLite columns take any type);
    ``date``: a column of kind date, whose text is ``YYYY-MM-DD`` (a time's text fails in Parquet).

    Such values were written as they were into CSV (a BLOB as Python's ``b'...'``), and Parquet
    took an integer for microseconds since 1970.
    """
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    what, text, convert = (
        ("date", "YYYY-MM-DD text (2024-05-03)", "date")
        if date
        else ("time", "ISO 8601 text (2024-05-03T10:00:00Z)", "datetime")
    )
    return (
        f"column {column!r} holds {shown} ({type(value).__name__}), not a {what}; store {what}s as "
        f"{text}, or convert them in select.sql (for example {convert}({column}, 'unixepoch') for "
        "Unix seconds)"
    )


def parse_time(text: str, column: str) -> dt.datetime:
    """A SQLite time's text: what julianday() reads as a time (RFC 3339's lower-case z too) is
    read as that time, or fails by column (julianday() reads 2024-02-30 as March 1)."""
    try:
        value = dt.datetime.fromisoformat(text[:-1] + "Z" if text.endswith("z") else text)
    except ValueError:
        raise DataError(
            f"column {column!r} holds {text!r}, which is not an ISO 8601 time; correct it in the source,"
            " or convert it in select.sql (to YYYY-MM-DD HH:MM:SS[.ffffff] with Z or ±HH:MM)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
