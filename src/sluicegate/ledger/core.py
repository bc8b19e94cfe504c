"""The ledger's core: one connection to the ledger database, its dialect, and named statements.

Every store (``ledger/<store>.py``) runs its statements, from ``sql/<dialect>/<store>.sql``,
through a :class:`LedgerCore`. The core owns what they share: connecting and reconnecting
after a lost connection (with backoff), transactions, translating driver errors into
:class:`~sluicegate.exceptions.LedgerError`, and how values are stored (SQLite keeps
timestamps as Unix seconds and UUIDs as text).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import itertools
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, TypeVar

from .. import db, mariadb_conn
from ..exceptions import ConfigError, LedgerError, PermissionDenied, SluicegateError
from ..masking import mask_url
from ..sql import queries

log = logging.getLogger("sluicegate.ledger")
T = TypeVar("T")
DEADLOCK_TRIES = 8  # runs of a ledger transaction the server keeps choosing as a deadlock's victim
UTC = dt.UTC
SCHEMA_VERSION = "12"
MARIADB_INBOX_VERSION = "mariadb-inbox-1"  # 97d6833: the trigger inbox only, in the default collation
MARIADB_SCHEMA_VERSION = "mariadb-4"  # MariaDB's tables are versioned on their own (sql/mariadb/schema.sql)
# Columns added since version 4 on SQLite: (table, column, the method adding it);
# PostgreSQL adds them with ADD COLUMN IF NOT EXISTS in ensure_schema.
SQLITE_ADDED_COLUMNS = (
    ("watermarks", "failed_destination", "add_failed_destination"),
    ("runs", "heartbeat_at", "add_run_heartbeat"),
    ("partitions", "etag", "add_partition_etag"),
)


class LedgerCore:
    """A connection to a database holding ledger tables (the ledger, or the source's inbox)."""

    def __init__(self, url: str, *, schema: str = "sluicegate", stop: threading.Event | None = None) -> None:
        self.url = url
        self.schema = schema
        self.stop = stop  # the run's SIGINT or SIGTERM: a reconnect gives up once it is set
        self.dialect = db.dialect_of(url)
        self.conn = db.connect(url, ledger=True)
        if self.dialect is db.POSTGRESQL:
            from psycopg import sql

            quoted = sql.Identifier(schema).as_string()
            self.prefix, self._schema_sql = quoted + ".", quoted
        else:
            self.prefix, self._schema_sql = "sluicegate_", ""
        self._exact = mariadb_conn.exact_collation(self.conn) if self.dialect is db.MARIADB else ""

    def queries(self, store: str) -> dict[str, str]:
        """The named statements of ``store`` for this database."""
        if self.dialect is db.MARIADB:
            return queries(self.dialect.name, store, self.prefix, self._schema_sql, self._exact)
        return queries(self.dialect.name, store, self.prefix, self._schema_sql)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    # ------------------------------------------------------------------ values

    def ts(self, value: dt.datetime | None) -> Any:
        """A timestamp as this database stores it (Unix seconds on SQLite)."""
        if value is None or self.dialect is db.POSTGRESQL:
            return value
        return value.timestamp()

    def from_ts(self, value: Any) -> dt.datetime | None:
        """A stored timestamp as an aware datetime."""
        if value is None or isinstance(value, dt.datetime):
            return value
        return dt.datetime.fromtimestamp(float(value), UTC)

    def params(self, **params: Any) -> dict[str, Any]:
        """Bind parameters for this database: SQLite gets ``now`` and UUIDs as text."""
        if self.dialect is db.SQLITE:
            params.setdefault("now", time.time())
            return {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in params.items()}
        if self.dialect is db.MARIADB:  # the driver takes neither UUIDs nor aware datetimes
            return {k: (str(v) if isinstance(v, uuid.UUID) else _naive_utc(v)) for k, v in params.items()}
        return params

    # ------------------------------------------------------------------ running statements

    def execute(self, statement: str, params: dict[str, Any], cur: Any | None = None) -> Any:
        """Run one statement; in the caller's transaction with ``cur``, else on its own (retried)."""
        if cur is not None:  # inside the caller's transaction, which retries as a whole
            with db.wrap_errors(self.url, ledger=True):
                cur.execute(statement, params)
                return cur
        return self.retrying(lambda: self.conn.execute(statement, params))

    def retrying(self, step: Callable[[], T]) -> T:
        """Run ``step``; if the connection was lost, reconnect (with backoff) and run it once more;
        if the server rolled it back to end a deadlock, run it again (up to DEADLOCK_TRIES times).

        Every ledger statement may run twice: marks only bump a version, and claims of
        this run's token, commits, failures, renewals and releases are fenced by the token.
        (On MariaDB a claim's ``SKIP LOCKED`` scan can still wait for a row a mark is
        changing, and InnoDB then picks one of the two as a deadlock's victim.)
        """
        reconnected = False
        for attempt in itertools.count(1):
            self._reconnect_if_lost()
            try:
                with db.wrap_errors(self.url, ledger=True):
                    return step()
            except LedgerError as exc:
                if db.rolled_back(exc) and attempt < DEADLOCK_TRIES:
                    log.info("ledger transaction rolled back by the server (%s); running it again", exc)
                    time.sleep(random.uniform(0, 0.01 * attempt))  # let the other one finish
                    continue
                if reconnected or not self._lost():
                    raise
                reconnected = True
                log.warning("ledger connection to %s lost; reconnecting", mask_url(self.url))
        raise AssertionError("unreachable")

    def in_transaction(self, body: Callable[[Any], T], *, pipelined: bool = False) -> T:
        """Run ``body(cursor)`` in one transaction (write-locked on SQLite), again on a lost connection.

        ``pipelined`` (PostgreSQL): send the statements in pipeline mode, so those before a fetch
        travel together (see :func:`_pipelined_transaction`); only for a body that reads every result it needs
        with a fetch (``rowcount`` is not known until then)."""

        def step() -> T:
            if pipelined and self.dialect is db.POSTGRESQL:
                with _pipelined_transaction(self.conn) as cur:
                    return body(cur)
            with db.transaction(self.conn, self.dialect, immediate=True) as cur:
                return body(cur)

        return self.retrying(step)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """One transaction for a block of statements (not retried: the block may have effects)."""
        self._reconnect_if_lost()
        guard = db.wrap_errors(self.url, ledger=True)
        with guard, db.transaction(self.conn, self.dialect, immediate=True) as cur:
            yield cur

    def _lost(self) -> bool:
        if self.dialect is db.MARIADB:
            return bool(self.conn.closed)  # a ping: the driver keeps no broken flag
        return self.dialect is db.POSTGRESQL and bool(self.conn.closed or self.conn.broken)

    def _reconnect_if_lost(self) -> None:
        """Reconnect a lost PostgreSQL or MariaDB connection, with backoff, until ``stop`` (see
        :func:`db.reconnect`)."""
        if self._lost():
            try:
                self.conn = db.reconnect(self.url, ledger=True, stop=self.stop)
            except LedgerError as exc:
                raise LedgerError(
                    f"{exc}. Partitions this run had claimed stay claimed until their lease ends, "
                    "then any run takes them"
                ) from exc


@contextlib.contextmanager
def _pipelined_transaction(conn: Any) -> Iterator[Any]:
    """A PostgreSQL transaction in pipeline mode on an autocommit connection; yield a cursor.

    Statements are sent as they are executed and the client waits only when a result is
    fetched, so ``BEGIN`` and the statements up to the first fetch cost one round trip, and
    the last statements with ``COMMIT`` another (a ledger 30 ms away: a commit of a group of
    files is 4 round trips instead of 7). psycopg's ``conn.transaction()`` would wait for its
    ``BEGIN``, hence the explicit one. After an error the server skips what was sent up to the
    pipeline's end, a ``ROLLBACK`` among it, so the rollback is sent once the pipeline is over.
    A pipeline psycopg cannot end after the body's error (the connection lost) is not logged: the
    body's error says it, and the retry logs 'ledger connection ... lost; reconnecting'.
    """
    cur = conn.cursor()
    _PIPELINE.on = True
    try:
        with conn.pipeline():
            cur.execute("BEGIN")
            yield cur
            cur.execute("COMMIT")
    except BaseException:
        if not conn.closed and conn.info.transaction_status != _IDLE:
            with contextlib.suppress(Exception):  # the connection may be gone
                conn.rollback()
        raise
    finally:
        _PIPELINE.on = False
        cur.close()


def _quiet_pipeline_end(record: logging.LogRecord) -> bool:
    """Drop psycopg's 'error ignored terminating <psycopg.Pipeline [BAD] at 0x...>: ...' (and
    'exiting'), logged when a pipeline of ours ends on an error: the error itself propagates.
    Installed once and keyed on the thread (``serve`` runs tasks on threads), so one thread's
    pipeline ending cannot let another's lines through, and other code's pipelines keep theirs."""
    ours = getattr(_PIPELINE, "on", False)
    return not (ours and str(record.msg).startswith(("error ignored terminating", "error ignored exiting")))


_PIPELINE = threading.local()  # .on: this thread is in a _pipelined_transaction
logging.getLogger("psycopg").addFilter(_quiet_pipeline_end)


_IDLE = 0  # psycopg.pq.TransactionStatus.IDLE, without importing psycopg for SQLite projects


class Store:
    """A group of ledger statements over a core; ``SQL`` names its file in ``sql/<dialect>/``.

    A method runs the block of its own name: ``self._run("claim", ...)`` inside ``claim``.
    """

    SQL: ClassVar[str] = ""

    def __init__(self, core: LedgerCore) -> None:
        self.core = core

    @functools.cached_property
    def q(self) -> dict[str, str]:
        """The store's named statements, read on first use (a command uses few of the stores)."""
        return self.core.queries(self.SQL)

    def _run(self, name: str, cur: Any | None = None, **params: Any) -> Any:
        return self.core.execute(self.q[name], self.core.params(**params), cur)

    def _script(self, name: str, cur: Any) -> None:
        """Run a block of several statements (DDL, no parameters), one at a time on ``cur``."""
        for statement in self.q[name].split(";\n"):
            if statement.strip():
                cur.execute(statement)


class SchemaStore(Store):
    """Creating and upgrading the ledger tables."""

    SQL = "schema"

    def ensure_schema(self) -> None:
        """Create the ledger tables if they do not exist, or upgrade them (idempotent, safe to race)."""
        version = self.schema_version()
        ours = MARIADB_SCHEMA_VERSION if self.core.dialect is db.MARIADB else SCHEMA_VERSION
        if version == ours:
            return
        if version is not None and _version_number(version) > _version_number(ours):
            # An older release would have written its own version over it (and run on tables
            # it does not know); the version row is also only ever raised (schema.sql).
            raise ConfigError(
                f"the ledger at {mask_url(self.core.url)} has schema version {version}, newer than this"
                f" sluicegate's {ours}: run the release that upgraded it (or a newer one) on every worker"
            )

        def create(cur: Any) -> None:
            if self.core.dialect is db.POSTGRESQL:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext('sluicegate ledger schema'))")
            if self.core.dialect is db.MARIADB and version == "mariadb-1":
                self.upgrade_collation(cur)  # first: ensure_schema then records the new version
            if self.core.dialect is db.MARIADB and version == MARIADB_INBOX_VERSION:
                self.upgrade_inbox(cur)  # its two tables; ensure_schema creates the rest
            if self.core.dialect is db.MARIADB and version == "mariadb-2":
                self.upgrade_padding(cur)  # before ensure_schema records mariadb-3
            old_table = self.core.dialect is db.MARIADB and version not in (None, MARIADB_INBOX_VERSION)
            if old_table and self.path_index_missing(cur):  # mariadb-1 to -3: the table, not the index
                self.upgrade_path_index(cur)  # before ensure_schema records mariadb-4
            self._script("ensure_schema", cur)
            if self.core.dialect is db.SQLITE:
                for table, column, method in SQLITE_ADDED_COLUMNS:
                    columns = {row[1] for row in cur.execute(f"PRAGMA table_info({self.core.prefix}{table})")}
                    if column not in columns:
                        getattr(self, method)(cur)

        self.core.in_transaction(create)

    def schema_version(self) -> str | None:
        """The ledger schema version, or None when the tables do not exist yet."""
        try:
            with db.wrap_errors(self.core.url, ledger=True):
                row = self.core.conn.execute(self.q["schema_version"], self.core.params()).fetchone()
        except SluicegateError as exc:
            if self.core.dialect is db.POSTGRESQL and not self.core.conn.closed:
                self.core.conn.rollback()
            if isinstance(exc, PermissionDenied):  # the tables exist; this role may not read them
                raise
            return None
        return None if row is None else str(row[0])

    def add_failed_destination(self, cur: Any) -> None:
        """SQLite, version 5: a failed re-export remembers its override destination."""
        self._run("add_failed_destination", cur)

    def add_run_heartbeat(self, cur: Any) -> None:
        """SQLite, version 5: a run in progress beats."""
        self._run("add_run_heartbeat", cur)

    def upgrade_collation(self, cur: Any) -> None:
        """MariaDB, mariadb-1 to mariadb-2: compare the ledger's text as bytes (case matters)."""
        self._script("upgrade_collation", cur)

    def upgrade_inbox(self, cur: Any) -> None:
        """MariaDB, mariadb-inbox-1 to mariadb-2: the inbox tables of the release before the
        MariaDB ledger compare text as bytes, as the tables created with them do."""
        self._script("upgrade_inbox", cur)

    def upgrade_padding(self, cur: Any) -> None:
        """MariaDB, mariadb-2 to mariadb-3: entities and blocks' key values compare with trailing
        spaces (NO PAD), as PostgreSQL's text does."""
        self._script("upgrade_padding", cur)

    def path_index_missing(self, cur: Any) -> bool:
        """MariaDB, before mariadb-4: whether the partitions table lacks its path index."""
        return bool(self._run("path_index_missing", cur).fetchone()[0])

    def upgrade_path_index(self, cur: Any) -> None:
        """MariaDB, mariadb-3 to mariadb-4: index the partitions' paths (PartitionStore.paths_taken).
        Two workers upgrading at once both find it missing: the second's ADD KEY finds it made."""
        try:
            self._script("upgrade_path_index", cur)
        except Exception as exc:
            if not mariadb_conn.duplicate_key_name(exc):
                raise

    def add_partition_etag(self, cur: Any) -> None:
        """SQLite, version 8: each partition's object ETag, for conditional writes."""
        self._run("add_partition_etag", cur)


def _version_number(version: str) -> int:
    """``11`` or ``mariadb-2`` as a number; a version this release cannot read counts as newer
    (``mariadb-inbox-1``, the inbox alone of the release before the MariaDB ledger, is older)."""
    if version == MARIADB_INBOX_VERSION:
        return 0
    number = version.removeprefix("mariadb-")
    return int(number) if number.isdigit() else 2**31


def _naive_utc(value: Any) -> Any:
    """An aware datetime as naive UTC (MariaDB's driver would drop the zone, not convert)."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def pg_array(values: Iterable[int | str | None]) -> str:
    """A PostgreSQL array literal (``{1,"a",NULL}``) of ``values``, for a ``%s::type[]`` parameter.

    psycopg adapts a list element by element in Python; a batch's commit passes seven lists of
    ~500 (5% of a run's CPU). The literal is one string, parsed by the server's array input.
    """
    items = []
    for value in values:
        if value is None:
            items.append("NULL")
        elif type(value) is int:
            items.append(str(value))
        else:
            items.append('"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(items) + "}"
