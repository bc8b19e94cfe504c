"""The PostgreSQL batch query: one statement reads every unit of a batch, per read path.

The query joins the task's select to a ``VALUES`` list of the batch's slices (their key
values and UTC windows) and also repeats the keys and the overall time range as plain
predicates, which PostgreSQL pushes down into the select so indexes are used. What each
column is read as depends on the read path (see :func:`projection`): every path sees the
same text for a value.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from . import Column, ColumnKind, Mode, ReadSpec, Slice, order_columns, times

KINDS: dict[int, ColumnKind] = {
    16: "bool",
    20: "int",
    21: "int",
    23: "int",
    700: "float",
    701: "float",
    1700: "decimal",
    25: "text",
    1043: "text",
    1042: "text",
    1114: "timestamp",
    1184: "timestamptz",
    1082: "date",
    17: "binary",
}
REAL_OID = 700


def name(column: str) -> sql.Identifier:
    """A column of the task's select as an identifier in a query that binds parameters.

    '%' is doubled, as in :func:`select_sql`: psycopg reads a '%' anywhere in the query text,
    quoted identifiers included, as the start of a placeholder (a column ``pct%d`` failed every
    batch), and binding turns '%%' back into '%'.
    """
    return sql.Identifier(column.replace("%", "%%"))


def select_sql(spec: ReadSpec) -> sql.Composable:
    """The task's select as a composable; '%' doubled so it survives parameter binding."""
    return sql.SQL(spec.select_sql.replace("%", "%%"))


def batch_query(
    spec: ReadSpec, slices: Sequence[Slice], columns: Sequence[Column], mode: Mode, *, server_text: bool,
    ordered: bool = True,
) -> tuple[sql.Composed, list[Any]]:  # fmt: skip
    """Build the one query that reads every slice of a batch, and its parameters.

    ``server_text``: the CSV comes from ``COPY`` (no ADBC), so the server formats every value.
    Not ``ordered``: without ``ORDER BY``, for a sort on the client (see client_sort).
    """
    nkeys = len(spec.keys)
    timed = spec.time_column is not None
    # Daily partitions in one fixed zone also join on the local date, an equality the planner
    # can hash: without it, a task with no other key compares every row with every window.
    by_day = spec.day_zone is not None and timed
    names = ["ord", *(f"k{i}" for i in range(nkeys))] + (["ws", "we", "zone"] if timed else [])
    by_name = {c.name: c for c in columns}
    casts = [_cast(by_name.get(k)) for k in spec.keys]
    row_sql = ["%s", *(f"%s{c}" for c in casts)]
    row_sql += ["%s::timestamptz", "%s::timestamptz", "%s::text"] if timed else []
    if by_day:
        names.append("day")
        row_sql.append("%s::date")
    values = sql.SQL(", ").join(sql.SQL("(" + ", ".join(row_sql) + ")") for _ in slices)
    params: list[Any] = []
    for idx, piece in enumerate(slices):
        params += [idx, *piece.keys]
        if timed:
            params += [piece.start, piece.end, piece.zone]
        if by_day:
            params.append(piece.day)
    on: list[sql.Composable] = [
        sql.SQL("q.{} = p.{}").format(name(k), sql.Identifier(f"k{i}")) for i, k in enumerate(spec.keys)
    ]
    where, where_params = _key_conditions(spec, slices, casts)
    if spec.time_column is not None:
        conditions, bounds = _time_conditions(spec, slices, by_day)
        on += conditions[:-2]
        where += conditions[-2:]
        where_params += bounds
    zone = sql.SQL("p.zone") if timed else sql.Literal("UTC")
    order = sql.SQL(", ").join(_order_expr(by_name[c]) for c in order_columns(spec, columns))
    query = sql.SQL(
        "SELECT p.ord, {projection} FROM ({select}) AS q "
        "JOIN (VALUES {values}) AS p({names}) ON {on} WHERE {where}{order}"
    ).format(
        projection=sql.SQL(", ").join(projection(columns, mode, zone, server_text=server_text)),
        select=select_sql(spec),
        values=values,
        names=sql.SQL(", ").join(sql.Identifier(n) for n in names),
        on=sql.SQL(" AND ").join(on) if on else sql.SQL("true"),
        where=sql.SQL(" AND ").join(where) if where else sql.SQL("true"),
        order=sql.SQL(" ORDER BY p.ord, {}").format(order) if ordered else sql.SQL(""),
    )
    return query, params + where_params


def _key_conditions(
    spec: ReadSpec, slices: Sequence[Slice], casts: Sequence[str]
) -> tuple[list[sql.Composable], list[Any]]:
    """The plain predicates on the keys (each in the batch's values), and their parameters."""
    where: list[sql.Composable] = []
    params: list[Any] = []
    for i, k in enumerate(spec.keys):
        keys = sorted({s.keys[i] for s in slices}, key=str)
        if casts[i]:  # each value cast: the ledger's text and the source's values may mix
            listed = sql.SQL(", ").join(sql.SQL("%s" + casts[i]) for _ in keys)
            where.append(sql.SQL("q.{} IN ({})").format(name(k), listed))
            params += keys
        else:
            where.append(sql.SQL("q.{} = ANY(%s)").format(name(k)))
            params.append(keys)
    return where, params


def _cast(col: Column | None) -> str:
    """The cast of a key value of ``col`` (none but for a type read as text): an entity named
    by the ledger's text is bound as text, which no operator compares with inet, an enum, a uuid
    ("operator does not exist: inet = text"). The value is cast, not the column: indexes serve."""
    if col is None or not col.as_text or col.pg_type is None:
        return ""
    return "::" + col.pg_type.replace("%", "%%")  # a '%' of a quoted name, as in name()


def _order_expr(col: Column) -> sql.Composable:
    """A column of the rows' order. Types read as text may have no ordering (json): they are
    sorted by that text. Numbers equal as numbers but not as text (-0 and 0, 1.5 and 1.50) are
    then sorted by their bytes or their scale, so the same rows always come in one order and give
    one file (cheaper than sorting by their text: a third more sort time rather than half more)."""
    c = name(col.name)
    if col.as_text:
        return sql.SQL("q.{}::text").format(c)
    if col.kind == "float":
        send = "float4send" if col.precision == 24 else "float8send"
        return sql.SQL("q.{c}, " + send + "(q.{c})").format(c=c)
    if col.kind == "decimal":
        return sql.SQL("q.{c}, scale(q.{c})").format(c=c)
    return sql.SQL("q.{}").format(c)


def inline(conn: psycopg.Connection[Any], query: sql.Composed, params: Sequence[Any]) -> str:
    """``query`` with ``params`` bound as literals, as ``ClientCursor.mogrify`` binds them, for
    drivers that take no parameters (ADBC).

    A batch's ~3,000 parameters repeat (a day's windows, zones and dates are shared by all its
    locations), so each distinct value is adapted once: a few ms a batch instead of mogrify's 10.
    """
    cursor = psycopg.ClientCursor(conn)
    cache: dict[tuple[type, str], str] = {}
    literals = []
    for value in params:
        if type(value) is int and 0 <= value < 1 << 63:
            literals.append(str(value))  # what mogrify writes for a non-negative int8
            continue
        if type(value) not in _CACHED:  # a list, or a type whose repr may not tell its values apart
            literals.append(cursor.mogrify("%s", [value]))
            continue
        # By repr, not by equality: 0.0 == -0.0, Decimal("1.5") == Decimal("1.50"), and equal
        # instants in two zones or folds are equal, yet each has its own literal.
        key = (type(value), repr(value))
        literal = cache.get(key)
        if literal is None:
            literal = cache[key] = cursor.mogrify("%s", [value])
        literals.append(literal)
    try:
        return query.as_string(conn) % tuple(literals)
    except (TypeError, ValueError):  # a '%' psycopg reads differently: let it bind (or refuse) as before
        return cursor.mogrify(query, params)


# The types whose repr tells apart every literal psycopg writes for them (see inline).
_CACHED = {str, int, float, bool, decimal.Decimal, dt.date, dt.datetime, dt.time, uuid.UUID, bytes}


def _time_conditions(
    spec: ReadSpec, slices: Sequence[Slice], by_day: bool
) -> tuple[list[sql.Composable], list[Any]]:
    """The window join conditions, then the two overall range predicates and their bounds."""
    assert spec.time_column is not None
    t = name(spec.time_column)
    lo, hi = (">", "<=") if spec.time_ending else (">=", "<")
    conditions: list[sql.Composable] = [
        sql.SQL("q.{} " + lo + " p.ws").format(t),
        sql.SQL("q.{} " + hi + " p.we").format(t),
    ]
    if by_day:
        # (start, end] windows: an instant at midnight belongs to the day before.
        shift = sql.SQL(" - interval '1 microsecond'" if spec.time_ending else "")
        conditions.append(
            sql.SQL("((q.{}{}) AT TIME ZONE {})::date = p.day").format(t, shift, sql.Literal(spec.day_zone))
        )
    conditions += [sql.SQL("q.{} " + lo + " %s").format(t), sql.SQL("q.{} " + hi + " %s").format(t)]
    bounds = [min(s.start for s in slices if s.start), max(s.end for s in slices if s.end)]
    return conditions, bounds


def column_of(desc: Any, types: Mapping[int, str] | None = None) -> Column:
    """The column of a result description: its kind, and how the read paths carry it; ``types``:
    the names of the types read as text, by oid, which their key values are cast to."""
    kind = KINDS.get(desc.type_code)
    if kind is None:  # json, uuid, interval, arrays, ...: the server's text
        pg_type = (types or {}).get(desc.type_code)
        return Column(name=desc.name, kind="text", as_text=True, pg_type=pg_type)
    precision = 24 if desc.type_code == REAL_OID else desc.precision
    return Column(name=desc.name, kind=kind, precision=precision, scale=desc.scale)


def projection(
    columns: Sequence[Column], mode: Mode, zone: sql.Composable, *, server_text: bool
) -> list[sql.Composable]:
    """The batch query's select list after ``p.ord``, per read path."""
    if mode == "csv" and server_text:  # COPY formats every value on the server
        return [_csv_expr(c, zone) for c in columns]
    if mode == "csv":
        floats = [c for c in columns if c.kind == "float"]
        return [_arrow_csv_expr(c) for c in columns] + [_float_text_expr(c) for c in floats]
    if mode == "rows":  # psycopg would refuse a time outside years 1 to 9999 without naming it
        return [_checked_expr(c) for c in columns]
    return [typed_expr(c) for c in columns]  # ADBC: sources.times checks each Arrow batch


def _checked_expr(col: Column) -> sql.Composable:
    """:func:`typed_expr`, with dates and timestamps outside years 1 to 9999 (UTC) refused by name."""
    c = _ref(col)
    if col.kind == "timestamptz":
        return times.guard(col, sql.SQL("({} AT TIME ZONE 'UTC')").format(c), c, "timestamptz")
    if col.kind in ("timestamp", "date"):
        return times.guard(col, c, c, col.kind)
    return typed_expr(col)


def _ref(col: Column) -> sql.Composable:
    return sql.SQL("q.{}").format(name(col.name))


def typed_expr(col: Column) -> sql.Composable:
    """Arrow batches and psycopg rows (Parquet): decimals and text-only types as the server's text.

    A ``real`` is widened to ``double precision`` on the server (exactly), so both paths get the
    same double: psycopg would read the real's shortest text (``0.1``) as the nearest double,
    ADBC the single-precision value itself (``0.10000000149011612``).
    """
    c = _ref(col)
    if col.kind == "decimal" or col.as_text:
        return sql.SQL("{}::text").format(c)
    if col.kind == "float" and col.precision == 24:
        return sql.SQL("{}::float8").format(c)
    return c


def _arrow_csv_expr(col: Column) -> sql.Composable:
    """Arrow batches encoded by Arrow's CSV writer: what it cannot write as we do comes as text."""
    if col.kind == "binary":
        return _hex_expr(_ref(col))
    if col.kind == "decimal" or col.as_text:
        return sql.SQL("{}::text").format(_ref(col))
    return _ref(col)


def _float_text_expr(col: Column) -> sql.Composable:
    """The server's text for a float whose text Arrow would spell differently, else NULL.

    Arrow and PostgreSQL write the same shortest digits, both in plain notation, for magnitudes
    from 1e-4 below 1e10 (``real``: 1e6) and for zero; outside that (exponents, NaN, Infinity)
    the spelling differs, and this column carries PostgreSQL's.
    """
    c = _ref(col)
    high = sql.SQL("1e6" if col.precision == 24 else "1e10")
    return sql.SQL(
        "CASE WHEN (abs({c}) >= 1e-4 AND abs({c}) < {high}) OR {c} = 0 THEN NULL ELSE {c}::text END"
    ).format(c=c, high=high)


def _hex_expr(c: sql.Composable) -> sql.Composable:
    """``bytea`` as PostgreSQL's hex output, ``\\x`` and lowercase hex, whatever ``bytea_output``."""
    return sql.SQL("E'\\\\x' || encode({}, 'hex')").format(c)


def _csv_expr(col: Column, zone: sql.Composable) -> sql.Composable:
    """Server-side text for one column in our CSV dialect (ISO 8601 times with offset)."""
    c = _ref(col)
    if col.kind == "timestamptz":
        local = sql.SQL("({} AT TIME ZONE {})").format(c, zone)
        return times.guard(col, local, _timestamptz_text(c, zone))
    if col.kind == "timestamp":
        return times.guard(col, c, _timestamp_text(c))
    if col.kind == "date":
        return times.guard(col, c, sql.SQL("{}::text").format(c))
    if col.kind == "bool":
        return sql.SQL("CASE WHEN {c} THEN 'true' WHEN NOT {c} THEN 'false' END").format(c=c)
    if col.kind == "binary":
        return _hex_expr(c)
    if col.as_text:  # the cast's text, as the other paths read it (inet: 10.0.0.1/32, not 10.0.0.1)
        return sql.SQL("{}::text").format(c)
    return c


def _timestamptz_text(c: sql.Composable, zone: sql.Composable) -> sql.Composable:
    """ISO 8601 text of a timestamptz in ``zone``, with its own offset."""
    off = sql.SQL("extract(epoch FROM ({c} AT TIME ZONE {z}) - ({c} AT TIME ZONE 'UTC'))::int").format(
        c=c, z=zone
    )
    # The offset of each value's own instant in the zone, with seconds only when it has them
    # (local mean time before standard zones), as Python's isoformat() writes it.
    return sql.SQL(
        "to_char({c} AT TIME ZONE {z}, 'YYYY-MM-DD\"T\"HH24:MI:SS')"
        " || CASE WHEN date_trunc('second', {c}) = {c} THEN '' ELSE to_char({c}, '.US') END"
        " || CASE WHEN {off} < 0 THEN '-' ELSE '+' END"
        " || to_char(abs({off}) / 3600, 'FM00') || ':' || to_char(mod(abs({off}), 3600) / 60, 'FM00')"
        " || CASE WHEN mod(abs({off}), 60) = 0 THEN ''"
        " ELSE ':' || to_char(mod(abs({off}), 60), 'FM00') END"
    ).format(c=c, off=off, z=zone)


def _timestamp_text(c: sql.Composable) -> sql.Composable:
    return sql.SQL(
        "to_char({c}, 'YYYY-MM-DD\"T\"HH24:MI:SS')"
        " || CASE WHEN date_trunc('second', {c}) = {c} THEN '' ELSE to_char({c}, '.US') END"
    ).format(c=c)
