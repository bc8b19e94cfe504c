"""JSON lines: one JSON object per record, optionally the whole file Fernet-encrypted.

Records come as dicts (from a callable stage) or as row tuples (from a SQL source), which
are named by the columns. Values JSON has no type for are written as text: timestamps in
ISO 8601 (in the unit's zone when one is given), dates, decimals (exactly, as their text),
UUIDs, and the floats NaN, Infinity and -Infinity (spelled as in CSV: JSON has no token for
them); bytes as base64. Row tuples take their columns' kinds, as in CSV: SQLite's text in a
``timestamptz`` column is a time in the unit's zone, its integers in a ``bool`` column are
booleans. Keys keep the order the record gave them, so the same records give the same bytes.

Encrypted files (``fernet_key``) hold one Fernet token of the whole JSON lines text, as
atd-mds stored its payloads: ``Fernet(key).decrypt(file)`` gives the lines back. A token is
made at once, so an encrypted file is held in memory until it is closed (a block's records);
its bytes differ on every write (Fernet has a fresh IV and timestamp).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import io
import json
import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from ..exceptions import DataError, TerminalError
from ..sources import Column, Mode, times
from .csv import float_text, not_a_time, parse_time, single_text, time_text


class JsonlWriter:
    """Writes records as JSON lines onto a binary file object."""

    def __init__(
        self, out: Any, columns: Sequence[Column], zone: str | None, *, fernet_key: str | None = None
    ) -> None:
        self.out = out
        self.names = [c.name for c in columns]
        self.zone = ZoneInfo(zone) if zone else None
        self._convert = [self._converter(c) for c in columns]
        self.rows = 0
        self._fernet = None
        self._buffer = bytearray()
        if fernet_key:
            from cryptography.fernet import Fernet

            self._fernet = Fernet(fernet_key)

    @property
    def held(self) -> int:
        """Bytes kept for encryption at :meth:`close` (none when not encrypted)."""
        return len(self._buffer)

    def write(self, chunk: Any, mode: Mode) -> None:
        """Append records: a list of dicts, or of row tuples named by the columns."""
        lines = bytearray()
        for record in chunk:
            if isinstance(record, dict):
                named = {k: _finite(v) for k, v in record.items()}
            else:
                named = {n: f(v) for n, f, v in zip(self.names, self._convert, record, strict=True)}
            try:
                text = json.dumps(
                    named, ensure_ascii=False, separators=(",", ":"), default=self._value, allow_nan=False
                )
            except (TypeError, ValueError) as exc:
                raise DataError(f"a record cannot be written as JSON: {exc}") from None
            try:
                lines += text.encode("utf-8") + b"\n"
            except UnicodeEncodeError:  # a lone surrogate: kept as JSON's \ud800 escape, for readers to judge
                lines += json.dumps(json.loads(text), separators=(",", ":")).encode("ascii") + b"\n"
            self.rows += 1
        if self._fernet is not None:
            self._buffer += lines
        else:
            self.out.write(lines)

    def close(self) -> None:
        """Encrypt and write the held lines (encrypted files); nothing else to finish."""
        if self._fernet is not None:
            self.out.write(self._fernet.encrypt(bytes(self._buffer)))
            self._buffer = bytearray()

    def _converter(self, col: Column) -> Callable[[Any], Any]:
        """What a row value of ``col`` becomes before JSON encoding (SQLite holds text and integers)."""
        if col.kind == "timestamptz":
            return lambda v: self._time(col, v) if isinstance(v, str | dt.datetime) else _no_time(col, v)
        if col.kind in ("timestamp", "date"):  # SQLite's number or BLOB is none: it fails, as in CSV
            return lambda v: v if v is None or isinstance(v, str | dt.date) else _no_time(col, v)
        if col.kind == "bool":
            return lambda v: bool(v) if isinstance(v, int) else _finite(v)
        if col.kind == "binary":
            return lambda v: v.encode() if isinstance(v, str) else _finite(v)
        if col.kind == "float" and col.precision == 24:  # a real, read widened: its own digits, as in CSV
            return lambda v: _finite(float(single_text(v))) if type(v) is float else _finite(v)
        return _finite

    def _time(self, col: Column, text: str | dt.datetime) -> dt.datetime:
        """A time in the unit's zone: SQLite's text, or a driver's datetime (naive: as it is)."""
        value = parse_time(text, col.name) if isinstance(text, str) else text
        try:
            return value.astimezone(self.zone) if self.zone is not None and value.tzinfo else value
        except OverflowError:  # its local time is in year 10000 (or 0): was a bare OverflowError
            raise DataError(
                times.message(col.name, repr(text) if isinstance(text, str) else "a time")
            ) from None

    def _value(self, value: Any) -> Any:
        if isinstance(value, dt.datetime):
            if value.tzinfo is not None and self.zone is not None:
                value = value.astimezone(self.zone)
            return value.isoformat()
        if isinstance(value, dt.time):
            return time_text(value)
        if isinstance(value, dt.date):
            return value.isoformat()
        if isinstance(value, decimal.Decimal):
            return format(value, "f")  # as the database writes it: 0.0000000001, not 1E-10
        if isinstance(value, uuid.UUID):
            return str(value)
        if isinstance(value, bytes | bytearray | memoryview):
            return base64.b64encode(bytes(value)).decode("ascii")
        raise TypeError(f"a value of type {type(value).__name__} is not JSON")


def _no_time(col: Column, value: Any) -> Any:
    """None as it is; any other value of a time or date column that is no time fails (SQLite)."""
    if value is None:
        return None
    raise DataError(not_a_time(col.name, value, date=col.kind == "date"))


def _finite(value: Any) -> Any:
    """A NaN or infinite float as text, which JSON can hold; any other value as it is."""
    if type(value) is float and not math.isfinite(value):
        return float_text(value)
    return value


def read_records(
    data: bytes, *, fernet_key: str | None = None, where: str = "the file"
) -> Iterator[dict[str, Any]]:
    """The records of a JSON lines file (decrypted first with ``fernet_key``).

    Raises TerminalError naming ``where`` when the file cannot be decrypted or a line is not
    a JSON object.
    """
    yield from parse_records(decrypt(data, fernet_key, where), where)


def decrypt(data: bytes, fernet_key: str | None, where: str) -> bytes:
    """The JSON lines of a file encrypted with ``fernet_key`` (None: of a plain one); TerminalError
    naming ``where`` and what to do when it was written with another key, or encryption was turned
    on or off since (a plain file's first line is a JSON object, never a token)."""
    from cryptography.fernet import Fernet, InvalidToken

    redo = "or write it again (sluicegate blocks TASK ... --force)"
    if not data.startswith(b"gAAAAA"):
        if fernet_key and data:
            raise TerminalError(f"{where} is not encrypted (written before encrypt was on); {redo}")
        return data
    if not fernet_key:
        raise TerminalError(
            f"{where} is encrypted; turn encrypt on again with the key it was written with, {redo}"
        )
    try:
        return Fernet(fernet_key).decrypt(data)
    except InvalidToken:
        raise TerminalError(
            f"{where} could not be decrypted with the Fernet key; set SLUICEGATE_FERNET_KEY to the key "
            f"it was written with, {redo}"
        ) from None


def parse_records(data: bytes, where: str) -> Iterator[dict[str, Any]]:
    """The records of JSON lines, one line at a time: a list of a block's lines was a second copy
    of the file in memory. Lines end as ``bytes.splitlines`` ends them (``\\n``, ``\\r\\n``, ``\\r``)."""
    lines = (line for chunk in io.BytesIO(data) for line in chunk.splitlines())
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise TerminalError(f"{where} line {number} is not JSON") from None
        if not isinstance(record, dict):
            raise TerminalError(f"{where} line {number} is not a JSON object")
        yield record
