"""Table sinks: a task's result rows written into a database table, whole or by key.

A :class:`TableTarget` names a table in a database (``[destination]`` of a ``task.toml``:
``url``, ``table``, ``mode``, ``key``); a :class:`TableSink` writes rows into it:

``replace``
    the table's rows become exactly the new rows, and a reader never sees an empty or
    half-written table. PostgreSQL and SQLite: one transaction that deletes and inserts
    (a reader sees the old rows until the commit, then the new ones; ``TRUNCATE`` is not
    used: it is not MVCC-safe on PostgreSQL, and it commits implicitly on MariaDB).
    MariaDB/MySQL: build-then-swap: the rows go into a copy (``CREATE TABLE ... LIKE``),
    then ``RENAME TABLE t TO old, new TO t`` swaps both names in one atomic step, and the
    old table is dropped. Writers of one table take turns (a table lock, or ``GET_LOCK``).
``upsert``
    insert each row or update the row with the same declared key (``ON CONFLICT (key) DO
    UPDATE``; on MariaDB ``ON DUPLICATE KEY UPDATE``, which any unique key of the table
    triggers).
``insert``
    insert rows whose key is new, leave the others alone (idempotent ingest).

By default a row the database refuses (a constraint, a type) fails the whole write. A caller
that passes ``rejected`` (the load stage of blocks tasks) gets the refused rows in that list
instead, and the others are written: when a batch is refused, each row is tried again alone
under a savepoint, so one bad row cannot keep the others out.

The table must exist: its owner decides types, keys and indexes. The connection handling is
kept to :class:`TableDb` so that MariaDB goes through ``db.connect`` once it is a dialect;
until then MariaDB/MySQL URLs (``mariadb://`` or ``mysql://``) use MariaDB Connector/Python.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import db, validate
from .exceptions import ConfigError, DataError, DestinationUnavailable, SluicegateError
from .masking import mask_url
from .tabledb import LOCK_WAIT, Flavor, TableDb, flavor_of, lock_timed_out, parse_time, quote, time_value

__all__ = [
    "MODES",
    "Flavor",
    "Insert",
    "Rejected",
    "Superseded",
    "TableDb",
    "TableMode",
    "TableSink",
    "TableTarget",
    "flavor_of",
    "load_target",
    "null_key",
    "parse_time",
    "quote",
    "resolve_url",
    "swap_names",
    "time_value",
]

TableMode = Literal["replace", "upsert", "insert"]
MODES: tuple[TableMode, ...] = ("replace", "upsert")  # what a task's [destination] may ask for
TARGET_KEYS = frozenset({"url", "table", "mode", "key"})
BeforeCommit = Callable[[Any], None]
Rejected = list[tuple[Sequence[Any], DataError]]  # the rows the database refused, and why


class Superseded(SluicegateError):
    """The table already holds rows of a newer evaluation; these rows were not written."""


@dataclass(frozen=True, kw_only=True)
class TableTarget:
    """A table in a database, and how rows are written into it."""

    url: str = field(repr=False)
    table: str
    mode: TableMode = "replace"
    key: tuple[str, ...] = ()

    @property
    def display(self) -> str:
        """The table and its database, password masked."""
        return f"table {self.table} in {mask_url(self.url)}"


def resolve_url(url: str, root: Path) -> str:
    """A ``sqlite:///relative.db`` URL made relative to the project folder; others as they are."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return f"sqlite:///{(root / url[len('sqlite:///') :]).resolve()}"
    return url


def load_target(
    raw: Any, where: str, *, default_url: str, root: Path, modes: Sequence[str] = MODES
) -> TableTarget:
    """Read a task's ``[destination]``: ``url`` (default ``default_url``), ``table``, ``mode``, ``key``."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f'{where}: use a table, e.g. [destination] then table = "current_air_quality"')
    validate.reject_unknown(raw, TARGET_KEYS, where)
    if "table" not in raw:
        raise ConfigError(f'{where} table: missing; name the table the rows go to, e.g. table = "current"')
    url = resolve_url(str(raw.get("url") or default_url), root)
    flavor_of(url, f"{where} url")
    mode = validate.choice(raw.get("mode", modes[0]), modes, f"{where} mode")
    key = validate.identifiers(raw.get("key", []), f"{where} key", '["city", "parameter_name"]')
    if mode != "replace" and not key:
        raise ConfigError(f'{where} key: mode = "{mode}" needs the key columns, e.g. key = ["city"]')
    table = validate.table_name(raw["table"], f"{where} table")
    return TableTarget(url=url, table=table, mode=mode, key=key)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- statements

MAX_ROWS = 500  # rows per INSERT statement ...
MAX_PARAMS = 30_000  # ... and bound values (SQLite allows 32,766, PostgreSQL 65,535)


@dataclass(frozen=True, kw_only=True)
class Insert:
    """How rows go into a table: its columns, and ``replace`` (plain), ``upsert`` or ``insert`` (new keys).

    Rows are sent as multi-row INSERT statements: one statement per up to :data:`MAX_ROWS`
    rows, so a statement-level trigger (sluicegate's capture on PostgreSQL) fires once per
    batch, not once per row.
    """

    flavor: Flavor
    table: str
    columns: tuple[str, ...]
    mode: TableMode = "replace"
    key: tuple[str, ...] = ()

    def sql(self, rows: int = 1) -> str:
        """The INSERT of ``rows`` rows."""
        flavor, q = self.flavor, [quote(self.flavor, c) for c in self.columns]
        mark = "%s" if flavor == "postgresql" else "?"
        one = f"({', '.join([mark] * len(q))})"
        base = f"INSERT INTO {quote(flavor, self.table)} ({', '.join(q)}) VALUES {', '.join([one] * rows)}"
        if self.mode == "replace":
            return base
        rest = [quote(flavor, c) for c in self.columns if c not in self.key]
        if flavor == "mariadb":
            keep = f"{quote(flavor, self.key[0])} = {quote(flavor, self.key[0])}"
            sets = ", ".join(f"{c} = VALUES({c})" for c in rest) if self.mode == "upsert" and rest else keep
            return f"{base} ON DUPLICATE KEY UPDATE {sets}"
        conflict = ", ".join(quote(flavor, k) for k in self.key)
        if self.mode == "insert" or not rest:
            return f"{base} ON CONFLICT ({conflict}) DO NOTHING"
        updates = ", ".join(f"{c} = excluded.{c}" for c in rest)
        return f"{base} ON CONFLICT ({conflict}) DO UPDATE SET {updates}"

    def run(self, cur: Any, rows: Sequence[Sequence[Any]]) -> int:
        """Insert ``rows`` through ``cur``; return the rows the database reports changed (for
        ``insert``: the rows whose key was new)."""
        per = max(1, min(MAX_ROWS, MAX_PARAMS // max(len(self.columns), 1)))
        changed = 0
        for start in range(0, len(rows), per):
            chunk = rows[start : start + per]
            cur.execute(self.sql(len(chunk)), [value for row in chunk for value in row])
            changed += max(int(cur.rowcount), 0)
        return changed


# ---------------------------------------------------------------------------- the sink


class TableSink:
    """Writes rows into a :class:`TableTarget` (see the module docstring for each mode)."""

    def __init__(self, target: TableTarget, *, lease: float | None = None) -> None:
        self.target = target
        self.db = TableDb(target.url)
        # Seconds a write waits for a lock on the table (SQLite: the database's write lock): within
        # half the ``lease`` of the claim it writes for, which a held table would otherwise outlast.
        self.lock_wait = LOCK_WAIT if lease is None else min(LOCK_WAIT, lease / 2)
        self._keyed = False  # an upsert's or insert's table was found to have a unique key on it

    @property
    def _wait(self) -> float:
        """``lock_wait`` as the database takes it: MariaDB's waits are whole seconds, at least 1."""
        return max(1, int(self.lock_wait)) if self.db.flavor == "mariadb" else self.lock_wait

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        """The write's transaction, its lock waits ending after ``lock_wait`` seconds (a session
        holding the table, an ALTER TABLE or a LOCK in an open transaction, or a SQLite writer left
        in BEGIN, kept the writer waiting 60 s or with no end, its claim running out)."""
        with self._held(), self._bounded(), self.db.transaction() as cur:
            if self.db.flavor == "postgresql":
                cur.execute(f"SET LOCAL lock_timeout = '{max(1, round(self.lock_wait * 1000))}ms'")
            yield cur

    @contextlib.contextmanager
    def _bounded(self) -> Iterator[None]:
        """SQLite and MariaDB: the session's lock waits bounded by ``lock_wait`` for the block
        (busy_timeout; innodb_lock_wait_timeout and lock_wait_timeout), restored after."""
        if self.db.flavor == "postgresql":  # SET LOCAL, in the transaction
            yield
            return
        with self.db.errors():
            self._set_wait(self._wait)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # the connection may be gone
                self._set_wait(LOCK_WAIT if self.db.flavor == "mariadb" else db.SQLITE_BUSY_SECONDS)

    def _set_wait(self, seconds: float) -> None:
        if self.db.flavor == "sqlite":
            self.db.conn.execute(f"PRAGMA busy_timeout = {max(1, round(seconds * 1000))}")
            return
        cur, whole = self.db.conn.cursor(), int(seconds)
        cur.execute(f"SET SESSION innodb_lock_wait_timeout = {whole}, lock_wait_timeout = {whole}")
        cur.close()

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        """A lock wait the block gave up names the table, the wait and what holds it."""
        try:
            yield
        except DestinationUnavailable as exc:
            if not lock_timed_out(exc.__cause__):
                raise
            holder = {
                "postgresql": "another session held a lock on it",
                "sqlite": "another process held the database's write lock",
                "mariadb": "another session held a lock on it",
            }[self.db.flavor]
            look = {
                "postgresql": "look for a long transaction on the table in pg_stat_activity",
                "sqlite": "end that process's open transaction: a sqlite3 shell, another writer",
                "mariadb": "look for a long transaction on the table in information_schema.innodb_trx",
            }[self.db.flavor]
            raise DestinationUnavailable(
                f"{self.target.display}: {holder} for {self._wait:g} s, so the rows were not written; "
                f"will retry ({look})"
            ) from exc

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    def __enter__(self) -> TableSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        stamp: tuple[str, dt.datetime] | None = None,
        before_commit: BeforeCommit | None = None,
        rejected: Rejected | None = None,
    ) -> int:
        """Write ``rows`` (values in ``columns`` order) by the target's mode; return how many were written.

        ``stamp`` (replace only): a column and the time of these rows; when the table holds
        a newer time in that column the write is refused with :class:`Superseded`, so a slow
        writer never replaces newer rows with older ones. ``before_commit(cursor)`` runs just
        before the rows become visible, with the cursor of the transaction that commits them
        (None for MariaDB's swap, which has no such transaction): raise to abandon the write.
        ``rejected``: collect the rows the database refuses there and write the others (see the
        module docstring), instead of failing the write.
        """
        if self.target.mode != "replace" and not self._keyed:
            if problem := unkeyed(self.target, self.db):
                raise ConfigError(problem)
            self._keyed = True
        if self.target.mode == "replace":
            if self.db.flavor == "mariadb":
                return self._swap(columns, rows, stamp, before_commit, rejected)
            return self._replace(columns, rows, stamp, before_commit, rejected)
        insert = Insert(
            flavor=self.db.flavor,
            table=self.target.table,
            columns=tuple(columns),
            mode=self.target.mode,
            key=self.target.key,
        )
        with self._transaction() as cur:
            written = self._insert(cur, insert, _last_per_key(columns, rows, self.target.key), rejected)
            if before_commit is not None:
                before_commit(cur)
        return written

    def _insert(
        self, cur: Any, insert: Insert, rows: Sequence[Sequence[Any]], rejected: Rejected | None
    ) -> int:
        """Insert ``rows``; with ``rejected``, each row alone when the batch is refused. Return how
        many were written."""
        if rejected is None:
            insert.run(cur, rows)
            return len(rows)
        try:
            self._savepoint(cur, lambda: insert.run(cur, rows))
            return len(rows)
        except DataError:
            pass
        written = 0
        for row in rows:
            try:
                self._savepoint(cur, lambda row=row: insert.run(cur, [row]))  # type: ignore[misc]
                written += 1
            except DataError as exc:
                rejected.append((row, exc))
        return written

    def _savepoint(self, cur: Any, step: Callable[[], object]) -> None:
        """Run ``step``; undo only it when the database refuses its rows (other errors end the
        transaction: a lost connection or a deadlock is retried as a whole)."""
        cur.execute("SAVEPOINT sluicegate_rows")
        try:
            with self.db.errors():
                step()
        except DataError:
            cur.execute("ROLLBACK TO SAVEPOINT sluicegate_rows")
            raise
        cur.execute("RELEASE SAVEPOINT sluicegate_rows")

    def _replace(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        stamp: tuple[str, dt.datetime] | None,
        before_commit: BeforeCommit | None,
        rejected: Rejected | None,
    ) -> int:
        """PostgreSQL and SQLite: DELETE and INSERT in one transaction."""
        table = self.db.quote(self.target.table)
        insert = Insert(flavor=self.db.flavor, table=self.target.table, columns=tuple(columns))
        with self._transaction() as cur:
            if self.db.flavor == "postgresql":  # writers take turns; readers (ACCESS SHARE) never wait
                cur.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")
            if stamp is not None:
                self._check_stamp(cur, stamp)
            cur.execute(f"DELETE FROM {table}")
            written = self._insert(cur, insert, rows, rejected)
            if before_commit is not None:
                before_commit(cur)
        return written

    def _check_stamp(self, cur: Any, stamp: tuple[str, dt.datetime]) -> None:
        column, at = stamp
        cur.execute(f"SELECT max({self.db.quote(column)}) FROM {self.db.quote(self.target.table)}")
        newest = parse_time(cur.fetchone()[0])
        if newest is not None and newest > at:
            raise Superseded(
                f"{self.target.display} already holds the rows of {newest.isoformat()}, "
                f"newer than {at.isoformat()}; kept them"
            )

    def _swap(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        stamp: tuple[str, dt.datetime] | None,
        before_commit: BeforeCommit | None,
        rejected: Rejected | None,
    ) -> int:
        """MariaDB/MySQL: fill a copy of the table, then swap the names in one RENAME TABLE."""
        table, new, old = (self.db.quote(n) for n in swap_names(self.target.table))
        insert = Insert(flavor="mariadb", table=swap_names(self.target.table)[1], columns=tuple(columns))
        with self._held(), self._bounded(), self._swap_lock() as cur:
            if stamp is not None:
                self._check_stamp(cur, stamp)
            with self.db.errors():
                cur.execute(f"DROP TABLE IF EXISTS {new}, {old}")  # left by a writer that died
                cur.execute(f"CREATE TABLE {new} LIKE {table}")
                try:
                    cur.execute("START TRANSACTION")
                    written = self._insert(cur, insert, rows, rejected)
                    cur.execute("COMMIT")
                    if before_commit is not None:
                        before_commit(None)
                    cur.execute(f"RENAME TABLE {table} TO {old}, {new} TO {table}")
                except BaseException:
                    with contextlib.suppress(Exception):
                        cur.execute("ROLLBACK")
                        cur.execute(f"DROP TABLE IF EXISTS {new}")
                    raise
                cur.execute(f"DROP TABLE {old}")
        return written

    @contextlib.contextmanager
    def _swap_lock(self) -> Iterator[Any]:
        """MariaDB: the table's named lock (GET_LOCK, held by this session), so swaps take turns."""
        name = "sluicegate sink " + hashlib.sha1(self.target.table.encode()).hexdigest()[:32]
        with self.db.errors():
            cur = self.db.conn.cursor()
            cur.execute("SELECT GET_LOCK(?, ?)", (name, self._wait))
            if cur.fetchone()[0] != 1:
                raise DestinationUnavailable(
                    f"{self.target.display}: another sluicegate writer of the table held its lock "
                    f"(GET_LOCK) for {self._wait:g} s, so the rows were not written; will retry"
                )
        try:
            yield cur
        finally:
            with contextlib.suppress(Exception):
                cur.execute("SELECT RELEASE_LOCK(?)", (name,))
                cur.fetchall()
                cur.close()


def null_key(target: TableTarget, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str | None:
    """The problem of rows of an upsert or insert with NULL in a key column: a NULL equals no
    other value, so ON CONFLICT (ON DUPLICATE KEY) never matched them and each write added them again."""
    for key in target.key if target.mode != "replace" else ():
        at = list(columns).index(key) if key in columns else None
        if at is not None and (nulls := sum(row[at] is None for row in rows)):
            return (
                f"{target.display}: key column {key} is NULL in {nulls} of {len(rows)} rows, and a NULL key "
                f"matches no row, so each write would add them again; give it a value (COALESCE({key}, ...)) "
                "or leave those rows out"
            )
    return None


def unkeyed(target: TableTarget, db: TableDb) -> str | None:
    """The problem of an upsert or insert into a table without a unique index on its key: ON
    CONFLICT (key) needs one on exactly the key's columns (PostgreSQL and SQLite refused each
    write), and MariaDB's ON DUPLICATE KEY matches only a unique key of the table (one on some of
    the key's columns will do): without one, each write added its rows again, saying nothing."""
    if target.mode == "replace":
        return None
    key = {k if db.flavor == "postgresql" else k.lower() for k in target.key}
    for columns in db.unique_keys(target.table):
        if columns == key or (db.flavor == "mariadb" and columns and columns <= key):
            return None
    db.table_columns(target.table)  # a missing table says so
    named, base = ", ".join(target.key), target.table.rpartition(".")[2]
    return (
        f"{target.display} has no unique index on {named}, the key of its {target.mode}s, so each write"
        f" would fail (PostgreSQL, SQLite) or add its rows again (MariaDB); create one: CREATE UNIQUE"
        f" INDEX {base}_key ON {target.table} ({named})"
    )


def _last_per_key(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], key: Sequence[str]
) -> Sequence[Sequence[Any]]:
    """The last row of each key (one statement may not update a row twice on PostgreSQL)."""
    at = [list(columns).index(k) for k in key]
    return list({tuple(row[i] for i in at): row for row in rows}.values())


def swap_names(table: str) -> tuple[str, str, str]:
    """``table`` and the names of its copy and of the old table during a swap (same schema).

    A name too long for the suffixes within MariaDB's 64 characters is cut, and ends in a digest
    of the whole name: two tables that share their first 52 characters share no copy."""
    schema, dot, name = table.rpartition(".")
    base = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if len(base) > 52:
        base = f"{base[:43]}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return table, f"{schema}{dot}{base}__sg_new", f"{schema}{dot}{base}__sg_old"
