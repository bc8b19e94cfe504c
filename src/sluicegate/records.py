"""Declared columns of JSON-like records: their kinds, and records turned into table rows.

Blocks tasks declare the columns of what a stage writes (``[load.columns]``, ``[publish]
columns``) as name = kind (:data:`KINDS`). :class:`Columns` checks each record against them
and turns it into a row of values the database takes (:func:`coerce`, then the flavour's
representation of times and JSON); a record that does not fit is rejected with a message
naming the record and the field, never dropped silently. The rows are written by a table
sink (:mod:`sluicegate.tables`), which also rejects, one by one, the rows the database
refuses. ``create = true`` makes the table from the declared kinds (:meth:`Columns.create_sql`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import validate
from .exceptions import ConfigError
from .tabledb import Flavor, quote

# The declared kinds of columns and the SQL type a created table gives them, per flavour.
KINDS: dict[str, dict[Flavor, str]] = {
    "text": {"postgresql": "text", "sqlite": "TEXT", "mariadb": "TEXT"},
    "int": {"postgresql": "bigint", "sqlite": "INTEGER", "mariadb": "BIGINT"},
    "float": {"postgresql": "double precision", "sqlite": "REAL", "mariadb": "DOUBLE"},
    "bool": {"postgresql": "boolean", "sqlite": "INTEGER", "mariadb": "BOOLEAN"},
    "json": {"postgresql": "jsonb", "sqlite": "TEXT", "mariadb": "JSON"},
    # ISO 8601 text, or a number of seconds; epoch_ms: unix milliseconds, as MDS times are
    "timestamptz": {"postgresql": "timestamptz", "sqlite": "TEXT", "mariadb": "DATETIME(6)"},
    "epoch_ms": {"postgresql": "timestamptz", "sqlite": "TEXT", "mariadb": "DATETIME(6)"},
}
MARIADB_KEY_TEXT = "VARCHAR(255)"  # MariaDB indexes no TEXT column without a prefix length
MAX_MESSAGES = 5


def coerce(value: Any, kind: str) -> Any:
    """``value`` as the database takes a ``kind`` column; raises ValueError when it does not fit."""
    if value is None:
        return None
    if kind == "text":
        if isinstance(value, dict | list):
            raise ValueError(f"{type(value).__name__} is not text")
        text = str(value)
        if not validate.is_unicode(text):
            raise ValueError(f"{text[:40]!r} is not valid Unicode text (a lone surrogate)")
        return text
    if kind == "int":
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{value!r} is not a whole number")
        number = int(value)
        if not -(2**63) <= number < 2**63:  # what every database's 64-bit integer column holds
            raise ValueError(f"{value!r} does not fit a 64-bit integer")
        return number
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        real = float(value)
        if not math.isfinite(real):  # SQLite would store NULL, MariaDB refuses it, PostgreSQL keeps it
            raise ValueError(f"{value!r} is not a finite number")
        return real
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not true or false")
        return value
    if kind == "json":
        return json.dumps(value, separators=(",", ":"), allow_nan=False)  # NaN is no JSON
    return _timestamp(value, kind)


def _timestamp(value: Any, kind: str) -> dt.datetime:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a time")
    if isinstance(value, int | float):
        try:
            return dt.datetime.fromtimestamp(value / 1000 if kind == "epoch_ms" else value, dt.UTC)
        except (OverflowError, OSError):  # the C library's limit, or past year 9999
            raise ValueError(f"{value!r} is not a time between the years 1 and 9999") from None
    if kind == "epoch_ms":
        raise ValueError(f"{value!r} is not unix milliseconds")
    parsed = dt.datetime.fromisoformat(str(value))
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset")
    return parsed


def kinds(raw: Any, where: str, example: str = '{ trip_id = "text" }') -> tuple[tuple[str, str], ...]:
    """Read a ``columns`` table of name = kind; ConfigError naming the column otherwise."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} columns: declare each column and its kind, e.g. {example}")
    for name, kind in raw.items():
        validate.identifier(name, f"{where} columns")
        if kind not in KINDS:
            raise ConfigError(
                f"{where} columns.{name}: {kind!r} is not a kind; use one of {', '.join(KINDS)}"
            )
    return tuple((str(name), str(kind)) for name, kind in raw.items())


@dataclass(frozen=True, kw_only=True)
class Rows:
    """Records as rows: the rows of the records that fit, how many did not, and why (the first few)."""

    rows: list[tuple[Any, ...]]
    errors: int
    messages: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """How many records came."""
        return len(self.rows) + self.errors


@dataclass(frozen=True, kw_only=True)
class KeptPerKey:
    """The places (1, 2, ...) of the records that are the last of their key of ``columns``, without
    the records: what a load by that key leaves in its table, whatever its mode, so a publish keeps
    the same records in a second pass over them (a block's records held at once took the memory of
    the block many times over). A record that does not fit the columns is kept (the load rejects
    it); without a key, every record is. ``duplicates``: how many records a later one of their key
    replaced, with the first few ``messages``."""

    numbers: set[int]
    duplicates: int = 0
    messages: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, records: Iterable[Any], columns: Columns | None) -> KeptPerKey:
        """The last record per key of ``columns`` among ``records``."""
        kept: dict[Any, int] = {}
        duplicates, messages = 0, list[str]()
        for number, record in enumerate(records, 1):
            key: Any = ("", number)  # unique: not deduplicated
            if columns is not None and columns.key:
                with contextlib.suppress(ValueError):
                    named = dict(zip(columns.names, columns.values(record), strict=True))
                    key = tuple(_key_text(named[k]) for k in columns.key)
            if key in kept:
                duplicates += 1
                if len(messages) < MAX_MESSAGES:
                    shown = ", ".join(
                        f"{k}={json.loads(v)!r}"
                        for k, v in zip(columns.key if columns else (), key, strict=True)
                    )
                    messages.append(
                        f"record {kept[key]}: {shown} comes again in record {number}; the last is kept"
                    )
            kept[key] = number
        return cls(numbers=set(kept.values()), duplicates=duplicates, messages=messages)


def _key_text(value: Any) -> str:
    """A key value as text that is one for values a table's key takes for one: a time by its UTC
    instant (two offsets of one instant were two keys, one row of a ``timestamptz`` key), a float
    without the sign of its zero."""
    if isinstance(value, dt.datetime):
        value = value.astimezone(dt.UTC).isoformat()
    elif isinstance(value, float):
        value += 0.0  # -0.0 + 0.0 is 0.0
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True, kw_only=True)
class Columns:
    """The declared columns of a table, in table order, and its key columns (none for a replace)."""

    columns: tuple[tuple[str, str], ...]  # (name, kind)
    key: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """The column names."""
        return tuple(name for name, _ in self.columns)

    def rows(
        self, records: Iterable[Mapping[str, Any]], flavor: Flavor, numbers: Sequence[int] | None = None
    ) -> Rows:
        """The records as rows for a table of ``flavor``; records that do not fit are counted (and
        named by their ``numbers`` in the artifact: 1, 2, ... by default)."""
        rows: list[tuple[Any, ...]] = []
        errors, messages = 0, list[str]()
        for number, record in zip(numbers or itertools.count(1), records, strict=False):
            try:
                rows.append(self._row(record, flavor))
            except ValueError as exc:
                errors += 1
                if len(messages) < MAX_MESSAGES:
                    messages.append(f"record {number}: {exc}")
        return Rows(rows=rows, errors=errors, messages=messages)

    def values(self, record: Any) -> tuple[Any, ...]:
        """A record's values of the declared columns, coerced to their kinds; ValueError naming
        the column when one does not fit (or the key is missing)."""
        if not isinstance(record, Mapping):
            raise ValueError(f"a {type(record).__name__}, not a record (an object)")
        out = []
        for name, kind in self.columns:
            value = record.get(name)
            if value is None and name in self.key:
                raise ValueError(f"key {name} is missing")
            try:
                out.append(coerce(value, kind))
            except (ValueError, TypeError, OverflowError) as exc:
                raise ValueError(f"{name}: {exc}") from None
        return tuple(out)

    def _row(self, record: Mapping[str, Any], flavor: Flavor) -> tuple[Any, ...]:
        values = self.values(record)
        return tuple(_stored(v, kind, flavor) for v, (_, kind) in zip(values, self.columns, strict=True))

    def shown_key(self, row: tuple[Any, ...]) -> str:
        """A row's key (or its first column) for a message: ``trip_id='t-1'``."""
        named = dict(zip(self.names, row, strict=True))
        return ", ".join(f"{k}={named[k]!r}" for k in self.key or self.names[:1])

    def create_sql(self, flavor: Flavor, table: str, *, exact: str = "") -> str:
        """``CREATE TABLE IF NOT EXISTS`` with the declared kinds, the key as its primary key.

        ``exact``: MariaDB's binary NO PAD collation, for text key columns (the server's default
        took ``Trip-A``, ``trip-a``, ``trip-a `` and ``trip-á`` for one key: three rows lost)."""
        cols = []
        for name, kind in self.columns:
            sql_type = KINDS[kind][flavor]
            if flavor == "mariadb" and kind == "text" and name in self.key:
                sql_type = MARIADB_KEY_TEXT + (f" CHARACTER SET utf8mb4 COLLATE {exact}" if exact else "")
            cols.append(f"{quote(flavor, name)} {sql_type}")
        if self.key:
            cols.append(f"PRIMARY KEY ({', '.join(quote(flavor, k) for k in self.key)})")
        return f"CREATE TABLE IF NOT EXISTS {quote(flavor, table)} ({', '.join(cols)})"


def _stored(value: Any, kind: str, flavor: Flavor) -> Any:
    """A coerced value as ``flavor`` stores it: times aware on PostgreSQL, naive UTC on MariaDB
    (``DATETIME``), ISO 8601 text on SQLite, which has no time type (the text sorts right)."""
    if isinstance(value, dt.datetime):
        if flavor == "sqlite":
            return value.isoformat()
        if flavor == "mariadb":
            return value.astimezone(dt.UTC).replace(tzinfo=None)
        return value
    if kind == "json" and value is not None and flavor == "postgresql":
        from psycopg.types.json import Jsonb

        return Jsonb(value, dumps=str)  # already JSON text: sent as jsonb, not as text
    return value


class Fitting:
    """The records of an artifact as rows of the declared ``columns`` (as they are without any),
    the last per key of the load's ``loaded`` columns (the table's rows); a record that does not fit is
    left out with its reason in ``skipped`` (the load counted it already), not the block's failure.
    ``seen``: the records read so far (duplicates left out)."""

    def __init__(
        self, records: Callable[[], Iterable[Any]], columns: Sequence[tuple[str, str]], loaded: Columns | None
    ) -> None:
        """``records()`` gives the records anew: with a key, a first pass finds the last per key."""
        self.last = KeptPerKey.of(records(), loaded) if loaded is not None and loaded.key else None
        kept = self.last.numbers if self.last else None
        self.records = ((n, r) for n, r in enumerate(records(), 1) if kept is None or n in kept)
        self.columns = Columns(columns=tuple(columns))
        self.skipped: list[str] = []
        self.seen = 0

    def __iter__(self) -> Iterator[Any]:
        for number, record in self.records:
            self.seen += 1
            if not self.columns.columns:  # no declared columns: the records as they are
                yield record
                continue
            try:
                row = self.columns.values(record)
            except ValueError as exc:
                self.skipped.append(f"record {number}: {exc}")
                continue
            yield row
