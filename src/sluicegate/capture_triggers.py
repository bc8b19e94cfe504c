"""Capture triggers: ``sluicegate install`` creates them, ``check`` and ``status`` look for them.

On PostgreSQL, statement-level triggers with transition tables call one ``SECURITY DEFINER``
function per task that appends runs of bins to the ``change_runs`` inbox; on SQLite and
MariaDB, row triggers append one bin per changed row to ``changes``. :mod:`sluicegate.capture`
folds what they record into partition versions.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from . import db, partitions
from .capture_keys import refuse_binary_keys, scan_cursor_problems
from .exceptions import ConfigError, SluicegateError, UsageError, is_transient
from .ledger import Ledger
from .sources import Source

if TYPE_CHECKING:
    from .drivers.partitioned import Task as TaskSpec


def existing_rows(task: TaskSpec, source: Source) -> int:
    """Rows already in the capture table: changes made before the triggers that they never saw."""
    assert task.capture.table
    return int(source.execute(f"SELECT count(*) FROM {source.dialect.quote(task.capture.table)}")[0][0])


OPERATIONS = ("insert", "update", "delete")
# A SQLite table's columns, in order: parameters (table, schema or None), see sqlite_table.
SQLITE_COLUMNS = "SELECT name FROM pragma_table_info(?, ?)"


def sqlite_table(table: str) -> tuple[str, str | None]:
    """``(name, schema)`` of a ``[capture] table`` as SQLITE_COLUMNS takes them: ``main.m`` is
    table ``m`` of schema ``main``, as the quoted ``"main"."m"`` of the triggers reads it."""
    schema, _, name = table.rpartition(".")
    return name, schema or None


def _sqlite_schema_problem(task: TaskSpec) -> list[str]:
    """A SQLite capture table outside the main database: a SQLite source is one database file,
    and a trigger cannot reference another database."""
    assert task.capture.table
    name, schema = sqlite_table(task.capture.table)
    if schema is None or schema.lower() == "main":
        return []
    return [
        f"{task.folder / 'task.toml'} [capture] table: {task.capture.table!r} is in schema {schema!r}; "
        f"a SQLite source captures tables of its own database only: write table = {name!r}"
    ]


def _trigger_name(task: TaskSpec, operation: str) -> str:
    return f"sluicegate_{task.name}_{operation.lower()}"


def trigger_names(task: TaskSpec) -> list[str]:
    """The names of the task's three capture triggers."""
    return [_trigger_name(task, op) for op in OPERATIONS]


_PG_TRIGGERS = (
    "SELECT t.tgname, n.nspname, p.prosrc, t.tgtype::pg_catalog.int4 OPERATOR(pg_catalog.&) 1 = 1"
    " FROM pg_catalog.pg_trigger t"
    " JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid"
    " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
    " WHERE t.tgrelid = pg_catalog.to_regclass(%s) AND t.tgname = ANY(%s) AND NOT t.tgisinternal"
)


def _triggers_on_table(task: TaskSpec, source: Source) -> dict[str, str]:
    """The task's triggers present on its capture table, each with the schema of the ledger it
    feeds (PostgreSQL: its function's schema; elsewhere the inbox has one name, so "").

    A trigger made for other ``[capture]`` keys or time, or another ``[time] boundary``, records
    the wrong partitions: it counts as not installed, so ``check`` asks for ``install`` again.
    """
    assert task.capture.table
    names, table = trigger_names(task), task.capture.table
    if source.dialect is db.SQLITE:
        name, schema = sqlite_table(table)
        master = f"{db.SQLITE.quote_name(schema)}.sqlite_master" if schema else "sqlite_master"
        rows = source.execute(
            f"SELECT name, sql FROM {master} WHERE type = 'trigger' AND tbl_name = ? COLLATE NOCASE"
            f" AND name IN ({', '.join('?' * len(names))})",
            (name, *names),
        )
        wanted = dict(_sqlite_triggers(task))
        rows = [(name, "") for name, create in rows if wanted.get(str(name)) == str(create)]
    elif source.dialect is db.MARIADB:
        rows = source.execute(
            "SELECT trigger_name, action_statement FROM information_schema.triggers"
            " WHERE event_object_schema = COALESCE(%s, DATABASE()) AND event_object_table = %s"
            f" AND trigger_name IN ({', '.join(['%s'] * len(names))})",
            (*(table.rsplit(".", 1) if "." in table else (None, table)), *names),
        )
        bodies = dict(_mariadb_triggers(task, "sluicegate_"))
        rows = [(name, "") for name, body in rows if bodies.get(str(name), (None, None))[1] == str(body)]
    else:
        want_row = task.capture.triggers == "row"
        rows = source.execute(_PG_WORKING_TRIGGERS, (db.POSTGRESQL.quote(table), names, want_row))
        rows = [r for r in rows if r[2] == _pg_function_body(task, str(r[1]), per_row=bool(r[3]))]
    return {str(r[0]): str(r[1]) for r in rows}


# A statement trigger on a partitioned table (or a partition), as releases before row triggers
# for those installed, misses writes straight into a partition: it counts as not installed, so
# `check` and `status` ask for `install` again. So does one where `[capture] triggers = "row"`
# asks for row triggers (the setting changed since `install`).
_PG_WORKING_TRIGGERS = (
    _PG_TRIGGERS + " AND (t.tgtype::pg_catalog.int4 OPERATOR(pg_catalog.&) 1 = 1 OR (NOT %s AND NOT EXISTS ("
    "SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = t.tgrelid AND (c.relkind = 'p' OR c.relispartition))))"
)


def installed_triggers(task: TaskSpec, source: Source, schema: str) -> list[str]:
    """The task's capture triggers present on its capture table and feeding the ledger ``schema``
    (a trigger of another project's ledger schema, or on another table, does not count)."""
    found = _triggers_on_table(task, source)
    return sorted(n for n, s in found.items() if source.dialect is not db.POSTGRESQL or s == schema)


def missing_triggers(task: TaskSpec, source: Source, schema: str) -> list[str]:
    """The task's capture triggers that are not installed for the ledger ``schema``."""
    present = set(installed_triggers(task, source, schema))
    return [n for n in trigger_names(task) if n not in present]


def _refuse_foreign(task: TaskSpec, found: dict[str, str], schema: str) -> None:
    """Refuse to replace triggers that feed another project's ledger schema (PostgreSQL).

    Two projects with the same task name over one table share trigger names: installing the
    second re-pointed the first's triggers at its own ledger, and the first project saw no
    change again while ``check`` said all was well.
    """
    foreign = sorted({s for s in found.values() if s != schema})
    if foreign:
        raise UsageError(
            f"task {task.name!r}: the triggers {', '.join(trigger_names(task))} on {task.capture.table}"
            f" feed the ledger schema {foreign[0]!r} of another project (or of this one, before its [ledger]"
            " schema was changed); give this task another name (rename its folder), or drop those triggers"
            " first"
        )


def install(task: TaskSpec, inbox: Ledger, ledger: Ledger | None = None) -> list[str]:
    """Create (or replace) the capture triggers of ``task`` in the source database.

    Returns the names of the triggers created. ``inbox`` is ledger-table access on the
    source database; its inbox table is created if missing. Triggers record a change's keys in
    the order of ``keys``: one the ``ledger``'s partitions do not have is refused first.
    """
    if ledger is not None:
        partitions.check_key_order(task, ledger.partitions, str(task.folder / "task.toml"))
    cap = task.capture
    if cap.mode != "trigger":
        raise UsageError(
            f"task {task.name!r} uses capture mode {cap.mode!r}; only 'trigger' tasks install triggers"
        )
    assert cap.table
    inbox.ensure_schema()
    if inbox.dialect is db.POSTGRESQL:
        return _install_postgres(task, inbox)
    if inbox.dialect is db.MARIADB:
        return _install_mariadb(task, inbox)
    return _install_sqlite(task, inbox)


def _pg_inbox_insert(task: TaskSpec, schema: str, alias: str, time_ending: bool) -> Any:
    """The trigger function's INSERT of the changed rows' runs of bins (``alias``: new or old).

    One inbox row per key values and UTC day (UTC hour, for an hourly task) of the statement's
    rows: their first and last 15-minute bins, which :func:`fold` turns into every local period
    between. So a COPY of a year of hourly readings writes a row per location and day, not one
    per reading hour, and a one-row statement writes one row, as before.
    """
    from psycopg import sql

    cap = task.capture
    # "new" and "old" would clash with PL/pgSQL's NEW and OLD records: alias as changed_*.
    ref = sql.Identifier(f"changed_{alias}")
    names = [sql.Identifier(f"k{i}") for i in range(len(task.keys))]
    columns = [
        sql.SQL("{}.{} AS {}").format(ref, sql.Identifier(cap.keys[k]), name)
        for k, name in zip(task.keys, names, strict=True)
    ]
    keys = sql.SQL("pg_catalog.jsonb_build_array({})").format(sql.SQL(", ").join(names))
    changes = sql.Identifier(schema, "change_runs")
    src = sql.SQL("{} AS {}").format(sql.Identifier(f"sluicegate_{alias}"), ref)
    if not task.time:
        return sql.SQL(
            "INSERT INTO {changes} (task, keys, first_bin, last_bin) SELECT DISTINCT {task}, {keys},"
            " NULL::pg_catalog.timestamptz, NULL::pg_catalog.timestamptz FROM (SELECT {cols} FROM {src}) AS c"
        ).format(
            changes=changes, task=sql.Literal(task.name), keys=keys, cols=sql.SQL(", ").join(columns), src=src
        )
    assert cap.time
    col = sql.SQL("{}.{}").format(ref, sql.Identifier(cap.time)).as_string()
    columns.append(sql.SQL("{} AS bin").format(sql.SQL(db.POSTGRESQL.bin_number(col, time_ending))))
    per_window = sql.Literal(96 if task.time.grain == "day" else 4)  # bins per UTC day (hour)
    window = sql.SQL("pg_catalog.floor(bin OPERATOR(pg_catalog./) {})").format(per_window)
    return sql.SQL(
        "INSERT INTO {changes} (task, keys, first_bin, last_bin)"
        " SELECT {task}, {keys}, pg_catalog.to_timestamp(pg_catalog.min(bin) OPERATOR(pg_catalog.*) 900),"
        " pg_catalog.to_timestamp(pg_catalog.max(bin) OPERATOR(pg_catalog.*) 900)"
        " FROM (SELECT {cols} FROM {src}) AS c GROUP BY {group}"
    ).format(
        changes=changes,
        task=sql.Literal(task.name),
        keys=keys,
        cols=sql.SQL(", ").join(columns),
        src=src,
        group=sql.SQL(", ").join([*names, window]),
    )


# The row trigger's memory of the last (task, keys, bin) it recorded in this transaction: the
# same again (the next sensor of a location in the same hour) adds no inbox row. set_config's
# local value ends with the transaction and is undone with a rolled-back savepoint, as the inbox
# row it stands for is, so a skipped row's change always commits or rolls back with a recorded one.
ROW_MEMORY = "sluicegate.capture_last"
ROW_DECLARE = "DECLARE changed_keys pg_catalog.jsonb; changed_bin pg_catalog.float8; sig pg_catalog.text;\n"


def _pg_row_insert(task: TaskSpec, schema: str, row: str, time_ending: bool) -> Any:
    """The row trigger function's recording of one changed row's keys and bin (``row``: NEW or
    OLD), unless it is the last one recorded in this transaction."""
    from psycopg import sql

    cap = task.capture
    keys = sql.SQL("pg_catalog.jsonb_build_array({})").format(
        sql.SQL(", ").join(sql.SQL(row + ".{}").format(sql.Identifier(cap.keys[k])) for k in task.keys)
    )
    number = sql.SQL("NULL::pg_catalog.float8")
    if task.time:
        assert cap.time
        column = sql.SQL(row + ".{}").format(sql.Identifier(cap.time)).as_string()
        number = sql.SQL(db.POSTGRESQL.bin_number(column, time_ending))
    when = sql.SQL("pg_catalog.to_timestamp(changed_bin OPERATOR(pg_catalog.*) 900)")
    cat = "OPERATOR(pg_catalog.||)"
    return sql.SQL(
        "changed_keys := {keys}; changed_bin := {number};\n"
        "  sig := {me} "
        + cat
        + " changed_keys::pg_catalog.text "
        + cat
        + " ' ' "
        + cat
        + " COALESCE(changed_bin::pg_catalog.text, '');\n"
        "  IF NOT COALESCE(sig OPERATOR(pg_catalog.=)"
        " pg_catalog.current_setting({memory}, true), false) THEN\n"
        "    INSERT INTO {changes} (task, keys, first_bin, last_bin)"
        " VALUES ({task}, changed_keys, {when}, {when});\n"
        "    PERFORM pg_catalog.set_config({memory}, sig, true);\n"
        "  END IF"
    ).format(
        keys=keys,
        number=number,
        me=sql.Literal(f"{schema}.{task.name} "),
        memory=sql.Literal(ROW_MEMORY),
        changes=sql.Identifier(schema, "change_runs"),
        task=sql.Literal(task.name),
        when=when,
    )


def _pg_partitioned(inbox: Ledger, table: str) -> bool:
    """Whether ``table`` is a partitioned table or one partition of one (PostgreSQL)."""
    row = inbox.conn.execute(
        "SELECT c.relkind = 'p' OR c.relispartition FROM pg_catalog.pg_class c"
        " WHERE c.oid = pg_catalog.to_regclass(%s)",
        (db.POSTGRESQL.quote(table),),
    ).fetchone()
    return bool(row and row[0])


def _pg_function_body(task: TaskSpec, schema: str, *, per_row: bool) -> str:
    """The source of ``task``'s trigger function feeding the ledger ``schema``, as ``install``
    creates it and ``pg_proc.prosrc`` shows it."""
    from psycopg import sql

    time_ending = bool(task.time and task.time.boundary == "end")
    if per_row:
        ins, delete = (_pg_row_insert(task, schema, r, time_ending) for r in ("NEW", "OLD"))
    else:
        ins, delete = (_pg_inbox_insert(task, schema, r, time_ending) for r in ("new", "old"))
    return (
        sql.SQL(
            (ROW_DECLARE if per_row else "") + "BEGIN\n"
            "  IF TG_OP OPERATOR(pg_catalog.<>) 'DELETE' THEN {ins}; END IF;\n"  # INSERT, UPDATE
            "  IF TG_OP OPERATOR(pg_catalog.<>) 'INSERT' THEN {del}; END IF;\n"  # UPDATE, DELETE
            "  RETURN NULL;\n"
            "END"
        )
        .format(ins=ins, **{"del": delete})
        .as_string()
    )


def _install_postgres(task: TaskSpec, inbox: Ledger) -> list[str]:
    """Statement triggers with transition tables: one inbox row per keys and UTC day of a
    statement. With ``[capture] triggers = "row"`` they are row triggers (cheaper for a table
    written one row per statement, dearer for a COPY). On a partitioned table (or one of its
    partitions) they are row triggers whatever the setting:
    PostgreSQL fires a statement trigger only on the table a statement names, so writes straight
    into a partition were never captured, while a row trigger on the partitioned table is cloned
    onto every partition, those created later included, and fires however the row got there."""
    from psycopg import sql

    cap = task.capture
    assert cap.table
    schema = inbox.table_prefix.rstrip(".")
    table = sql.Identifier(*cap.table.split("."))
    fn = sql.Identifier(schema, f"capture_{task.name}")
    per_row = cap.triggers == "row" or _pg_partitioned(inbox, cap.table)
    body = _pg_function_body(task, schema, per_row=per_row)
    # SECURITY DEFINER: the function runs as its owner (the role that installs, which owns the
    # ledger), so a writer that may only INSERT into the source table still records its changes
    # in the inbox without any privilege on the ledger. It runs under the writer's search_path,
    # so the body names every function, operator, type and table with its schema: a writer's
    # objects cannot stand in for them (tests/integration/test_grants.py tries). Pinning the
    # search_path with SET instead costs about 5 µs per statement (bench/README.md), as much
    # as the rest of the function. Nobody calls it but the triggers.
    statements: list[sql.Composable] = [
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {fn}() RETURNS pg_catalog.trigger LANGUAGE plpgsql"
            " SECURITY DEFINER AS {body}"
        ).format(fn=fn, body=sql.Literal(body)),
        sql.SQL("REVOKE ALL ON FUNCTION {fn}() FROM PUBLIC").format(fn=fn),
    ]
    names = []
    for op, referencing in (
        ("INSERT", "REFERENCING NEW TABLE AS sluicegate_new"),
        ("UPDATE", "REFERENCING OLD TABLE AS sluicegate_old NEW TABLE AS sluicegate_new"),
        ("DELETE", "REFERENCING OLD TABLE AS sluicegate_old"),
    ):
        name = _trigger_name(task, op)
        names.append(name)
        each = "FOR EACH ROW" if per_row else f"{referencing} FOR EACH STATEMENT"
        statements.append(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(name), table))
        statements.append(
            sql.SQL(
                "CREATE TRIGGER {name} AFTER " + op + " ON {table} " + each + " EXECUTE FUNCTION {fn}()"
            ).format(name=sql.Identifier(name), table=table, fn=fn)
        )
    _execute(inbox, statements, task)
    return names


def _row_values(task: TaskSpec, dialect: db.Dialect, row: str, time_ending: bool, json_array: str) -> str:
    """``(task, keys, bin)`` of one changed row (``NEW`` or ``OLD``) for a row trigger's inbox insert."""
    cap = task.capture
    keys = ", ".join(f"{row}.{dialect.quote(cap.keys[k])}" for k in task.keys)
    bin_sql = "NULL"
    if task.time:
        assert cap.time
        bin_sql = dialect.bin_expr(f"{row}.{dialect.quote(cap.time)}", time_ending)
    literal = "'" + task.name.replace("'", "''") + "'"
    return f"({literal}, {json_array}({keys}), {bin_sql})"


def capture_problems(task: TaskSpec, source: Source) -> list[str]:
    """Why the capture table or its ``[capture]`` columns cannot be read (trigger and scan modes)."""
    cap = task.capture
    if cap.mode not in ("trigger", "scan") or not cap.table:
        return []
    wanted = [cap.keys[k] for k in task.keys] + [c for c in (cap.time, cap.cursor) if c]
    q = source.dialect.quote
    try:
        if source.dialect is db.SQLITE:  # where a quoted name that is no column reads as a string
            if problems := _sqlite_schema_problem(task):
                return problems
            found = [str(r[0]) for r in source.execute(SQLITE_COLUMNS, sqlite_table(cap.table))]
            if problems := missing_capture_columns(task, found):
                return problems
        source.execute(f"SELECT {', '.join(q(c) for c in wanted) or '1'} FROM {q(cap.table)} WHERE 1 = 0")
    except SluicegateError as exc:
        if is_transient(exc):  # the source is down, not misconfigured: the run fails as an outage
            raise
        return [
            f"{task.folder / 'task.toml'} [capture]: table {cap.table!r} or its columns {wanted} are not"
            f" readable: {exc}"
        ]
    return scan_cursor_problems(task, source)


def missing_capture_columns(task: TaskSpec, columns: Collection[str]) -> list[str]:
    """The ``[capture]`` columns that the capture table's ``columns`` lack (any case), as messages.

    SQLite reads a double-quoted name that is no column as a string: ``SELECT "datetme"`` passed
    ``check``, and the installed trigger broke every INSERT of the application with "no such
    column: NEW.datetme". So SQLite's capture columns are looked up by name.
    """
    cap = task.capture
    have = {c.lower() for c in columns}
    wanted = [(f"keys.{k}", cap.keys[k]) for k in task.keys]
    wanted += [(name, c) for name, c in (("time", cap.time), ("cursor", cap.cursor)) if c]
    if not columns:
        return [f"{task.folder / 'task.toml'} [capture] table: {cap.table!r} is not a table of the source"]
    return [
        f"{task.folder / 'task.toml'} [capture] {name}: {column!r} is not a column of {cap.table}"
        f" ({', '.join(columns)})"
        for name, column in wanted
        if column.lower() not in have
    ]


def _install_sqlite(task: TaskSpec, inbox: Ledger) -> list[str]:
    cap = task.capture
    assert cap.table
    q = db.SQLITE.quote
    problems = _sqlite_schema_problem(task)
    with inbox.core.transaction() as cur:
        cur.execute(SQLITE_COLUMNS, sqlite_table(cap.table))
        problems = problems or missing_capture_columns(task, [str(r[0]) for r in cur.fetchall()])
    if problems:  # a trigger naming no column would break the application's every write
        raise ConfigError("; ".join(problems))

    triggers = _sqlite_triggers(task)
    drops = [f"DROP TRIGGER IF EXISTS {q(name)}" for name, _ in triggers]
    _execute(inbox, drops + [create for _, create in triggers])  # one transaction
    return [name for name, _ in triggers]


def _sqlite_triggers(task: TaskSpec) -> list[tuple[str, str]]:
    """``(name, CREATE TRIGGER statement)`` of each SQLite capture trigger of ``task``, as
    ``install`` creates it and ``sqlite_master.sql`` keeps it."""
    assert task.capture.table
    q = db.SQLITE.quote
    time_ending = bool(task.time and task.time.boundary == "end")

    def insert(row: str) -> str:
        values = _row_values(task, db.SQLITE, row, time_ending, "json_array")
        return f"INSERT OR IGNORE INTO sluicegate_changes (task, keys, bin) VALUES {values};"

    return [
        (
            _trigger_name(task, op),
            f"CREATE TRIGGER {q(_trigger_name(task, op))} AFTER {op} ON {q(task.capture.table)} BEGIN "
            + " ".join(insert(r) for r in rows)
            + " END",
        )
        for op, rows in (("INSERT", ["NEW"]), ("UPDATE", ["OLD", "NEW"]), ("DELETE", ["OLD"]))
    ]


def _install_mariadb(task: TaskSpec, inbox: Ledger) -> list[str]:
    """Row triggers (MariaDB has no statement triggers) appending to the inbox, one row per changed row.

    ``CREATE OR REPLACE TRIGGER`` swaps a trigger in one step (MariaDB commits DDL at once, so a
    drop then a create would leave a moment without capture).
    """
    assert task.capture.table
    table = db.MARIADB.quote(task.capture.table)
    refuse_binary_keys(task, inbox)
    triggers = _mariadb_triggers(task, inbox.table_prefix)
    _execute(
        inbox,
        [
            f"CREATE OR REPLACE TRIGGER {db.MARIADB.quote(name)} AFTER {op} ON {table} FOR EACH ROW {body}"
            for name, (op, body) in triggers
        ],
    )
    return [name for name, _ in triggers]


def _mariadb_triggers(task: TaskSpec, prefix: str) -> list[tuple[str, tuple[str, str]]]:
    """``(name, (operation, body))`` of each MariaDB capture trigger of ``task``, as ``install``
    creates it and ``information_schema.triggers.action_statement`` shows it."""
    time_ending = bool(task.time and task.time.boundary == "end")
    changes = db.MARIADB.quote(f"{prefix}changes")
    out = []
    for op, rows in (("INSERT", ["NEW"]), ("UPDATE", ["OLD", "NEW"]), ("DELETE", ["OLD"])):
        values = ", ".join(_row_values(task, db.MARIADB, r, time_ending, "JSON_ARRAY") for r in rows)
        out.append(
            (_trigger_name(task, op), (op, f"INSERT INTO {changes} (task, `keys`, bin) VALUES {values}"))
        )
    return out


def _execute(inbox: Ledger, statements: Sequence[Any], task: TaskSpec | None = None) -> None:
    """Run the statements that create a task's triggers in one transaction.

    On PostgreSQL one install at a time (a transaction-level advisory lock): two at once, from
    two deploy hosts say, replaced the same function and triggers together and one of them
    failed with "tuple concurrently updated". There, under that lock, ``task``'s triggers are
    first checked not to feed another project's ledger schema.
    """
    with inbox.core.transaction() as cur:
        if inbox.dialect is db.POSTGRESQL:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('sluicegate install'))")
            if task is not None:
                assert task.capture.table
                cur.execute(_PG_TRIGGERS, (db.POSTGRESQL.quote(task.capture.table), trigger_names(task)))
                _refuse_foreign(task, {str(r[0]): str(r[1]) for r in cur.fetchall()}, inbox.schema)
        for statement in statements:
            cur.execute(statement)
