"""JSON lines: one JSON object per record, optionally the whole file Fernet-encrypted.

Records come as dicts (from a callable stage) or as row tuples (from a SQL source), which
are named by the columns. Values JSON has no type for are written as text: timestamps in
ISO 8601 (in the unit's zone when one is given), dates, decimals (exactly, as their text),
UUIDs; bytes as base64. Keys keep the order the record gave them, so the same records give
the same bytes.

Encrypted files (``fernet_key``) hold one Fernet token of the whole JSON lines text, as
atd-mds stored its payloads: ``Fernet(key).decrypt(file)`` gives the lines back. A token is
made at once, so an encrypted file is held in memory until it is closed (a block's records);
its bytes differ on every write (Fernet has a fresh IV and timestamp).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Iterator, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from ..exceptions import DataError, TerminalError
from ..sources import Column, Mode


class JsonlWriter:
    """Writes records as JSON lines onto a binary file object."""

    def __init__(
        self, out: Any, columns: Sequence[Column], zone: str | None, *, fernet_key: str | None = None
    ) -> None:
        self.out = out
        self.names = [c.name for c in columns]
        self.zone = ZoneInfo(zone) if zone else None
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
            named = record if isinstance(record, dict) else dict(zip(self.names, record, strict=True))
            try:
                text = json.dumps(named, ensure_ascii=False, separators=(",", ":"), default=self._value)
            except (TypeError, ValueError) as exc:
                raise DataError(f"a record cannot be written as JSON: {exc}") from None
            lines += text.encode("utf-8") + b"\n"
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

    def _value(self, value: Any) -> Any:
        if isinstance(value, dt.datetime):
            if value.tzinfo is not None and self.zone is not None:
                value = value.astimezone(self.zone)
            return value.isoformat()
        if isinstance(value, dt.date | dt.time):
            return value.isoformat()
        if isinstance(value, decimal.Decimal | uuid.UUID):
            return str(value)
        if isinstance(value, bytes | bytearray | memoryview):
            return base64.b64encode(bytes(value)).decode("ascii")
        raise TypeError(f"a value of type {type(value).__name__} is not JSON")


def read_records(
    data: bytes, *, fernet_key: str | None = None, where: str = "the file"
) -> Iterator[dict[str, Any]]:
    """The records of a JSON lines file (decrypted first with ``fernet_key``).

    Raises TerminalError naming ``where`` when the file cannot be decrypted or a line is not
    a JSON object.
    """
    if fernet_key:
        from cryptography.fernet import Fernet, InvalidToken

        try:
            data = Fernet(fernet_key).decrypt(data)
        except InvalidToken:
            raise TerminalError(
                f"{where} could not be decrypted with the Fernet key; it was written with another key"
            ) from None
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise TerminalError(f"{where} line {number} is not JSON") from None
        if not isinstance(record, dict):
            raise TerminalError(f"{where} line {number} is not a JSON object")
        yield record
