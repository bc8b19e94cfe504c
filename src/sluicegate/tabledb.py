"""Connections to databases with tables to write: PostgreSQL, SQLite, MariaDB/MySQL.

The table sinks (:mod:`sluicegate.tables`), ingest and the airmax generator reach a database
through :class:`TableDb`: one autocommit connection, its flavour, its placeholder and quoting,
transactions, and driver errors translated once (transient ones to DestinationUnavailable,
the rest to DataError). Times are compared and written in UTC. PostgreSQL and SQLite
connect through :func:`sluicegate.db.connect`; MariaDB/MySQL URLs (``mariadb://``,
``mysql://``) through :mod:`sluicegate.mariadb_conn`, with this module's own error translation
(a table sink's lost connection is a destination problem, not a source one).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from . import db, mariadb_conn
from .exceptions import ConfigError, DataError, DestinationUnavailable, SluicegateError
from .masking import mask_url, scrub

Flavor = Literal["postgresql", "sqlite", "mariadb"]
LOCK_WAIT = mariadb_conn.LOCK_WAIT  # seconds a writer waits for a lock (another writer of the same table)


def lock_timed_out(cause: BaseException | None) -> bool:
    """Whether a driver error is a lock wait that ran out: PostgreSQL's lock_timeout (55P03),
    SQLite's busy timeout ("database is locked"), MariaDB's lock wait timeout (1205)."""
    if isinstance(cause, sqlite3.OperationalError):
        return "locked" in str(cause) or "busy" in str(cause)
    if cause is None:
        return False
    if mariadb_conn.classify(cause) is not None:
        return getattr(cause, "errno", None) == mariadb_conn.LOCK_WAIT_TIMEOUT_ERRNO
    return getattr(cause, "sqlstate", None) == "55P03"


def flavor_of(url: str, where: str = "table url") -> Flavor:
    """The database flavour of a URL: ``postgresql``, ``sqlite`` or ``mariadb`` (also ``mysql://``)."""
    if url.startswith(("mariadb://", "mysql://")):
        return "mariadb"
    try:
        return db.dialect_of(url).name
    except ConfigError:
        raise ConfigError(
            f"{where}: {mask_url(url)!r} is not a database URL; use sqlite:///file.db, "
            "postgresql://user@host/db or mariadb://user@host/db"
        ) from None


def time_value(flavor: Flavor, value: dt.datetime, *, whole_seconds: bool = False) -> Any:
    """A UTC time as a table of ``flavor`` stores it: aware on PostgreSQL, naive UTC on
    MariaDB (``DATETIME``; a ``DATETIME`` without a fraction keeps whole seconds), ISO 8601
    text with ``Z`` on SQLite (a fraction only when there is one). ``whole_seconds`` drops the
    fraction (the aggregate's evaluation times, which are whole seconds by design)."""
    utc = value.astimezone(dt.UTC)
    if whole_seconds:
        utc = utc.replace(microsecond=0)
    if flavor == "postgresql":
        return utc
    if flavor == "mariadb":
        return utc.replace(tzinfo=None)
    # isoformat, not strftime: glibc's %Y writes year 999 as "999", which julianday() cannot read
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds" if utc.microsecond else "seconds") + "Z"


def parse_time(value: Any) -> dt.datetime | None:
    """A time read back from a table (aware, naive UTC, or text) as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, dt.datetime):
        raise DataError(f"{value!r} is not a time")
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class TableDb:
    """One connection to a database with tables to write: PostgreSQL, SQLite or MariaDB/MySQL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.flavor = flavor_of(url)
        self.conn = _connect(url, self.flavor)
        self.description: list[Any] = []  # of the last query's result
        self.metadata: Any = None

    def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(Exception):
            self.conn.close()

    @property
    def mark(self) -> str:
        """The driver's positional placeholder."""
        return "%s" if self.flavor == "postgresql" else "?"

    def quote(self, name: str) -> str:
        """Quote a validated identifier, or ``schema.table``."""
        return quote(self.flavor, name)

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Translate driver errors: transient ones to DestinationUnavailable, the rest to DataError."""
        try:
            yield
        except SluicegateError:
            raise
        except Exception as exc:
            error = self._translate(exc)
            if error is None:
                raise
            raise error from exc

    def _translate(self, exc: Exception) -> SluicegateError | None:
        if self.flavor != "mariadb":
            translated = db.translate(exc, self.url)
            if translated is None or isinstance(translated, DataError):
                return translated
            return DestinationUnavailable(str(translated))
        import mariadb

        if not isinstance(exc, mariadb.Error):
            return None
        where = f"database {mask_url(self.url)}"
        detail = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, self.url)
        # By error number: the driver raises OperationalError for a query's own errors too (a
        # subquery of two rows), which read as "will retry" before.
        unnumbered = isinstance(exc, mariadb.OperationalError | mariadb.InterfaceError) and not exc.errno
        if unnumbered or mariadb_conn.classify(exc) == "transient":
            return DestinationUnavailable(f"{where}: {detail}; will retry")
        return DataError(f"{where}: {detail}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor in one transaction (on SQLite with the write lock), committed when the block ends."""
        with self.errors():
            if self.flavor == "postgresql":
                with self.conn.transaction(), self.conn.cursor() as cur:
                    yield cur
                return
            if self.flavor == "sqlite":
                with db.transaction(self.conn, db.SQLITE, immediate=True) as cur:
                    yield cur
                return
            cur = self.conn.cursor()
            cur.execute("START TRANSACTION")
            try:
                yield cur
            except BaseException:
                with contextlib.suppress(Exception):
                    cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def query(self, statement: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run a query; return its column names and all its rows. Its result's description (and on
        MariaDB the metadata: charsets, scales) stay in ``description`` and ``metadata``."""
        with self.errors():
            cur = self.conn.cursor()
            try:
                cur.execute(statement, tuple(params))
                self.description, self.metadata = list(cur.description or []), getattr(cur, "metadata", None)
                names = [d[0] for d in self.description]
                return names, [tuple(r) for r in cur.fetchall()]
            finally:
                cur.close()

    def execute(self, statement: str, params: Sequence[Any] = ()) -> int:
        """Run one statement on its own; return the rows it changed."""
        with self.errors():
            cur = self.conn.cursor()
            try:
                cur.execute(statement, tuple(params))
                return int(cur.rowcount)
            finally:
                cur.close()

    def create_table(self, table: str, statement: str) -> None:
        """Run ``statement`` (a ``CREATE TABLE IF NOT EXISTS`` of ``table``); writers take turns."""
        with self.transaction() as cur:
            if self.flavor == "postgresql":  # concurrent CREATE ... IF NOT EXISTS can still collide
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"sluicegate table {table}",))
            cur.execute(statement)

    def table_columns(self, table: str) -> list[str]:
        """The columns of ``table``; DataError naming the table when it does not exist."""
        try:
            names, _ = self.query(f"SELECT * FROM {self.quote(table)} WHERE 1 = 0")
        except DataError as exc:
            raise DataError(f"table {table} cannot be read ({exc}); create it first") from exc
        return names

    def required_columns(self, table: str) -> list[str]:
        """The columns of ``table`` an INSERT must give a value: NOT NULL, without a default, and not
        numbered or computed by the database (an identity, auto_increment, SQLite's rowid, generated)."""
        schema, _, name = table.rpartition(".")
        if self.flavor == "sqlite":
            s = schema or None
            rows = self.query(_SQLITE_REQUIRED, (name, s, name, s))[1]
        elif self.flavor == "postgresql":
            rows = self.query(_PG_REQUIRED, (self.quote(table),))[1]
        else:
            rows = self.query(_MARIADB_REQUIRED, (schema or None, name))[1]
        return [str(r[0]) for r in rows]

    def column_kinds(self, table: str) -> dict[str, str]:
        """The columns of ``table`` that hold only numbers (``number``), times (``time``) or
        booleans (``boolean``), by the kind; other columns (text, JSON...) are left out. SQLite
        stores any value in any column: none."""
        schema, _, name = table.rpartition(".")
        if self.flavor == "sqlite":
            return {}
        if self.flavor == "postgresql":
            rows = self.query(_PG_KINDS, (self.quote(table),))[1]
        else:
            rows = self.query(_MARIADB_KINDS, (schema or None, name))[1]
        return {str(column): str(kind) for column, kind in rows if kind}

    def integer_columns(self, table: str) -> set[str]:
        """The integer columns of ``table`` (PostgreSQL ``smallint``, ``integer``, ``bigint``, or a
        domain over one; MariaDB ``TINYINT`` to ``BIGINT``), which round a number with a fraction
        to a whole one without a word. A ``numeric(p,s)`` is left out (its declared scale is the
        rounding its owner chose), and so is every SQLite column (it stores a number as given)."""
        schema, _, name = table.rpartition(".")
        if self.flavor == "sqlite":
            return set()
        if self.flavor == "postgresql":
            rows = self.query(_PG_INTEGERS, (self.quote(table),))[1]
        else:
            rows = self.query(_MARIADB_INTEGERS, (schema or None, name))[1]
        return {str(column) for (column,) in rows}

    def sqlite_affinities(self, table: str) -> dict[str, str]:
        """The affinity of each column of a SQLite ``table`` (``INTEGER``, ``TEXT``, ``BLOB``,
        ``REAL`` or ``NUMERIC``, by SQLite's rules on the declared type): what SQLite makes of a
        value, a number's text turned into a number, a number into a text of 15 digits."""
        return {column: sqlite_affinity(declared) for column, declared in self.sqlite_declared(table).items()}

    def sqlite_declared(self, table: str) -> dict[str, str]:
        """The declared type of each column of a SQLite ``table``, in upper case ('' for none)."""
        schema, _, name = table.rpartition(".")
        rows = self.query(_SQLITE_TYPES, (name, schema or None))[1]
        return {str(column): str(declared or "").upper() for column, declared in rows}

    def unique_on(self, table: str, column: str) -> bool:
        """Whether ``table`` has a unique index (or primary key) on ``column`` alone: what an
        insert that skips a row whose ``column`` is taken needs (PostgreSQL's and SQLite's ``ON
        CONFLICT (column)`` refuse to run without it; MariaDB's would insert every copy)."""
        schema, _, name = table.rpartition(".")
        if self.flavor == "sqlite":
            s = schema or None
            rows = self.query(_SQLITE_UNIQUE, (name, s, s, s, column, name, s, column, name, s))[1]
        elif self.flavor == "postgresql":
            rows = self.query(_PG_UNIQUE, (self.quote(table), column))[1]
        else:
            rows = self.query(_MARIADB_UNIQUE, (schema or None, name, column))[1]
        return bool(rows)

    def unique_keys(self, table: str) -> list[frozenset[str]]:
        """The columns of each unique index (and primary key) of ``table`` without a predicate or an
        expression; names in lower case on SQLite and MariaDB, which compare them so."""
        schema, _, name = table.rpartition(".")
        if self.flavor == "postgresql":
            rows = self.query(_PG_UNIQUE_KEYS, (self.quote(table),))[1]
        elif self.flavor == "mariadb":
            rows = self.query(_MARIADB_UNIQUE_KEYS, (schema or None, name))[1]
        else:
            s = schema or None
            rows = self.query(_SQLITE_UNIQUE_KEYS, (name, s, s, name, s))[1]
        found: dict[Any, set[str | None]] = {}
        for index, column in rows:  # None: an expression (SQLite, MySQL's functional index)
            folded = column.lower() if column and self.flavor != "postgresql" else column
            found.setdefault(index, set()).add(folded)
        return [frozenset(c for c in columns if c) for columns in found.values() if None not in columns]

    def folding_collation(self, table: str, column: str) -> str | None:
        """The collation of the unique index on ``column`` when it folds ids together, else None.

        MariaDB's default ``utf8mb4_general_ci`` takes ``ABC`` for ``abc``, ``cafe`` for ``café``
        and ``m1 `` for ``m1`` (only ``*nopad_bin`` and binary types are exact); so do SQLite's
        ``NOCASE`` and ``RTRIM``, PostgreSQL's ``citext`` and nondeterministic collations. A
        message whose id differs only so is dropped as a duplicate."""
        schema, _, name = table.rpartition(".")
        if self.flavor == "sqlite":
            s = schema or None
            rows = self.query(_SQLITE_COLLATION, (name, s, s, column, s))[1]
        elif self.flavor == "postgresql":
            rows = self.query(_PG_COLLATION, (self.quote(table), column))[1]
        else:
            rows = self.query(_MARIADB_COLLATION, (schema or None, name, column))[1]
            exact = not rows or rows[0][0] is None or str(rows[0][0]).endswith("nopad_bin")
            rows = [] if exact or rows[0][0] == "utf8mb4_0900_bin" else rows
        return str(rows[0][0]) if rows else None


# SQLite: a unique index of one column, or the table's primary key when it is that column alone
# (an INTEGER PRIMARY KEY is the rowid: it has no index of its own).
_SQLITE_UNIQUE = (
    'SELECT 1 FROM pragma_index_list(?, ?) AS l WHERE l."unique" = 1'
    " AND (SELECT count(*) FROM pragma_index_info(l.name, ?)) = 1"
    " AND (SELECT i.name FROM pragma_index_info(l.name, ?) AS i) = ?"
    " UNION ALL SELECT 1 FROM pragma_table_info(?, ?) AS c WHERE c.pk = 1 AND c.name = ?"
    " AND (SELECT count(*) FROM pragma_table_info(?, ?) WHERE pk > 0) = 1"
)
_PG_UNIQUE = (
    "SELECT 1 FROM pg_catalog.pg_index i"
    " JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
    " WHERE i.indrelid = pg_catalog.to_regclass(%s) AND i.indisunique AND i.indnkeyatts = 1"
    " AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname = %s"
)
_MARIADB_UNIQUE = (
    "SELECT index_name FROM information_schema.statistics"
    " WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ?"
    " GROUP BY index_name HAVING count(*) = 1 AND max(non_unique) = 0 AND max(column_name) = ?"
)

_PG_UNIQUE_KEYS = (
    "SELECT i.indexrelid, a.attname FROM pg_catalog.pg_index i"
    " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)"
    " JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
    " WHERE i.indrelid = pg_catalog.to_regclass(%s) AND i.indisunique AND i.indpred IS NULL"
    " AND i.indexprs IS NULL AND k.n <= i.indnkeyatts"
    " AND i.indimmediate AND i.indisvalid"  # ON CONFLICT takes no deferrable nor invalid index
)
_MARIADB_UNIQUE_KEYS = (
    # a prefix (sub_part) is no unique key: ON DUPLICATE KEY takes "abcdef" and "abcxyz" for one row
    "SELECT index_name, CASE WHEN sub_part IS NULL THEN column_name END FROM information_schema.statistics"
    " WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ? AND non_unique = 0"
)
_SQLITE_UNIQUE_KEYS = (  # an INTEGER PRIMARY KEY has no index of its own: its column is the rowid
    "SELECT l.name, i.name FROM pragma_index_list(?, ?) AS l, pragma_index_info(l.name, ?) AS i"
    ' WHERE l."unique" = 1 AND l.partial = 0'
    " UNION ALL SELECT '', name FROM pragma_table_info(?, ?) WHERE pk > 0"
)

_SQLITE_REQUIRED = (
    'SELECT c.name FROM pragma_table_info(?, ?) AS c WHERE c."notnull" = 1 AND c.dflt_value IS NULL'
    " AND NOT (c.pk = 1 AND upper(c.type) = 'INTEGER'"
    " AND (SELECT count(*) FROM pragma_table_info(?, ?) WHERE pk > 0) = 1)"
)
_PG_REQUIRED = (
    "SELECT a.attname FROM pg_catalog.pg_attribute a WHERE a.attrelid = pg_catalog.to_regclass(%s)"
    " AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull AND NOT a.atthasdef"
    " AND a.attidentity = '' AND a.attgenerated = '' ORDER BY a.attnum"
)
_MARIADB_REQUIRED = (
    "SELECT column_name FROM information_schema.columns"
    " WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ? AND is_nullable = 'NO'"
    " AND column_default IS NULL AND extra NOT LIKE '%auto_increment%' AND extra NOT LIKE '%GENERATED%'"
    " ORDER BY ordinal_position"
)
_PG_KINDS = (  # a domain has its base type's category
    "SELECT a.attname, CASE t.typcategory WHEN 'N' THEN 'number' WHEN 'D' THEN 'time'"
    " WHEN 'B' THEN 'boolean' ELSE '' END FROM pg_catalog.pg_attribute a"
    " JOIN pg_catalog.pg_type t ON t.oid = a.atttypid"
    " WHERE a.attrelid = pg_catalog.to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
)
_MARIADB_KINDS = (
    "SELECT column_name, CASE WHEN data_type IN ('tinyint', 'smallint', 'mediumint', 'int', 'bigint',"
    " 'decimal', 'float', 'double', 'bit', 'year') THEN 'number'"
    " WHEN data_type IN ('date', 'datetime', 'timestamp', 'time') THEN 'time' ELSE '' END"
    " FROM information_schema.columns WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ?"
)
_SQLITE_TYPES = "SELECT name, type FROM pragma_table_info(?, ?)"
# SQLite's affinity rules, in their order (https://www.sqlite.org/datatype3.html#determination_of_column_affinity)
_SQLITE_AFFINITY: tuple[tuple[tuple[str, ...], str], ...] = (
    (("INT",), "INTEGER"), (("CHAR", "CLOB", "TEXT"), "TEXT"), (("BLOB",), "BLOB"),
    (("REAL", "FLOA", "DOUB"), "REAL"),
)  # fmt: skip


def sqlite_affinity(declared: str) -> str:
    """The affinity SQLite gives a column of the ``declared`` type (in upper case)."""
    return next(
        (a for words, a in _SQLITE_AFFINITY if any(w in declared for w in words)),
        "NUMERIC" if declared else "BLOB",
    )


_PG_INTEGERS = (  # a domain has its base type
    "SELECT a.attname FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid"
    " JOIN pg_catalog.pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END"
    " WHERE a.attrelid = pg_catalog.to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
    " AND b.typname IN ('int2', 'int4', 'int8')"
)
_MARIADB_INTEGERS = (
    "SELECT column_name FROM information_schema.columns WHERE table_schema = COALESCE(?, DATABASE())"
    " AND table_name = ? AND data_type IN ('tinyint', 'smallint', 'mediumint', 'int', 'bigint')"
)
_SQLITE_COLLATION = (
    "SELECT x.coll FROM pragma_index_list(?, ?) AS l JOIN pragma_index_xinfo(l.name, ?) AS x"
    " WHERE l.\"unique\" = 1 AND x.key = 1 AND x.name = ? AND upper(x.coll) <> 'BINARY'"
    " AND (SELECT count(*) FROM pragma_index_info(l.name, ?)) = 1"
)
_PG_COLLATION = (
    "SELECT CASE WHEN t.typname = 'citext' THEN 'citext' ELSE c.collname END FROM pg_catalog.pg_index i"
    " JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
    " JOIN pg_catalog.pg_type t ON t.oid = a.atttypid"
    " LEFT JOIN pg_catalog.pg_collation c ON c.oid = i.indcollation[0]"
    " WHERE i.indrelid = pg_catalog.to_regclass(%s) AND i.indisunique AND i.indnkeyatts = 1"
    " AND a.attname = %s"
    " AND (t.typname = 'citext' OR NOT coalesce(c.collisdeterministic, true))"
)
_MARIADB_COLLATION = (
    "SELECT collation_name FROM information_schema.columns"
    " WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ? AND column_name = ?"
)


def quote(flavor: Flavor, name: str) -> str:
    """Quote a validated identifier or ``schema.table`` for ``flavor``."""
    if flavor == "mariadb":
        return ".".join("`" + part.replace("`", "``") + "`" for part in name.split("."))
    return db.POSTGRESQL.quote(name)


def _connect(url: str, flavor: Flavor) -> Any:
    """Open an autocommit connection; times are compared and written in UTC, text as UTF-8
    (psycopg reads a SQL_ASCII database's text, in its own client_encoding, as bytes)."""
    if flavor == "mariadb":
        return _connect_mariadb(url)
    conn = db.connect(url, writer=True)  # its rows count for incremental tasks' late-commit cap
    if flavor == "postgresql":
        with db.wrap_errors(url):
            conn.execute("SET TimeZone TO 'UTC'")
            conn.execute("SET client_encoding TO 'UTF8'")
    return conn


def _connect_mariadb(url: str) -> Any:
    mariadb = mariadb_conn.driver()
    try:
        return mariadb_conn.connect(url)  # pinned to UTC, as every MariaDB session
    except mariadb.Error as exc:
        detail = scrub(str(exc), url)
        raise DestinationUnavailable(
            f"database {mask_url(url)} is unavailable: {detail}; will retry"
        ) from exc


class Unreadable(str):
    """A PostgreSQL date or time Python cannot hold (``infinity``, ``24:00``, year 10000), as its text."""

    type_name = ""


_TIME_TYPES = ("date", "time", "timetz", "timestamp", "timestamptz")


def read_times_leniently(conn: Any) -> None:
    """Have a psycopg connection read a date or time Python cannot hold as :class:`Unreadable`
    (psycopg raised DataError for the whole result, naming neither the column nor the fix)."""
    import psycopg
    from psycopg.adapt import Loader

    for name in _TIME_TYPES:
        info = psycopg.postgres.types.get(name)
        assert info is not None
        strict = conn.adapters.get_loader(info.oid, psycopg.pq.Format.TEXT)

        class Lenient(Loader):
            inner, type_name = strict, name

            def __init__(self, oid: int, context: Any = None) -> None:
                super().__init__(oid, context)
                self.strict = self.inner(oid, context)

            def load(self, data: Any) -> Any:
                try:
                    return self.strict.load(data)
                except psycopg.DataError:
                    value = Unreadable(bytes(data).decode())
                    value.type_name = self.type_name
                    return value

        conn.adapters.register_loader(info.oid, Lenient)


def check_readable(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Raise DataError naming the first column of ``rows`` that holds an :class:`Unreadable` time
    (or an array holding one)."""
    for row in rows:
        for name, cell in zip(names, row, strict=False):
            if (value := _unreadable(cell)) is not None:
                raise DataError(
                    f"column {name!r} holds the {value.type_name} {str(value)!r}, which sluicegate cannot "
                    f"read as a time (years 1 to 9999, no infinity or 24:00); cast it in select.sql, "
                    f"for example CAST({name} AS text) AS {name}"
                )


def _unreadable(value: Any) -> Unreadable | None:
    """``value`` if it is :class:`Unreadable`, else the first such element of an array, or None."""
    if isinstance(value, list):
        return next((found for v in value if (found := _unreadable(v)) is not None), None)
    return value if isinstance(value, Unreadable) else None
