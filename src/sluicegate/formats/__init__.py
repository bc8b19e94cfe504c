"""File formats: ``csv``, ``csv.gz``, ``parquet`` and ``jsonl`` (JSON lines, optionally Fernet-encrypted).

A :class:`Writer` follows the open / write / close lifecycle. It accepts the chunk kinds of
its :class:`FormatSpec` ``modes`` (row tuples, pre-encoded CSV bytes, Arrow tables). Output
bytes are a pure function of the rows: the same rows always give the same file, so an
unchanged partition can be recognised by its checksum and not uploaded again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..sources import Column, Mode


@dataclass(frozen=True, kw_only=True)
class FormatSpec:
    """Static facts about a format."""

    name: str
    extension: str
    modes: tuple[Mode, ...]
    content_type: str


class Writer(Protocol):
    """Encodes one partition's rows into a binary file object."""

    rows: int

    @property
    def held(self) -> int:
        """Bytes kept in memory for :meth:`close` to encode (deferred work, see the formats)."""
        ...

    def write(self, chunk: Any, mode: Mode) -> None:
        """Append a chunk (rows, CSV bytes or an Arrow table, per ``mode``)."""
        ...

    def close(self) -> None:
        """Finish the file (trailers, footers); does not close the underlying file object."""
        ...


SPECS = {
    "csv": FormatSpec(name="csv", extension="csv", modes=("csv", "rows"), content_type="text/csv"),
    "csv.gz": FormatSpec(
        name="csv.gz", extension="csv.gz", modes=("csv", "rows"), content_type="application/gzip"
    ),
    "parquet": FormatSpec(
        name="parquet",
        extension="parquet",
        modes=("arrow", "rows"),
        content_type="application/vnd.apache.parquet",
    ),
    "jsonl": FormatSpec(
        name="jsonl", extension="jsonl", modes=("rows",), content_type="application/x-ndjson"
    ),
}


def open_writer(
    fmt: str, out: Any, columns: Sequence[Column], zone: str | None, *, fernet_key: str | None = None
) -> Writer:
    """Open a writer for ``fmt`` onto the binary file-like ``out``, for ``columns`` in zone ``zone``.

    ``fernet_key`` (JSON lines only) encrypts the file.
    """
    if fmt == "jsonl":
        from .jsonl import JsonlWriter

        return JsonlWriter(out, columns, zone, fernet_key=fernet_key)
    if fmt == "parquet":
        from .parquet import ParquetWriter

        return ParquetWriter(out, columns, zone)
    from .csv import CsvWriter

    return CsvWriter(out, columns, zone, gzip_level=6 if fmt == "csv.gz" else None)
