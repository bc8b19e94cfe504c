"""Checks of an aggregate task: does the select read the window (``in_window`` as code, in the
source database's dialect), do its columns fit the table sink, can SQLite read the window
column's values as times, and does ``keep`` cover a window."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import db, tables, validate
from ..exceptions import ConfigError, DataError
from .aggregate_file import Names, result_kinds

if TYPE_CHECKING:
    from .aggregate import Task

IN_WINDOW = "in_window"
WINDOW_ALIAS = "sluicegate_window"  # the window table in the in_window CTE
DEFAULT_EVALUATION_COLUMN = "evaluation_time_utc"
KEEP = 30 * 86400.0  # evaluations of ticks older than this are forgotten, by default
# What is not SQL code, per dialect: comments and string literals, left out when looking for
# in_window ("-- in_window" passed, and each window aggregated the whole table). ('' is a quote
# inside a string everywhere; MariaDB also escapes with a backslash, and without ANSI_QUOTES a
# double-quoted text is a string; PostgreSQL has $$ ... $$ and $tag$ ... $tag$ strings, and
# E'...' with backslash escapes.) A quoted name ("driver's count", `a--b`) is matched first and
# kept (group "name"): its ' or -- starts nothing.
_BLOCK = r"/\*.*?(?:\*/|$)"
_QUOTED = r'(?P<name>"(?:[^"]|"")*"|`(?:[^`]|``)*`)'
_NOT_CODE = {
    "sqlite": re.compile(rf"{_QUOTED}|--[^\n]*|{_BLOCK}|'(?:[^']|'')*(?:'|$)", re.DOTALL),
    "postgresql": re.compile(
        rf"{_QUOTED}|--[^\n]*|{_BLOCK}|(?<![\w$])[Ee]'(?:[^'\\]|\\.|'')*(?:'|$)|'(?:[^']|'')*(?:'|$)"
        r"|(?<![\w$])\$([A-Za-z_]\w*|)\$.*?(?:\$\2\$|$)",
        re.DOTALL,
    ),
    "mariadb": re.compile(
        r"(?P<name>`(?:[^`]|``)*`)"
        rf"|(?:--(?=\s|$)|#)[^\n]*|{_BLOCK}|'(?:[^'\\]|\\.|'')*(?:'|$)|\"(?:[^\"\\]|\\.|\"\")*(?:\"|$)",
        re.DOTALL,
    ),
}
# in_window as a name read, not one given (SELECT count(*) AS in_window FROM raw reads no window,
# nor does FROM raw AS in_window), nor a qualifier (in_window.city, that alias's column).
_NAMED_WINDOW = re.compile(rf"(\bAS\s+[\"`\[]?)?\b{IN_WINDOW}\b(?![\"`\]]?\s*\.)", re.IGNORECASE)


def _code(select_sql: str, flavor: tables.Flavor) -> str:
    """The select's code: its comments and strings blanked (a quoted name kept as its name)."""
    return _NOT_CODE[flavor].sub(lambda m: m["name"] or " ", select_sql)


def _names(code: str, column: str) -> bool:
    """Whether casefolded ``code`` names ``column`` (a whole word)."""
    return re.search(rf"(?<![\w$]){re.escape(column.casefold())}(?![\w$])", code) is not None


def reads_window(select_sql: str, flavor: tables.Flavor) -> bool:
    """Whether the select names ``in_window`` in its code (not in a comment or a string, not as a
    name it gives with ``AS``, not as the qualifier of a column)."""
    code = _code(select_sql, flavor)
    return any(match.group(1) is None for match in _NAMED_WINDOW.finditer(code))


def column_clash(task: Task, names: Sequence[str]) -> str | None:
    """The problem of a select that returns two columns of one name, or the column sluicegate adds
    (the evaluation time), in any case: SQLite took the first of two columns an INSERT named
    alike, so the select's value stood in for the other (or for the tick), silently. Or of an
    upsert key the select does not return."""
    folded = [n.casefold() for n in names]
    if twice := next((n for i, n in enumerate(names) if folded.index(folded[i]) != i), None):
        return (
            f"{task.folder / 'select.sql'} returns two columns named {twice} (in any case), and a table "
            "holds one; name each column once (AS another_name)"
        )
    same = [n for n in names if n.casefold() == task.evaluation_column.casefold()]
    if not same:
        return _missing_key(task, names)
    if task.evaluation_column == DEFAULT_EVALUATION_COLUMN:
        return (
            f"{task.folder / 'select.sql'} returns a column {same[0]}, which sluicegate adds "
            "(the evaluation time); remove it from the select, or name the added column otherwise with "
            "evaluation_column in task.toml"
        )
    return (
        f"{task.folder / 'task.toml'} evaluation_column: {task.evaluation_column!r} is a column select.sql "
        "returns, and sluicegate adds it (the evaluation time); choose a name the select does not return"
    )


def _missing_key(task: Task, names: Sequence[str]) -> str | None:
    """An upsert key that is no column of the select nor the evaluation column: check said ok, and
    each evaluation ended in ValueError's traceback, its claim left running."""
    missing = [k for k in task.target.key if k not in {*names, task.evaluation_column}]
    if not missing:
        return None
    return (
        f"{task.folder / 'task.toml'} [destination] key: {missing[0]} is not a column select.sql returns "
        f"({', '.join(names)}); name the key's columns as the select does"
    )


def unreadable_times(source: tables.TableDb, task: Task) -> str | None:
    """The problem of a window column whose values no window holds: on SQLite one ``julianday()``
    cannot read, on MariaDB a number column. (PostgreSQL refuses to compare a number or text
    with the window's times.)"""
    if source.flavor == "mariadb":
        return _mariadb_numbers(source, task)
    return _sqlite_unreadable(source, task) if source.flavor == "sqlite" else None


def _sqlite_unreadable(source: tables.TableDb, task: Task) -> str | None:
    """SQLite: the problem of a window column holding a value ``julianday()`` cannot read (Unix
    seconds such as 1710072000, text that is no ISO 8601 time), which no window holds: with Unix
    seconds in every row each evaluation found no row and emptied the readers' table. One row is
    looked for, through the index on ``julianday(column)`` when there is one."""
    col = tables.quote("sqlite", task.window_column)
    _, rows = source.query(
        f"SELECT {col}, typeof({col}) FROM {tables.quote('sqlite', task.window_table)}"
        f" WHERE julianday({col}) IS NULL AND {col} IS NOT NULL LIMIT 1"
    )
    if not rows:
        return None
    value, kind = rows[0]
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    table, column = task.window_table, task.window_column
    return (
        f"{task.folder / 'task.toml'} [window] column: {table}.{column} holds {shown} ({kind}), which "
        "SQLite's julianday() cannot read as a time, so no window would hold that row; store ISO 8601 "
        f"text such as 2024-03-10T12:00:00Z (Unix seconds: UPDATE {table} SET {column} = datetime({column}, "
        f"'unixepoch') WHERE julianday({column}) IS NULL AND datetime({column}, 'unixepoch') IS NOT NULL)"
    )


def window_bound(task: Task, flavor: tables.Flavor) -> str:
    """The condition on a row of the window table (as ``sluicegate_window``) that it is in the
    window; two placeholders: start, end."""
    mark = "%s" if flavor == "postgresql" else "?"
    # Qualified: SQLite reads an unqualified double-quoted name that is no column as a string, so a
    # misspelt column put no row in any window and each evaluation emptied the readers' table.
    col = f"{WINDOW_ALIAS}.{tables.quote(flavor, task.window_column)}"
    if flavor == "sqlite":  # times are text there: compare them as times, never as strings
        return f"julianday({col}) >= julianday({mark}) AND julianday({col}) < julianday({mark})"
    return f"{col} >= {mark} AND {col} < {mark}"


def window_query(
    source: tables.TableDb, task: Task, sql: str, bounds: Sequence[Any], window: tuple[Any, Any] | None
) -> tuple[Names, list[tuple[Any, ...]]]:
    """Run the evaluation's ``sql``; a DataError of the select names select.sql and the ``window``
    (PostgreSQL's "rejected a value: value out of range: overflow", of avg over 1e308 and 1e308,
    read as the table refusing a row)."""
    try:
        names, rows = source.query(sql, bounds)
        return Names(names, result_kinds(source)), rows
    except DataError as exc:
        if window is None:
            raise
        start, end = (t.isoformat() for t in window)
        raise DataError(f"{task.folder / 'select.sql'} failed on the window [{start}, {end}): {exc}") from (
            exc.__cause__
        )


def sqlite_text_numbers(source: tables.TableDb, task: Task, bounds: Sequence[Any]) -> str | None:
    """SQLite: the problem of a row in the window (``bounds``) whose INTEGER or REAL
    column, named in select.sql, holds text (or a blob) SQLite could not read as a number, such as
    ``'abc'``. Its arithmetic reads that as 0: avg('abc', 10) was 5, a wrong value in the table.
    A column select.sql tests with ``typeof()`` is its author's to sort: the problem advises
    skipping the text so, and the scan, which reads the table and not the select, failed such a
    select for ever."""
    affinities = source.sqlite_affinities(task.window_table)
    code = _code(task.select_sql, "sqlite").casefold()
    numbers = [
        c for c, a in affinities.items() if a in ("INTEGER", "REAL") and c != task.window_column
        and _names(code, c) and not _typeof(c, code)
    ]  # fmt: skip
    if not numbers:
        return None
    cols = [tables.quote("sqlite", c) for c in numbers]
    time_col = tables.quote("sqlite", task.window_column)
    text = " OR ".join(f"typeof({c}) IN ({_NOT_NUMBER})" for c in cols)
    _, rows = source.query(
        f"SELECT {time_col}, {', '.join(cols)} FROM {tables.quote('sqlite', task.window_table)} AS "
        f"{WINDOW_ALIAS} WHERE {window_bound(task, 'sqlite')} AND ({text}) LIMIT 1",
        bounds,
    )
    if not rows:
        return None
    at, *values = rows[0]
    column, value = next((c, v) for c, v in zip(numbers, values, strict=True) if isinstance(v, str | bytes))
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    table, q = task.window_table, tables.quote("sqlite", column)
    kind = "a blob" if isinstance(value, bytes) else "text"
    return (
        f"{table}.{column} holds {shown} ({kind}) in the row of {task.window_column} = {at}, which SQLite's "
        f"arithmetic would read as 0, so the aggregate would be wrong; make it NULL or a number (UPDATE "
        f"{table} SET {q} = NULL WHERE typeof({q}) IN ({_NOT_NUMBER})), or skip it in select.sql "
        f"(WHERE typeof({q}) IN ('integer', 'real'))"
    )


def sqlite_infinity(
    source: tables.TableDb,
    task: Task,
    bounds: Sequence[Any],
    names: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> str | None:
    """SQLite: the problem of a result column that is infinite though no value of the window's
    rows that select.sql names is: SQLite's sum and avg go past the largest double (1.7e308 and
    1.7e308) to Infinity with no error, where PostgreSQL and MariaDB fail the select."""
    at = next((i for row in rows for i, v in enumerate(row) if isinstance(v, float) and math.isinf(v)), None)
    if at is None or source.flavor != "sqlite":
        return None
    code = _code(task.select_sql, "sqlite").casefold()
    if any(math.isinf(float(m[0])) for m in _NUMBER.finditer(code)):
        return None  # Infinity asked for in so many words (9e999: "no upper limit"), not a sum's
    columns = source.sqlite_affinities(task.window_table)
    named = [tables.quote("sqlite", c) for c in columns if _names(code, c)]
    if named:
        infinite = " OR ".join(f"{c} IN (9e999, -9e999)" for c in named)
        _, found = source.query(
            f"SELECT 1 FROM {tables.quote('sqlite', task.window_table)} AS {WINDOW_ALIAS} "
            f"WHERE {window_bound(task, 'sqlite')} AND ({infinite}) LIMIT 1",
            bounds,
        )
        if found:
            return None  # an infinite value averaged is infinite
    start, end = (tables.parse_time(b).isoformat() for b in bounds)  # type: ignore[union-attr]
    return (
        f"{task.folder / 'select.sql'} on the window [{start}, {end}): column {names[at]!r} is "
        f"Infinity, though no value of {task.window_table} it read is: SQLite's sum or avg went past the "
        f"largest double (about 1.8e308) without an error, so the value would be wrong; sum smaller "
        f"numbers in select.sql (e.g. avg(x / 1e10) * 1e10) or leave the out-of-range rows out"
    )


# A number literal, as SQLite reads it: 9e999 (or 400 digits) is Infinity.
_NUMBER = re.compile(r"(?<![\w$.])(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?(?![\w$.])")

_NOT_NUMBER = "'text', 'blob'"


def _typeof(column: str, code: str) -> bool:
    """Whether select.sql's ``code`` (casefolded) tests ``column``'s type: ``typeof(col)``,
    ``typeof("col")``, ``typeof(t.col)``."""
    name = rf"[\"`\[]?{re.escape(column.casefold())}[\"`\]]?"
    return re.search(rf"(?<![\w$])typeof\s*\(\s*(?:[\w$\"`\[\]]+\s*\.\s*)?{name}\s*\)", code) is not None


def _mariadb_numbers(source: tables.TableDb, task: Task) -> str | None:
    """MariaDB: the problem of a window column of a number type (Unix seconds), which MariaDB
    compares with the window's DATETIME bounds as numbers (1710072000 < 20240310120000): each
    evaluation found no row and emptied the readers' table."""
    schema, _, name = task.window_table.rpartition(".")
    _, rows = source.query(
        "SELECT data_type FROM information_schema.columns"
        " WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ? AND column_name = ?",
        (schema or None, name, task.window_column),
    )
    kind = str(rows[0][0]).lower() if rows else ""
    if kind not in _MARIADB_NUMBERS:
        return None
    table, column = task.window_table, task.window_column
    return (
        f"{task.folder / 'task.toml'} [window] column: {table}.{column} is a {kind.upper()} column, which "
        "MariaDB compares with the window's times as numbers, so no window would hold a row; make it a "
        f"DATETIME of UTC times (Unix seconds: FROM_UNIXTIME({column}) in a session with time_zone = "
        "'+00:00'), or point [window] table at a view that converts it"
    )


_MARIADB_NUMBERS = frozenset(
    {"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "decimal", "numeric", "float",
     "double", "real", "bit", "year"}
)  # fmt: skip


def keep_seconds(raw: Mapping[str, Any], where: str, *, width: float, gap: float | None) -> float:
    """``keep`` in seconds: by default 30 days or the longest window, if longer; refused when
    shorter than the window, or with ``width = "schedule"`` and a cron schedule (``gap``, its
    longest gap between two ticks) than that gap: a monthly schedule's 31 days."""
    keep = validate.parse_duration(raw.get("keep", max(KEEP, width, gap or 0.0)), where=f"{where} keep")
    if gap is not None and keep < gap:
        raise ConfigError(
            f"{where} keep: {raw['keep']!r} is shorter than the longest gap between two ticks of schedule "
            f'{raw["schedule"]!r} (a window with width = "schedule"); keep at least {_spelt(gap)!r}'
        )
    if keep < width:
        width_text = raw["window"]["width"]
        raise ConfigError(
            f"{where} keep: {raw['keep']!r} is shorter than the window; keep at least {width_text!r}"
        )
    return keep


def _spelt(seconds: float) -> str:
    """A whole number of seconds as a duration: "31d", "25h", "90m" or "45s"."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def shared_tables(tasks: Sequence[Task]) -> dict[str, str]:
    """Per aggregate task name, the problem of a table another aggregate task writes too, where
    either replaces its rows: each evaluation of one removed the other's rows (readers saw the two
    tasks' results by turns)."""
    problems: dict[str, str] = {}
    for i, task in enumerate(tasks):
        for other in tasks[i + 1 :]:
            a, b = task.target, other.target
            fold = (lambda name: name) if tables.flavor_of(a.url) == "postgresql" else str.casefold
            if "replace" not in (a.mode, b.mode) or fold(a.table) != fold(b.table):
                continue
            if db.same_database(a.url, b.url):
                for one, two in ((task, other), (other, task)):
                    problems.setdefault(
                        one.name,
                        f"{one.folder / 'task.toml'} [destination]: task {two.name} also writes "
                        f'{a.display}, and mode = "replace" makes the table one task\'s rows, so each '
                        "evaluation of one removes the other's; give each task its own table (or both "
                        'mode = "upsert", with keys whose rows differ)',
                    )
    return problems
