"""Least privilege: the GRANTs a PostgreSQL role needs to run a project's tasks (``sluicegate grants``).

Two roles are enough. The **owner** owns the ledger schema: it creates and upgrades the ledger
tables (``sluicegate install``, and the first command after an upgrade) and installs the capture
triggers, whose function runs as the owner (``SECURITY DEFINER``), so writers of the source table
need no privilege on the ledger. The **exporter** runs tasks with only what this module prints:

* ``CONNECT`` on the database and ``USAGE`` on each schema it reads and on the ledger schema;
* ``SELECT`` on the tables and views the task's queries read (found in the catalogs: a
  temporary view over the query, rolled back, names its relations), ``DELETE`` on the table an
  archive task's ``delete.sql`` deletes from;
* on the ledger, what the statements of each store the task kind uses do (a kind's driver
  module declares ``LEDGER_STORES``): ``SELECT`` on every table a store's SQL names, and
  ``INSERT``, ``UPDATE`` (``ON CONFLICT DO UPDATE`` too) and ``DELETE`` where it does them,
  with ``USAGE`` on the id sequences of the tables it inserts into;
* ``pg_read_all_stats`` for incremental tasks: their late-commit cap reads the transaction
  start of other roles' sessions in ``pg_stat_activity``, which PostgreSQL hides otherwise.

:func:`render` is pure (the unit tests call it); :func:`grants` reads the catalogs and renders.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from . import db
from .drivers import kind_module
from .exceptions import ConfigError, UsageError
from .specs import Project, Settings, TaskBase
from .sql import parse

# Stores every run uses: the ledger's version (schema) and task errors and runs (runs).
COMMON_STORES = ("schema", "runs")
# Ledger tables that live in the source database when the ledger is another database.
INBOX_TABLES = frozenset({"changes", "change_runs", "archive_commits"})
PRIVILEGE_ORDER = ("SELECT", "INSERT", "UPDATE", "DELETE")
_DDL = re.compile(r"\b(CREATE|ALTER|DROP)\s", re.IGNORECASE)
_TABLE = re.compile(r"\{t\}(\w+)")
_DELETE_FROM = re.compile(
    r'\bDELETE\s+FROM\s+(?:ONLY\s+)?((?:"[^"]+"|\w+)(?:\.(?:"[^"]+"|\w+))?)', re.IGNORECASE
)


@dataclass(frozen=True, kw_only=True)
class SourceNeeds:
    """What one task reads and deletes in the source database: ``(schema, table)`` pairs."""

    select: tuple[tuple[str, str], ...] = ()
    delete: tuple[tuple[str, str], ...] = ()


@lru_cache(maxsize=1)
def templates() -> dict[str, str]:
    """The named statements of ``sql/grants/postgresql.sql``."""
    text = resources.files("sluicegate.sql").joinpath("grants", "postgresql.sql").read_text(encoding="utf-8")
    return parse(text)


@lru_cache(maxsize=32)
def store_privileges(store: str) -> dict[str, frozenset[str]]:
    """Per ledger table, the privileges the (non-DDL) statements of ``store`` need on PostgreSQL."""
    text = (
        resources.files("sluicegate.sql").joinpath("postgresql", f"{store}.sql").read_text(encoding="utf-8")
    )
    out: dict[str, set[str]] = {}
    for body in parse(text).values():
        if _DDL.search(body):
            continue  # creating and upgrading tables is the owner's
        for table in _TABLE.findall(body):
            out.setdefault(table, set()).add("SELECT")  # WHERE, RETURNING and FOR UPDATE read
        for verb, pattern in (("INSERT", r"INSERT INTO \{t\}(\w+)"), ("UPDATE", r"\bUPDATE \{t\}(\w+)"),
                              ("DELETE", r"DELETE FROM \{t\}(\w+)")):  # fmt: skip
            for table in re.findall(pattern, body):
                out[table].add(verb)
        if re.search(r"\bFOR (NO KEY )?(UPDATE|SHARE)\b", body):  # row locks need UPDATE as well
            for table in re.findall(r"FROM \{t\}(\w+)", body):
                out[table].add("UPDATE")
        upsert = re.search(r"INSERT INTO \{t\}(\w+)", body)
        if upsert and re.search(r"ON CONFLICT[^;]*DO UPDATE", body):
            out[upsert.group(1)].add("UPDATE")
    return {table: frozenset(privs) for table, privs in out.items()}


@lru_cache(maxsize=1)
def sequences() -> dict[str, str]:
    """Ledger tables with a serial id, and their sequence."""
    text = resources.files("sluicegate.sql").joinpath("postgresql", "schema.sql").read_text(encoding="utf-8")
    found = re.findall(r"CREATE TABLE IF NOT EXISTS \{t\}(\w+) \(\s*id bigserial", text)
    return {table: f"{table}_id_seq" for table in found}


def ledger_stores(task: TaskBase) -> tuple[str, ...] | None:
    """The ledger stores a task's kind uses (its driver's ``LEDGER_STORES``), or None if undeclared."""
    declared = getattr(kind_module(task.kind), "LEDGER_STORES", None)
    return None if declared is None else (*COMMON_STORES, *declared)


def ledger_privileges(stores: Iterable[str]) -> dict[str, frozenset[str]]:
    """Per ledger table, the union of what ``stores`` need."""
    out: dict[str, set[str]] = {}
    for store in stores:
        for table, privs in store_privileges(store).items():
            out.setdefault(table, set()).update(privs)
    return {table: frozenset(privs) for table, privs in out.items()}


class _Script:
    """GRANT statements for one role, each printed once per database, under comments that say why.

    With the ledger in another database than the source, a psql ``\\connect`` line goes before
    the statements of each database, so the script runs as is in ``psql``.
    """

    def __init__(self, role: str, database: str, *, several: bool) -> None:
        self.role = sql.Identifier(role)
        self.lines: list[str] = []
        self.seen: dict[str, set[str]] = {}
        self.database, self.several = database, several

    def at(self, database: str) -> None:
        if self.several and database != self.database:
            if not database.isprintable():  # a psql meta-command ends at the line's end
                raise ConfigError(f"the database name {database!r} holds a control character; rename it")
            self.lines.append(f"\\connect {sql.Identifier(database).as_string()}")
        self.database = database

    def comment(self, text: str) -> None:
        """A comment line; names from the catalogs or the command line in it cannot end the line."""
        self.lines.append("-- " + "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text))

    def grant(self, name: str, **parts: sql.Composable) -> None:
        statement = sql.SQL(templates()[name]).format(role=self.role, **parts).as_string() + ";"
        seen = self.seen.setdefault(self.database, set())
        if statement not in seen:
            seen.add(statement)
            self.lines.append(statement)

    def tables(self, privileges: Iterable[str], tables: Iterable[tuple[str, str]]) -> None:
        ordered = ", ".join(p for p in PRIVILEGE_ORDER if p in set(privileges))
        for schema, table in sorted(tables):
            self.grant("table", privileges=sql.SQL(ordered), tables=sql.Identifier(schema, table))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(
    tasks: Sequence[TaskBase],
    needs: Mapping[str, SourceNeeds],
    *,
    role: str,
    settings: Settings,
    source_database: str,
    ledger_database: str,
    read_only: bool = False,
) -> str:
    """The GRANT script for ``role`` to run ``tasks`` (or, ``read_only``, to read their status)."""
    out = _Script(role, ledger_database, several=ledger_database != source_database)
    schema = settings.ledger_schema
    out.comment(f"GRANTs for role {role} (PostgreSQL), printed by `sluicegate grants`.")
    out.comment(f"Run them as the owner: the role that owns the ledger schema {schema} and runs")
    out.comment("`sluicegate install`. Only the owner creates and upgrades the ledger tables and installs")
    out.comment("the capture triggers (their function runs as the owner, SECURITY DEFINER, so roles")
    out.comment("that write the source tables need no privilege on the ledger); after upgrading")
    out.comment("sluicegate, run `sluicegate install` as the owner before the exporter's next run.")
    out.lines.append("")
    out.comment(f"every task: the ledger in database {ledger_database}")
    out.grant("connect", database=sql.Identifier(ledger_database))
    out.grant("usage", schema=sql.Identifier(schema))
    if read_only:
        return _read_only(out, tasks, settings, source_database)
    _ledger_grants(out, ledger_privileges(COMMON_STORES), schema, inbox=False)
    for task in tasks:
        out.lines.append("")
        _task(out, task, needs.get(task.name, SourceNeeds()), settings, (source_database, ledger_database))
    return out.text()


def _read_only(out: _Script, tasks: Sequence[TaskBase], settings: Settings, source_database: str) -> str:
    """SELECT on every ledger table the tasks' kinds use: ``status`` and friends, no changes."""
    schema = settings.ledger_schema
    out.comment("read only: status, runs, partitions, watermarks; marks, claims and resets are refused")
    stores = {s for t in tasks for s in (ledger_stores(t) or ())} | set(COMMON_STORES)
    tables = {table for store in sorted(stores) for table in store_privileges(store)} - {"archive_commits"}
    out.tables(["SELECT"], [(schema, t) for t in tables - INBOX_TABLES])
    if "changes" in tables:  # status counts the changes waiting in the trigger inbox
        out.at(source_database)
        out.grant("connect", database=sql.Identifier(source_database))
        out.grant("usage", schema=sql.Identifier(schema))
        out.tables(["SELECT"], [(schema, t) for t in sorted(tables & INBOX_TABLES)])
    return out.text()


def _ledger_grants(
    out: _Script, privileges: Mapping[str, frozenset[str]], schema: str, *, inbox: bool
) -> None:
    """The ledger tables among ``privileges`` (only the inbox tables with ``inbox``) and their sequences."""
    chosen = {t: p for t, p in privileges.items() if (t in INBOX_TABLES) == inbox}
    for table, privs in sorted(chosen.items()):
        out.tables(privs, [(schema, table)])
    used = sorted(sequences()[t] for t, p in chosen.items() if "INSERT" in p and t in sequences())
    if used:
        out.grant("sequence", sequences=sql.SQL(", ").join(sql.Identifier(schema, s) for s in used))


def _task(
    out: _Script, task: TaskBase, need: SourceNeeds, settings: Settings, databases: tuple[str, str]
) -> None:
    source_database, ledger_database = databases
    stores = ledger_stores(task)
    if stores is None:
        out.comment(
            f"task {task.name} ({task.kind}): grants are not worked out for this kind; run it as the owner"
        )
        return
    out.at(source_database)
    out.comment(
        f"task {task.name} ({task.kind}): reads {_names(need.select) or 'nothing'} in {source_database}"
    )
    out.grant("connect", database=sql.Identifier(source_database))
    for schema in sorted({s for s, _ in (*need.select, *need.delete)}):
        out.grant("usage", schema=sql.Identifier(schema))
    out.tables(["SELECT"], set(need.select) - set(need.delete))
    if need.delete:
        out.comment(f"task {task.name}: delete.sql deletes the exported rows")
        out.tables(["SELECT", "DELETE"], need.delete)
    if task.kind == "incremental":
        out.comment(f"task {task.name}: the late-commit cap reads other sessions' transaction start in")
        out.comment("pg_stat_activity, hidden from roles without pg_read_all_stats (granting a predefined")
        out.comment("role needs a superuser, or a role with ADMIN OPTION on it)")
        out.grant("read_all_stats")
    privileges = ledger_privileges(stores)
    if settings.shared_database:  # the archive witness exists only with the ledger elsewhere
        privileges = {t: p for t, p in privileges.items() if t != "archive_commits"}
    if any(t in INBOX_TABLES for t in privileges):
        out.comment(f"task {task.name}: the ledger tables kept in the source database")
        if "archive_commits" in privileges:
            out.comment(
                "(archive_commits is created by the first run of an archive task: run it once as the owner)"
            )
        out.grant("usage", schema=sql.Identifier(settings.ledger_schema))
        _ledger_grants(out, privileges, settings.ledger_schema, inbox=True)
        if not settings.shared_database and "changes" in privileges:  # the fold checks their version
            out.tables(["SELECT"], [(settings.ledger_schema, "meta")])
    out.at(ledger_database)
    out.comment(f"task {task.name}: its ledger tables")
    _ledger_grants(out, privileges, settings.ledger_schema, inbox=False)


def _names(pairs: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{s}.{t}" for s, t in sorted(pairs))


# ---------------------------------------------------------------------------- the catalogs


def queries_of(task: TaskBase) -> list[tuple[str, dict[str, Any]]]:
    """The source queries a task runs, with the parameters they take."""
    if task.kind == "archive":
        return [(task.select_sql, {"export_boundary": dt.datetime.now(dt.UTC)})]
    found: list[tuple[str, dict[str, Any]]] = [(task.select_sql, {})] if task.select_sql else []
    time = getattr(task, "time", None)
    if time is not None and time.zone_sql:
        found.append((time.zone_sql, {}))
    return found


def source_needs(task: TaskBase, conn: Any) -> SourceNeeds:
    """What ``task`` reads and deletes, from the catalogs of the source database on ``conn``."""
    select: set[tuple[str, str]] = set()
    for query, params in queries_of(task):
        select.update(_relations(conn, query, params))
    capture = getattr(task, "capture", None)
    if capture is not None and capture.mode == "scan" and capture.table:
        select.add(_relation(conn, capture.table))
    delete: set[tuple[str, str]] = set()
    delete_sql = getattr(task, "delete_sql", None)
    if delete_sql:
        delete = {_relation(conn, name) for name in _DELETE_FROM.findall(delete_sql)}
        if not delete:
            raise ConfigError(
                f"{task.folder / 'delete.sql'}: no DELETE FROM <table> found; name the table it deletes from"
            )
    return SourceNeeds(select=tuple(sorted(select)), delete=tuple(sorted(delete)))


def _relations(conn: Any, query: str, params: Mapping[str, Any]) -> set[tuple[str, str]]:
    """The relations ``query`` reads directly: a temporary view over it names them (rolled back)."""
    text = psycopg.ClientCursor(conn).mogrify(query, params) if params else query
    with conn.transaction(force_rollback=True):
        conn.execute(sql.SQL(templates()["probe_view"]).format(query=sql.SQL(text)))
        return {(str(s), str(t)) for s, t in conn.execute(templates()["probe_relations"]).fetchall()}


def _relation(conn: Any, name: str) -> tuple[str, str]:
    """A table name as the role's search_path resolves it."""
    row = conn.execute(templates()["relation"], {"name": name}).fetchone()
    return str(row[0]), str(row[1])


def default_role(settings: Settings) -> str:
    """The role the project's source URL connects as (the one that needs the grants)."""
    user = psycopg.conninfo.conninfo_to_dict(settings.source_url).get("user")
    return str(user) if user else "sluicegate_exporter"


def grants(
    project: Project, names: Sequence[str] = (), *, role: str | None = None, read_only: bool = False
) -> str:
    """The GRANT script for ``role`` (default: the source URL's user) to run the named tasks."""
    settings = project.settings
    if role is not None and (not role or not role.isprintable()):
        raise UsageError(f"--role {role!r} is not a role name; give the name as it is, on one line")
    if (
        db.dialect_of(settings.source_url) is not db.POSTGRESQL
        or db.dialect_of(settings.ledger_url) is not db.POSTGRESQL
    ):
        raise ConfigError(
            f"{settings.root / 'sluicegate.toml'}: grants are printed for PostgreSQL only; "
            "a SQLite database is guarded by its file's permissions"
        )
    tasks = project.select(list(names))
    conn = db.connect(settings.source_url)
    try:
        with db.wrap_errors(settings.source_url):
            source_database = str(conn.execute(templates()["current_database"]).fetchone()[0])
            needs = {t.name: source_needs(t, conn) for t in tasks if ledger_stores(t) is not None}
    finally:
        conn.close()
    ledger_database = source_database
    if not settings.shared_database:
        ledger_database = str(
            psycopg.conninfo.conninfo_to_dict(settings.ledger_url).get("dbname") or "postgres"
        )
    return render(
        tasks, needs, role=role or default_role(settings), settings=settings,
        source_database=source_database, ledger_database=ledger_database, read_only=read_only,
    )  # fmt: skip
