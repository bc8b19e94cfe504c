"""Database connections and the dialect layer (SQLite, PostgreSQL; room for MariaDB).

Everything that differs between databases is behind :class:`Dialect`: how to connect, how
a transaction that claims rows begins, how to quote an identifier, how to bin a timestamp to
15 minutes. Driver errors are translated once, here, by :func:`wrap_errors`.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg

from .config import mask_url
from .exceptions import ConfigError, DataError, SourceUnavailable

DialectName = Literal["sqlite", "postgresql"]


@dataclass(frozen=True)
class Dialect:
    """Facts about one SQL dialect."""

    name: DialectName

    def quote(self, ident: str) -> str:
        """Quote an identifier (already validated as ``[A-Za-z_][A-Za-z0-9_]*`` or ``a.b``)."""
        return ".".join('"' + part.replace('"', '""') + '"' for part in ident.split("."))

    def bin_expr(self, column_sql: str, time_ending: bool) -> str:
        """SQL for the 15-minute UTC bin holding ``column_sql`` (minus 1 µs when time-ending)."""
        if self.name == "postgresql":
            shifted = f"({column_sql} - interval '1 microsecond')" if time_ending else column_sql
            return f"to_timestamp(floor(extract(epoch FROM {shifted}) / 900) * 900)"
        epoch = f"round((julianday({column_sql}) - 2440587.5) * 86400.0, 3)"
        if time_ending:
            epoch = f"({epoch} - 0.0005)"
        return f"(CAST({epoch} / 900 AS INTEGER) * 900)"


SQLITE = Dialect("sqlite")
POSTGRESQL = Dialect("postgresql")


def dialect_of(url: str) -> Dialect:
    """Return the dialect for a database URL, or raise ConfigError naming the URL."""
    if url.startswith("sqlite:"):
        return SQLITE
    if url.startswith(("postgresql://", "postgres://")):
        return POSTGRESQL
    raise ConfigError(
        f"database URL {mask_url(url)!r} is not supported; use sqlite:///path.db or postgresql://user@host/db"
    )


def sqlite_path(url: str) -> Path:
    """Return the file path of a ``sqlite:///`` URL."""
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url[len("sqlite:") :]
    if not path:
        raise ConfigError(f"database URL {url!r} has no file path; use sqlite:///path/to/file.db")
    return Path(path)


def connect(url: str, *, autocommit: bool = True) -> Any:
    """Open a DB-API connection for ``url`` (sqlite3 or psycopg)."""
    dialect = dialect_of(url)
    if dialect is SQLITE:
        path = sqlite_path(url)
        if not path.parent.exists():
            raise ConfigError(f"folder {path.parent} for SQLite database {path.name} does not exist")
        conn = sqlite3.connect(path, isolation_level=None, timeout=60, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=60000")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn
    with wrap_errors(url):
        return psycopg.connect(url, autocommit=autocommit, application_name="sluicegate")


@contextlib.contextmanager
def wrap_errors(url: str) -> Iterator[None]:
    """Translate driver errors into sluicegate errors, masking the URL's password."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise SourceUnavailable(f"database {mask_url(url)} is unavailable: {_first_line(exc)}") from exc
    except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected) as exc:
        raise SourceUnavailable(f"database {mask_url(url)}: {_first_line(exc)}; will retry") from exc
    except psycopg.DataError as exc:
        raise DataError(f"database {mask_url(url)} rejected a value: {_first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise DataError(f"database {mask_url(url)}: {_first_line(exc)}") from exc
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise SourceUnavailable(f"SQLite database is busy: {exc}") from exc
        raise DataError(f"SQLite: {exc}") from exc
    except sqlite3.Error as exc:
        raise DataError(f"SQLite: {exc}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextlib.contextmanager
def transaction(conn: Any, dialect: Dialect, *, immediate: bool = False) -> Iterator[Any]:
    """Run a block in one transaction on an autocommit connection; yield a cursor.

    On SQLite ``immediate=True`` takes the write lock up front (``BEGIN IMMEDIATE``), which
    is how claims stay exclusive without ``SKIP LOCKED``.
    """
    if dialect is SQLITE:
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
        return
    with conn.transaction(), conn.cursor() as cur:
        yield cur
