"""Database connections and the dialect layer (SQLite, PostgreSQL, MariaDB/MySQL).

Everything that differs between databases is behind :class:`Dialect`: how to connect, how
a transaction that claims rows begins, how to quote an identifier, how to bin a timestamp to
15 minutes. Driver errors are translated once, here, by :func:`wrap_errors`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import mariadb_conn, pg_text, source_outage
from .exceptions import (
    ConfigError,
    DataError,
    LedgerError,
    LedgerPermissionDenied,
    PermissionDenied,
    SluicegateError,
    SourceLost,
    SourceUnavailable,
    StatementTimedOut,
)
from .masking import mask_url, scrub

DialectName = Literal["sqlite", "postgresql", "mariadb"]
PG_BINS = (-69039456, 281557920)  # the bins of 0001-01-02 and 9999-12-30 UTC (Unix seconds / 900)
log = logging.getLogger("sluicegate.db")


@dataclass(frozen=True)
class Dialect:
    """Facts about one SQL dialect."""

    name: DialectName

    def quote(self, ident: str) -> str:
        """Quote an identifier (already validated as ``[A-Za-z_][A-Za-z0-9_]*`` or ``a.b``)."""
        return ".".join(self.quote_name(part) for part in ident.split("."))

    def quote_name(self, name: str) -> str:
        """Quote one name as it is, dots and all: a column of a select's result may be called
        anything (``v.1``, ``pct%d``, a backtick)."""
        if self.name == "mariadb":
            return "`" + name.replace("`", "``") + "`"
        return '"' + name.replace('"', '""') + '"'

    def bin_expr(self, column_sql: str, time_ending: bool) -> str:
        """SQL for the 15-minute UTC bin holding ``column_sql`` (minus 1 µs when time-ending)."""
        if self.name == "postgresql":
            # A time outside the years 1 to 9999 ('infinity') gets the bin of 0001-01-02 or
            # 9999-12-30, which psycopg can load and capture.fold sets aside with a warning.
            n = self.bin_number(column_sql, time_ending)
            lo, hi = PG_BINS
            clamped = f"CASE WHEN {n} < {lo} THEN {lo} WHEN {n} > {hi} THEN {hi} ELSE {n} END"
            return f"pg_catalog.to_timestamp(({clamped}) OPERATOR(pg_catalog.*) 900)"
        if self.name == "mariadb":
            # Unix seconds of the bin. TIMESTAMPDIFF counts a DATETIME (and a TIMESTAMP, shown
            # in the session's UTC) as UTC wall-clock time, without the server's zone tables and
            # over DATETIME's whole range (UNIX_TIMESTAMP stops in 2038 before MariaDB 11.5).
            shifted = f"({column_sql} - INTERVAL 1 MICROSECOND)" if time_ending else column_sql
            return f"(FLOOR(TIMESTAMPDIFF(SECOND, '1970-01-01', {shifted}) / 900) * 900)"
        epoch = f"round((julianday({column_sql}) - 2440587.5) * 86400.0, 3)"
        if time_ending:
            epoch = f"({epoch} - 0.0005)"
        return f"(CAST({epoch} / 900 AS INTEGER) * 900)"

    def exact_copies(self, columns_sql: list[str]) -> list[str]:
        """Columns to add after the others to a ``SELECT DISTINCT`` of key values, so that it keeps
        apart the values MariaDB's collations take as equal: ``Gent``, ``GENT`` and ``Gent `` under a
        case-blind or PAD SPACE collation came back as one, and the partitions (or entities) of the
        others were never marked, their rows in no file. The caller cuts them off each row.
        SQLite's and PostgreSQL's text compares as stored: none."""
        return [f"CAST({c} AS BINARY)" for c in columns_sql] if self.name == "mariadb" else []

    def bin_number(self, column_sql: str, time_ending: bool) -> str:
        """PostgreSQL: SQL for the number of the 15-minute UTC bin holding ``column_sql`` (Unix
        seconds / 900, a double). Whole seconds as a double are exact, and the arithmetic costs a
        fraction of ``numeric``'s (``extract`` returns numeric): a capture trigger computes it
        for every row of a COPY. Every function, operator and type is named in ``pg_catalog``,
        so the trigger function (``SECURITY DEFINER``) may run under its caller's search_path."""
        shifted = column_sql
        if time_ending:
            shifted = f"({column_sql} OPERATOR(pg_catalog.-) '1 microsecond'::pg_catalog.interval)"
        epoch = f"pg_catalog.date_part('epoch', pg_catalog.date_trunc('second', {shifted}))"
        return f"pg_catalog.floor({epoch} OPERATOR(pg_catalog./) 900)"


SQLITE = Dialect("sqlite")
POSTGRESQL = Dialect("postgresql")
MARIADB = Dialect("mariadb")  # MariaDB 10.6+ and MySQL 8: mariadb:// and mysql:// URLs


def dialect_of(url: str) -> Dialect:
    """Return the dialect for a database URL, or raise ConfigError naming the URL."""
    if url.startswith("sqlite:"):
        return SQLITE
    if url.startswith(("postgresql://", "postgres://")):
        return POSTGRESQL
    if mariadb_conn.is_url(url):
        return MARIADB
    raise ConfigError(
        f"database URL {mask_url(url)!r} is not supported; use sqlite:///path.db, "
        "postgresql://user@host/db or mariadb://user@host/db"
    )


def same_database(url: str, other: str) -> bool:
    """Whether two URLs name one database: for SQLite the same file however spelt (``/./``, a
    symlinked folder; a writer of both through two connections waits on its own lock), else
    the same URL."""
    if url.startswith("sqlite:") and other.startswith("sqlite:"):
        return sqlite_path(url).resolve() == sqlite_path(other).resolve()
    return url == other


def sqlite_path(url: str) -> Path:
    """Return the file path of a ``sqlite:///`` URL."""
    if not url.startswith("sqlite:///") and url.startswith("sqlite:"):
        # sqlite://nope.db opened /nope.db at the root of the file system; sqlite:nope.db, a file
        # in whatever folder the command ran from.
        raise ConfigError(
            f"database URL {url!r}: a SQLite URL has three slashes before its path; write"
            " sqlite:///file.db (relative to the project folder) or sqlite:////abs/path/file.db"
        )
    path = url[len("sqlite:///") :]
    if not path:
        raise ConfigError(f"database URL {url!r} has no file path; use sqlite:///path/to/file.db")
    if "?" in path:  # sqlite:////x.db?mode=ro made (and used) a new, empty file named "x.db?mode=ro"
        options = path[path.index("?") :]
        raise ConfigError(
            f"database URL {mask_url(url)!r}: sluicegate reads no options in a SQLite URL, and"
            f" {options!r} would be part of the file's name; remove it"
        )
    return Path(path)


def require_source_file(url: str) -> None:
    """Refuse a SQLite source whose file is missing: opened, a typo'd path would be a new,
    empty database, where every select fails (or exports nothing) and the ledger is made."""
    if dialect_of(url) is not SQLITE:
        return
    path = sqlite_path(url)
    if not path.exists():
        raise ConfigError(
            f"SQLite database {path} does not exist; check [source] url in sluicegate.toml"
            " (a relative path is read from the project folder)"
        )


# PostgreSQL sessions are named, so that the incremental tasks' late-commit cap
# (watermark_ends.commit_horizon) can leave out sluicegate's own readers and ledger, whose open
# transactions add no rows to the source, and must count its writers (ingest, table sinks,
# blocks loads), whose rows may commit behind a watermark like anyone's.
APPLICATION_NAME = "sluicegate"
WRITER_APPLICATION_NAME = "sluicegate writer"

# How long a SQLite statement waits for another process's write lock (busy_timeout) before it
# fails with "database is locked".
SQLITE_BUSY_SECONDS = 60.0


def connect(url: str, *, autocommit: bool = True, ledger: bool = False, writer: bool = False) -> Any:
    """Open a DB-API connection for ``url`` (sqlite3, psycopg or MariaDB's); errors as :func:`wrap_errors`.
    ``writer``: the session writes rows of the source's tables (see APPLICATION_NAME)."""
    dialect = dialect_of(url)
    if dialect is SQLITE:
        path = sqlite_path(url)
        if not path.parent.exists():
            raise ConfigError(f"folder {path.parent} for SQLite database {path.name} does not exist")
        with wrap_errors(url, ledger=ledger):
            conn = sqlite3.connect(
                path, isolation_level=None, timeout=SQLITE_BUSY_SECONDS, check_same_thread=False
            )
            _enable_wal(conn, SQLITE_BUSY_SECONDS)
            conn.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_SECONDS * 1000)}")
            conn.execute("PRAGMA synchronous=NORMAL")
        return conn
    if dialect is MARIADB:
        mariadb_conn.driver()  # ConfigError when the driver is not installed
        with wrap_errors(url, ledger=ledger):
            return mariadb_conn.connect(url, autocommit=autocommit, ledger=ledger)
    # psycopg is imported only here: a command on a SQLite project never pays for it.
    import psycopg

    with wrap_errors(url, ledger=ledger):
        name = WRITER_APPLICATION_NAME if writer else APPLICATION_NAME
        return psycopg.connect(url, autocommit=autocommit, application_name=name)


def _enable_wal(conn: sqlite3.Connection, seconds: float = 60.0) -> None:
    """Switch ``conn``'s database to WAL, waiting while another process switches it: SQLite
    answers "database is locked" at once, without its busy handler, when two processes open a new
    file together (two workers on a fresh ledger); the mode is stored in the file, so the loser waits."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


RECONNECT_SECONDS = 60.0  # how long a run tries to get a lost connection back before giving up
STOP_GRACE = 5.0  # ... and once told to stop (a restart's seconds; under Docker's 10 s stop timeout)
# when a reconnect first saw each run's stop: one grace per run, not one per ledger step after it
_STOP_SEEN: weakref.WeakKeyDictionary[threading.Event, float] = weakref.WeakKeyDictionary()


def reconnect(
    url: str,
    *,
    ledger: bool = False,
    seconds: float | None = None,
    stop: threading.Event | None = None,
    grace: float = STOP_GRACE,
) -> Any:
    """Connect to ``url``, retrying with backoff (0.25 s doubling to 5 s) for up to ``seconds``
    (:data:`RECONNECT_SECONDS`). A source's last error, when it gives up, is ``final``.

    Used after a connection was lost mid-run (a terminated backend, a restarting server): the
    run waits for the database instead of failing every partition in hand. Once ``stop`` (the
    run's SIGINT or SIGTERM) is set it tries for ``grace`` s more at most, from the run's first
    reconnect after the stop: a database back within them (a restart) takes the batch's commit,
    and a stop takes seconds; then the run's claims wait for their lease as after a crash."""
    seconds = RECONNECT_SECONDS if seconds is None else seconds
    deadline = time.monotonic() + seconds
    delay, stopped = 0.25, None
    while True:
        try:
            return connect(url, ledger=ledger)
        except (SourceUnavailable, LedgerError) as exc:
            if isinstance(exc, PermissionDenied):  # waiting does not grant a privilege
                raise
            now = time.monotonic()
            if stop is not None and stop.is_set() and stopped is None:
                stopped = _STOP_SEEN.setdefault(stop, now)
            if stopped is not None and now >= stopped + grace:
                raise source_outage.gave_up(exc, "gave up reconnecting: the run was told to stop") from exc
            if now + delay > deadline:
                raise source_outage.gave_up(exc, f"gave up reconnecting after {seconds:.0f} s") from exc
            log.warning("%s; reconnecting in %.2f s", exc, delay)
            if stopped is None:  # a stop ends the wait, and the grace starts
                (stop or threading.Event()).wait(delay)
            else:
                time.sleep(max(0.0, min(delay, stopped + grace - now)))
            delay = min(delay * 2, 5.0)


# SQLSTATE classes and codes worth retrying: connection exceptions, insufficient resources,
# operator intervention (shutdown, crash, cannot connect now, query cancelled), serialization
# failures, deadlocks, lock timeouts.
_ROLLED_BACK_SQLSTATES = ("40001", "40P01")  # serialization failure, deadlock: see rolled_back
_TRANSIENT_SQLSTATES = ("08", "53", "57P", "57014", *_ROLLED_BACK_SQLSTATES, "55P03")
# Program limits exceeded (an index entry too large for its page, a statement too complex): the
# same statement fails the same way again, though psycopg calls the class an OperationalError.
_LIMIT_SQLSTATES = ("54",)
_SQLSTATE = re.compile(r"SQLSTATE:? ?([0-9A-Z]{5})")


def _psycopg() -> Any:
    """The psycopg module if something imported it, else None: an exception can only be a psycopg
    error once it is (the error helpers never import it: ~0.1 s of every command's start-up)."""
    return sys.modules.get("psycopg")


def _sqlstate(exc: BaseException) -> str | None:
    code = getattr(exc, "sqlstate", None)
    if isinstance(code, str) and code:
        return code
    match = _SQLSTATE.search(str(exc))
    return match.group(1) if match else None


def denied(exc: BaseException) -> bool:
    """Whether a driver error says the role lacks a privilege (SQLSTATE 42501, or MariaDB's numbers).

    A refused connection (no CONNECT on the database) carries no SQLSTATE in psycopg: its
    server message stands in for the code, in any language (:mod:`sluicegate.pg_text`). MariaDB
    reports most missing privileges as SQLSTATE 42000, shared with syntax errors: its error
    numbers tell them apart.
    """
    if mariadb_conn.denied(exc):
        return True
    code = _sqlstate(exc)
    if code:
        return code == "42501"
    return pg_text.says(str(exc), "denied")


def rolled_back(exc: BaseException) -> bool:
    """Whether the server rolled a transaction back to end a deadlock or a serialization
    conflict (MariaDB 1213; SQLSTATE 40P01, 40001): none of it stayed, and it may simply be run again.

    ``exc`` is a driver error, or a sluicegate error raised from one.
    """
    cause = exc.__cause__ if isinstance(exc, SluicegateError) and exc.__cause__ is not None else exc
    if mariadb_conn.deadlocked(cause):
        return True
    code = _sqlstate(cause)
    if code:
        return code in _ROLLED_BACK_SQLSTATES
    return pg_text.says(str(cause), "rolled_back")


def timed_out(exc: BaseException) -> bool:
    """Whether a driver error is the server cancelling a query for its time limit: MariaDB's by
    number; PostgreSQL's by SQLSTATE 57014, in any language of its words (``lc_messages``). That
    is any cancel, an operator's ``pg_cancel_backend`` too (read alone and retried: no harm), but
    never sluicegate's own: psycopg swallows the QueryCanceled of the cancel it sends (a second
    SIGTERM, a COPY left early), and ADBC's cursor adds 57014 only without one (sources.adbc)."""
    return mariadb_conn.timed_out(exc) or _sqlstate(exc) == "57014"


def classify(exc: BaseException) -> Literal["transient", "terminal"] | None:
    """Whether a driver error is worth retrying; None when ``exc`` is not a database error.

    A missing privilege (:func:`denied`) is terminal, even when the connection was refused.

    Knows psycopg, sqlite3 and ADBC (whose result streams raise plain ``OSError`` with a
    ``[libpq]`` message and no SQLSTATE: an ``ERROR`` is the query's fault, unless its words are
    a transient error's, anything else the connection's, told in any language by
    :mod:`sluicegate.pg_text`), and MariaDB Connector/Python (by error number,
    :func:`sluicegate.mariadb_conn.classify`).
    """
    maria = mariadb_conn.classify(exc)
    if maria is not None:
        return maria
    psycopg = _psycopg()
    if psycopg is not None and isinstance(exc, psycopg.Error):
        code = _sqlstate(exc)
        if denied(exc) or (code and code.startswith(_LIMIT_SQLSTATES)):
            return "terminal"
        if isinstance(exc, psycopg.OperationalError):
            return "transient"
        return "transient" if code and code.startswith(_TRANSIENT_SQLSTATES) else "terminal"
    if isinstance(exc, sqlite3.Error):
        # Busy: another process's write lock; full: the disk (or the temp space of a sort), which
        # an operator frees, as a full export folder (DestinationUnavailable) is retried too.
        waits = isinstance(exc, sqlite3.OperationalError) and any(w in str(exc) for w in _SQLITE_WAITS)
        return "transient" if waits else "terminal"
    adbc = type(exc).__module__.startswith("adbc_driver")
    if adbc or (isinstance(exc, OSError) and "[libpq]" in str(exc)):
        code = _sqlstate(exc)
        if code:
            return "transient" if code.startswith(_TRANSIENT_SQLSTATES) else "terminal"
        text = str(exc)
        severity = pg_text.severity(text)  # FATAL, PANIC: the session ended; None: libpq's own error
        if type(exc).__name__ == "OperationalError" or severity in ("FATAL", "PANIC"):
            return "transient"
        if severity is None and not adbc:
            return "transient"
        return "transient" if pg_text.says(text, "transient") else "terminal"
    return None


def translate(exc: BaseException, url: str, *, ledger: bool = False) -> SluicegateError | None:
    """The sluicegate error for a driver error about ``url`` (password masked), or None."""
    kind = classify(exc)
    if kind is None:
        return None
    role = "ledger database" if ledger else "database"
    detail = scrub(_first_line(exc), url)
    where = f"{role} {mask_url(url)}"
    if isinstance(exc, sqlite3.OperationalError):
        detail = _sqlite_detail(detail, kind, url)
    if kind == "terminal" and denied(exc):
        error = LedgerPermissionDenied if ledger else PermissionDenied
        fix = (
            "grant it as an administrator"
            if mariadb_conn.denied(exc)  # `sluicegate grants` prints PostgreSQL's GRANTs only
            else "run `sluicegate grants` and apply its GRANTs as the owner"
        )
        return error(f"{where}: {detail}; the role lacks a privilege it needs: {fix}")
    if ledger:
        hint = "; will retry" if kind == "transient" else ""
        return LedgerError(f"{where}: {detail}{hint}")
    psycopg = _psycopg()
    if kind == "transient":
        if source_outage.connection_lost(exc):
            return SourceLost(f"{where} is unavailable: {detail}; will retry")
        lost = (psycopg is not None and isinstance(exc, psycopg.OperationalError)) or isinstance(
            exc, sqlite3.OperationalError
        )
        if timed_out(exc):  # the query's time limit: the database is there
            return StatementTimedOut.said(where, detail)
        if lost or "[libpq]" in str(exc) or getattr(exc, "errno", 0) in mariadb_conn.LOST_ERRNOS:
            return SourceUnavailable(f"{where} is unavailable: {detail}; will retry")
        return SourceUnavailable(f"{where}: {detail}; will retry")
    if psycopg is not None and isinstance(exc, psycopg.DataError):
        from .sources.times import unwrap

        own = unwrap(detail)  # a value sluicegate's batch query refused itself
        return DataError(own if own is not None else f"{where} rejected a value: {detail}")
    if isinstance(exc, sqlite3.OperationalError) and (bad := _UNDECODABLE.search(str(exc))):
        column = bad["column"]  # TEXT that is no UTF-8: read it as bytes, or repair it
        return DataError(
            f"{where}: {detail}; read the column as bytes in select.sql (CAST({column} AS BLOB) AS"
            f" {column}) or repair its text in the source"
        )
    return DataError(f"{where}: {detail}")


def _sqlite_detail(detail: str, kind: str, url: str) -> str:
    """``detail`` of a SQLite error, with what to do when the cause is outside sluicegate."""
    if kind == "transient" and _SQLITE_FULL in detail:
        where = sqlite_path(url).parent if url.startswith("sqlite:///") else "its file system"
        return f"{detail}; free space on the file system of {where} (and of its temp folder)"
    if kind == "transient":
        # An open write transaction elsewhere (a sqlite3 shell left in BEGIN, another program):
        # nothing here ends it, so say who holds what and what to do.
        return (
            f"{detail}: another process held its write lock for {SQLITE_BUSY_SECONDS:g} s;"
            " end that process's open transaction (a sqlite3 shell, another writer) and run again"
        )
    if url.startswith("sqlite:///") and any(text in detail for text in _SQLITE_UNWRITABLE):
        # A read-only file, folder or mount: WAL mode writes <file>-wal and <file>-shm beside it,
        # even for a command that only reads.
        path = sqlite_path(url)
        return (
            f"{detail}; make {path} and its folder {path.parent} writable by this user (SQLite"
            f" creates {path.name}-wal and {path.name}-shm beside it, even to read)"
        )
    return detail


_SQLITE_FULL = "disk is full"  # SQLITE_FULL: "database or disk is full"
_SQLITE_WAITS = ("locked", "busy", _SQLITE_FULL)
_SQLITE_UNWRITABLE = ("unable to open database file", "readonly database")
_UNDECODABLE = re.compile(r"Could not decode to UTF-8 column '(?P<column>[^']+)'")


@contextlib.contextmanager
def wrap_errors(url: str, *, ledger: bool = False) -> Iterator[None]:
    """Translate driver errors into sluicegate errors (:func:`translate`), masking the URL's
    secrets: a source's are transient or :class:`DataError`, a ledger's :class:`LedgerError`."""
    try:
        yield
    except SluicegateError:
        raise
    except Exception as exc:
        error = translate(exc, url, ledger=ledger)
        if error is None:
            raise
        raise error from exc


def _first_line(exc: BaseException) -> str:
    text = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not text:
        return type(exc).__name__
    first = text[0].removeprefix("[libpq] Execution error [PGRES_FATAL_ERROR]: ").strip()
    return pg_text.without_severity(first) or type(exc).__name__


@contextlib.contextmanager
def transaction(conn: Any, dialect: Dialect, *, immediate: bool = False) -> Iterator[Any]:
    """Run a block in one transaction on an autocommit connection; yield a cursor. On SQLite
    ``immediate=True`` takes the write lock up front (how claims stay exclusive without SKIP LOCKED)."""
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
    if dialect is MARIADB:
        cur = conn.cursor()
        cur.execute("START TRANSACTION")
        try:
            yield cur
        except BaseException:
            with contextlib.suppress(Exception):  # the connection may be gone
                cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
        return
    with conn.transaction(), conn.cursor() as cur:
        yield cur
