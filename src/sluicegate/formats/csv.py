"""CSV and deterministic CSV.gz.

Dialect: a header line, RFC 4180 quoting (only where needed), UTF-8, ``\\n`` line ends, NULL
as an empty field, booleans as ``true``/``false``, timestamps as ISO 8601 with the offset of
the partition's zone. The gzip header carries no file name and a zero mtime, so equal rows
give equal bytes. On PostgreSQL the same dialect is produced from Arrow batches (or by COPY
when the ADBC driver is missing); there an empty string is written as ``""`` to tell it from
NULL, and Arrow quotes every non-empty text value, which is valid RFC 4180 either way.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

from ..exceptions import DataError
from ..partitions import zone_of
from ..sources import Column, Mode
from .deflate import GzipWriter

DEFER_BYTES = 1024 * 1024  # CSV kept per partition for compression at close (see CsvWriter)


class CsvWriter:
    """Writes one partition as CSV, optionally gzip-compressed.

    Compression is deferred: the first DEFER_BYTES of CSV are kept and compressed by
    :meth:`close`, which the engine calls on a publisher thread (zlib releases the GIL), so
    small partitions are compressed in parallel with reading the next ones. A larger
    partition is compressed as it streams, in blocks on other cores (see ``deflate``). The
    bytes are the same either way.
    """

    def __init__(
        self, out: BinaryIO, columns: Sequence[Column], zone: str | None, gzip_level: int | None
    ) -> None:
        self.rows = 0
        self._raw = out
        self._level = gzip_level
        self._gz: GzipWriter | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._text = io.StringIO()
        self._csv = csv.writer(self._text, lineterminator="\n")
        self._convert = [_converter(c, zone) for c in columns]
        self._csv.writerow([c.name for c in columns])
        self._flush_text()

    def _emit(self, data: bytes) -> None:
        if self._level is None:
            self._raw.write(data)
        elif self._gz is None and self._pending_size + len(data) <= DEFER_BYTES:
            self._pending.append(data)
            self._pending_size += len(data)
        else:
            self._compressor().write(data)

    def _compressor(self) -> GzipWriter:
        if self._gz is None:
            self._gz = GzipWriter(self._raw, self._level or 6)
            for data in self._pending:
                self._gz.write(data)
            self._pending, self._pending_size = [], 0
        return self._gz

    def _flush_text(self) -> None:
        self._emit(self._text.getvalue().encode("utf-8"))
        self._text.seek(0)
        self._text.truncate()

    @property
    def held(self) -> int:
        """Bytes kept in memory for :meth:`close` to encode."""
        return self._pending_size

    def write(self, chunk: Any, mode: Mode) -> None:
        """Append CSV bytes (from COPY, or encoded from Arrow batches), or encode row tuples."""
        if mode == "csv":
            self._emit(chunk.data)
            self.rows += chunk.rows
            return
        convert = self._convert
        try:
            self._csv.writerows([[f(v) for f, v in zip(convert, row, strict=True)] for row in chunk])
        except (ValueError, TypeError) as exc:
            raise DataError(f"a row could not be encoded as CSV: {exc}") from exc
        self.rows += len(chunk)
        self._flush_text()

    def close(self) -> None:
        """Compress what is still pending and write the gzip trailer, if any."""
        if self._level is not None:
            self._compressor().close()


def _converter(col: Column, zone: str | None) -> Callable[[Any], Any]:
    if col.kind in ("timestamptz", "timestamp"):
        tz = zone_of(zone) if zone else None
        return lambda v: _format_time(v, tz, col.kind)
    if col.kind == "bool":
        return lambda v: None if v is None else ("true" if v else "false")
    if col.kind in ("float", "other"):
        return _number
    return _identity


def _identity(value: Any) -> Any:
    return value


def _number(value: Any) -> Any:
    """Floats as PostgreSQL prints them (shortest round-trip, no trailing '.0'), so both
    read paths give the same bytes for the same rows."""
    if type(value) is float:
        text = repr(value)
        if text.endswith(".0"):
            return text[:-2]
        if text in ("inf", "-inf", "nan"):
            return {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}[text]
        return text
    return value


def _format_time(value: Any, tz: dt.tzinfo | None, kind: str) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and kind == "timestamptz":
        value = _parse_time(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None and tz is not None:
            value = value.astimezone(tz)
        return value.isoformat()
    return value


def _parse_time(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise DataError(f"{text!r} is not an ISO 8601 timestamp") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
