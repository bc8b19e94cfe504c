"""MariaDB / MySQL connections (``mariadb://`` and ``mysql://`` URLs) through MariaDB Connector/Python.

The driver was chosen by measurement (``bench/README.md``, "MySQL / MariaDB drivers"): it reads
rows 4x faster than mysqlclient and 10x faster than PyMySQL, streaming with
``cursor(buffered=False)``. It is an optional dependency (the ``mariadb`` extra), imported here
only.

Every session is pinned, whatever the server's or the account's defaults:

- ``time_zone = '+00:00'``: ``TIMESTAMP`` values are stored as instants and shown in the session
  zone, so they read and compare in UTC; ``DATETIME`` values are wall-clock times with no zone,
  which sluicegate takes as UTC (see docs/concepts.md, "MariaDB and MySQL").
- ``REPEATABLE READ``, InnoDB's default, for the snapshots a batch read or an archive run opens.
- a lock wait bounded at :data:`LOCK_WAIT` seconds.
- ``STRICT_ALL_TABLES`` added to the server's ``sql_mode``: without a strict mode (``sql_mode =
  ''``) MariaDB cuts a too-long text and clamps a number out of range with only a warning, so an
  ingested message id lost its end (and two ids became one) and a value came out wrong.

:class:`MariaDbConnection` gives the connection the small surface the rest of the code uses on
psycopg and sqlite3 connections: ``execute`` returning a cursor, ``cursor``, ``closed``.
"""

from __future__ import annotations

import sys
import urllib.parse
from typing import Any, Literal

from .exceptions import ConfigError
from .masking import mask_url

LOCK_WAIT = 60  # seconds a statement waits for a row or metadata lock
SESSION = (
    "SET time_zone = '+00:00'",
    "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    f"SET SESSION lock_wait_timeout = {LOCK_WAIT}",
    f"SET SESSION innodb_lock_wait_timeout = {LOCK_WAIT}",
    # Strict: without it MariaDB cut a too-long value with only a warning: an ingested message id
    # (two ids became one), or an archive file name, so the ledger held another name than the
    # file's and a later run took that name again, over a file whose rows were deleted.
    "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES')",
)
# Server and client error numbers worth retrying: too many connections, server shutdown,
# connection killed, lock wait timeout, deadlock, read-only (a failover), network errors,
# server gone or lost, and the client's "not connected" / "server disconnected".
TRANSIENT_ERRNOS = frozenset(
    {1040, 1053, 1158, 1159, 1160, 1161, 1205, 1213, 1290, 1836, 1927, 2002, 2003, 2006, 2013, 2055, 4031}
)
# The query, not the connection, was stopped, and may be run again: KILL QUERY (1317), a Galera
# node not yet ready to serve (1047), the statement's time limit (TIMEOUT_ERRNOS). Not "lost".
TIMEOUT_ERRNOS = frozenset({1969, 3024})  # MariaDB's max_statement_time, MySQL's max_execution_time
INTERRUPTED_ERRNOS = frozenset({1047, 1317}) | TIMEOUT_ERRNOS
LOCK_WAIT_TIMEOUT_ERRNO = 1205  # a row or table lock wait ran out (innodb_ or lock_wait_timeout)
DEADLOCK_ERRNO = 1213  # the whole transaction was rolled back
DUPLICATE_KEY_NAME_ERRNO = 1061  # ER_DUP_KEYNAME: ALTER TABLE ... ADD KEY of a key that exists
# the transient errors that are not lock waits or deadlocks: the server is away
LOST_ERRNOS = TRANSIENT_ERRNOS - {LOCK_WAIT_TIMEOUT_ERRNO, DEADLOCK_ERRNO}
# A missing privilege: on a database, a table, a column, or a global one (SUPER, PROCESS, ...).
DENIED_ERRNOS = frozenset({1044, 1142, 1143, 1227})
SCHEMES = ("mariadb://", "mysql://")


def is_url(url: str) -> bool:
    """Whether ``url`` names a MariaDB or MySQL database."""
    return url.startswith(SCHEMES)


def driver() -> Any:
    """The ``mariadb`` module, or ConfigError saying how to install it."""
    try:
        import mariadb
    except ImportError:
        raise ConfigError(
            "MariaDB/MySQL databases need MariaDB Connector/Python: pip install 'sluicegate[mariadb]' "
            "(it builds against libmariadb-dev; see scripts/install-system-deps.sh)"
        ) from None
    return mariadb


def connect_args(url: str) -> dict[str, Any]:
    """The driver's connect arguments for ``url`` (``mariadb://user:password@host:port/database``)."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or 3306
    except ValueError:  # u:pa/ss@h: what follows the first ':' is read as the port
        raise ConfigError(
            f"database URL {mask_url(url)!r}: its port is not a number up to 65535; "
            "percent-encode a / ? # or @ in the user name or password (%2F %3F %23 %40)"
        ) from None
    database = urllib.parse.unquote(parts.path.lstrip("/"))
    if not database or parts.query:
        raise ConfigError(
            f"database URL {mask_url(url)!r}: give a database and no query parameters "
            "(mariadb://user:password@host:3306/database)"
        )
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": port,
        "user": urllib.parse.unquote(parts.username or ""),
        "password": urllib.parse.unquote(parts.password or ""),
        "database": database,
        "connect_timeout": 10,
    }


# Every driver connection this process opened, kept (closed) until it exits: about 0.7 KB each.
# With the driver (1.1.14) a connection freed while the garbage collector still holds one of its
# cursors (a cursor in an exception's traceback, say) crashes the process at a later collection;
# a connection that is never freed cannot. Measured: the archive suite's MariaDB tests crashed
# 4 times in 4 without this, 0 in 3 with it; letting go of connections nothing seemed to refer
# to (by reference count) still crashed.
_OPENED: list[Any] = []


def connect(url: str, *, autocommit: bool = True, ledger: bool = False) -> MariaDbConnection:
    """Open a session on ``url``, pinned as the module docstring says; driver errors are raised.

    ``ledger``: the session runs ledger statements, at ``READ COMMITTED`` (PostgreSQL's level,
    which the ledger's statements were written for): a claim's ``FOR UPDATE SKIP LOCKED`` then
    locks only the rows it takes, not every row and gap its scan passed.
    """
    mariadb = driver()
    conn = mariadb.connect(**connect_args(url), autocommit=autocommit)
    _OPENED.append(conn)
    try:
        cur = conn.cursor()
        for setting in SESSION:
            cur.execute(setting)
        if ledger:
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        cur.close()
    except BaseException:
        conn.close()
        raise
    return MariaDbConnection(conn)


def classify(exc: BaseException) -> Literal["transient", "terminal"] | None:
    """Whether a MariaDB driver error is worth retrying; None when it is not one.

    By error number: the driver raises OperationalError for data errors too (an out-of-range
    TIMESTAMP), so the class says little.
    """
    mariadb = sys.modules.get("mariadb")  # an error can only be the driver's once it is imported
    if mariadb is None or not isinstance(exc, mariadb.Error):
        return None
    errno = getattr(exc, "errno", None)
    if transient_errno(errno) or (isinstance(exc, mariadb.InterfaceError) and not errno):
        return "transient"
    return "terminal"


def transient_errno(errno: object) -> bool:
    """Whether a MariaDB error number is worth retrying (the server away, a lock wait, a deadlock,
    an interrupted query)."""
    return errno in TRANSIENT_ERRNOS or errno in INTERRUPTED_ERRNOS


def timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` is a MariaDB driver error saying the query ran out of its time limit."""
    return classify(exc) is not None and getattr(exc, "errno", None) in TIMEOUT_ERRNOS


def denied(exc: BaseException) -> bool:
    """Whether ``exc`` is a MariaDB driver error saying the user lacks a privilege."""
    return classify(exc) is not None and getattr(exc, "errno", None) in DENIED_ERRNOS


def deadlocked(exc: BaseException) -> bool:
    """Whether ``exc`` is a MariaDB driver error saying InnoDB rolled back the transaction (a deadlock)."""
    return classify(exc) is not None and getattr(exc, "errno", None) == DEADLOCK_ERRNO


def duplicate_key_name(exc: BaseException) -> bool:
    """Whether ``exc`` is a MariaDB driver error saying an index of that name exists already."""
    return classify(exc) is not None and getattr(exc, "errno", None) == DUPLICATE_KEY_NAME_ERRNO


def exact_collation(conn: MariaDbConnection) -> str:
    """The server's binary NO PAD collation of utf8mb4, which compares text as PostgreSQL does,
    trailing spaces and all: MariaDB's ``utf8mb4_nopad_bin``, MySQL 8's ``utf8mb4_0900_bin``."""
    return "utf8mb4_nopad_bin" if "mariadb" in str(conn.raw.server_info).lower() else "utf8mb4_0900_bin"


class MariaDbConnection:
    """A driver connection with the ``execute`` / ``closed`` surface of psycopg and sqlite3."""

    def __init__(self, conn: Any) -> None:
        self.raw = conn
        self._closed = False

    def cursor(self, **kwargs: Any) -> Any:
        """A driver cursor (buffered unless ``buffered=False``)."""
        return self.raw.cursor(**kwargs)

    def execute(self, statement: str, params: Any = ()) -> Any:
        """Run ``statement`` on a new buffered cursor and return it (rows ready to fetch)."""
        cur = self.raw.cursor()
        cur.execute(statement, params if params else ())
        return cur

    def commit(self) -> None:
        """Commit the open transaction."""
        self.raw.commit()

    def rollback(self) -> None:
        """Roll the open transaction back."""
        self.raw.rollback()

    @property
    def closed(self) -> bool:
        """Whether the connection was closed or is lost (the server does not answer a ping)."""
        if self._closed:
            return True
        try:
            self.raw.ping()
        except Exception:
            return True
        return False

    def close(self) -> None:
        """Close the connection (a lost one too)."""
        self._closed = True
        try:
            self.raw.close()
        except Exception:  # already gone
            return
