"""What MariaDB Connector/Python 1.1 reads wrongly, put right: values and column types.

A signed ``TINYINT`` (``BOOLEAN``, ``TINYINT(1)`` too) is read as its byte unsigned: -1 came as
255 and -128 as 128 (its row callback casts the ``unsigned char`` to ``long``). Every read with
parameters, and :meth:`~sluicegate.sources.mariadb.MariaDbSource.execute`, takes that protocol, so
the files held 255 where the table holds -1. A signed ``TINYINT`` holds -128 to 127 only, so a
value above 127 is the byte of a negative one (and a driver that reads it right is left alone).

A ``DECIMAL`` of a scale above 30 (``DECIMAL(31,31)``) has a scale of 0 in the description: taken
as ``decimal128(32, 0)``, its Parquet column refused 0.5 ("Rescaling Decimal value would cause
data loss") and the partition failed. The result's metadata has its scale (``decimals``).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

_TINY = 1
_DATES = (7, 10, 12, 14, 17, 18)  # TIMESTAMP, DATE, DATETIME, NEWDATE and the fractional ones
_TEXTS = (15, 249, 250, 251, 252, 253, 254)  # VARCHAR, the BLOB/TEXT family, VAR_STRING, STRING
UNSIGNED = 32  # column flag


def row_cursor(conn: Any) -> Any:
    """An unbuffered cursor reading rows in the binary protocol, whatever the parameters.

    The driver takes the text protocol for a query whose parameters are numbers and text only
    (a task without ``[time]``, an archive select without ``%(export_boundary)s``), and there
    reads a zero date (``0000-00-00``) or one with a zero month (``2024-00-15``) as NULL without
    a word: the file held an empty field, and an archive deleted the row it had not exported.
    In the binary protocol it cannot read such a value, and the read fails by cause (see
    :class:`~sluicegate.sources.mariadb._Converting`).
    """
    return conn.cursor(buffered=False, binary=True)


def unreadable(cause: BaseException, description: Sequence[Sequence[Any]] | None) -> str:
    """The error of a value the driver could not read (``cause``), naming the result's date and
    time columns: the driver does not say which value it was, and a zero date is the one kind
    of value it fails on (the partition failed naming neither)."""
    text = isinstance(cause, UnicodeDecodeError) or "UnicodeDecodeError" in str(cause)
    codes = _TEXTS if text else _DATES  # bytes that are no UTF-8 (a utf8mb3 column's lone surrogate)
    names = [str(desc[0]) for desc in description or () if int(desc[1]) in codes]
    which = f" in column {names[0]!r}" if len(names) == 1 else ""
    if len(names) > 1:
        which = f" in one of the columns {', '.join(map(repr, names))}"
    if text:
        return (
            f"MariaDB's driver could not read a value of this partition ({cause}){which}: text that is "
            "not UTF-8, which a legacy character set let in; fix the value, or read the column in "
            "select.sql as CAST(col AS BINARY) to keep its bytes"
        )
    return (
        f"MariaDB's driver could not read a value of this partition ({cause}){which}, such as a zero "
        "date (0000-00-00); convert the column in select.sql (for example NULLIF(col, '0000-00-00 "
        "00:00:00'), or CAST(col AS CHAR) to keep its text)"
    )


def is_signed_tiny(desc: Sequence[Any]) -> bool:
    """Whether a result column (a driver description entry) is a signed TINYINT."""
    return int(desc[1]) == _TINY and not int(desc[7]) & UNSIGNED


def signed_tiny(value: Any) -> Any:
    """A signed TINYINT's value from the byte the driver read as unsigned."""
    return value - 256 if type(value) is int and value > 127 else value


def decimal_type(desc: Sequence[Any], decimals: int) -> tuple[int, int]:
    """A DECIMAL column's scale (its metadata's ``decimals``) and precision, from its length in
    the description, which counts the point and the sign."""
    length, scale, flags = int(desc[3]), int(decimals), int(desc[7])
    return scale, length - (1 if scale else 0) - (0 if flags & UNSIGNED else 1)


def signed_tiny_columns(description: Sequence[Sequence[Any]] | None) -> list[int]:
    """The positions of the signed TINYINT columns of a result."""
    return [i for i, desc in enumerate(description or ()) if is_signed_tiny(desc)]


def with_signed_tiny(rows: Sequence[Sequence[Any]], columns: Sequence[int]) -> Sequence[Any]:
    """``rows`` with the values of the signed TINYINT ``columns`` put right: ``rows`` themselves
    when none is above 127. The test is a scan in C: copying every row of a table with a BOOLEAN
    added a third to the driver's own time to fetch it (0.10 s on 0.30 s for 200,000 rows)."""
    wrong = [i for i in columns if _above(rows, i)]
    if not wrong:
        return rows
    out = []
    for row in rows:
        values = list(row)
        for i in wrong:
            values[i] = signed_tiny(values[i])
        out.append(tuple(values))
    return out


def _above(rows: Sequence[Sequence[Any]], column: int) -> bool:
    """Whether a value of ``column`` in ``rows`` may be a byte read unsigned (above 127)."""
    try:
        return max(filter(None, map(itemgetter(column), rows)), default=0) > 127
    except TypeError:  # not only numbers: the rows are looked at one by one
        return True
