"""Aggregate tasks: a SQL aggregate over a sliding window, evaluated per tick into a table.

Every tick ``t`` (``every = "5m"``, or a cron ``schedule``) the task's ``select.sql`` runs over
the rows of ``[window] table`` whose ``[window] column`` lies in ``[t - width, t)``: sluicegate
writes that bound, as a common table expression named ``in_window`` that the select reads
from, so the window is bounded on both sides and compared as a time on every database (on
SQLite through ``julianday``). Each result row gets ``t`` in the ``evaluation_column``, and the
rows go to the task's table sink (:mod:`sluicegate.tables`; ``replace`` by default, so readers
see one whole evaluation or the next), and, when the task has a ``path``, to a file.

Ticks are claimed on the ledger (:class:`~sluicegate.ledger.aggregates.AggregateStore`), so two
workers never evaluate the same tick; a run evaluates only the latest due tick, so ticks
missed while no worker ran are not replayed. Each evaluation is recorded with its window,
rows, duration and error; when the table lives in the ledger database the record commits in
the table's transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import db, tabledb, tables, validate
from ..exceptions import ConfigError, DataError, LedgerError, SluicegateError, SourceLost
from ..ledger import Ledger
from ..options import Budget, RunOptions, TaskSummary
from ..schedules import due_tick, latest_tick, longest_gap
from ..source_outage import SourceOutage, read_lost
from ..sources import Source
from ..specs import Settings, TaskBase
from ..taskfields import BASE_KEYS, base_fields
from ..work import Deadline
from . import Context, Progress
from .aggregate_check import (
    DEFAULT_EVALUATION_COLUMN,
    IN_WINDOW,
    KEEP,
    WINDOW_ALIAS,
    column_clash,
    keep_seconds,
    reads_window,
    sqlite_infinity,
    sqlite_text_numbers,
    unreadable_times,
    window_bound,
    window_query,
)
from .aggregate_file import Names, check_file, write_file
from .helpers import wait_for_source

UTC = dt.UTC
KEYS = BASE_KEYS | {"every", "window", "destination", "evaluation_column", "lease", "keep"}
WINDOW_KEYS = frozenset({"table", "column", "width"})
DEFAULT_PATH = "{task}/{t:%Y/%m/%d/%H%M%S}.{ext}"
MAX_DELAY = 3600.0  # a failed tick is retried after backoff, doubling per attempt, up to this
# The select's own WITH, after any blank space and comments (-- to the line end, /* ... */).
_LEADING_WITH = re.compile(
    r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*WITH(\s+RECURSIVE)?\s+", re.IGNORECASE | re.DOTALL
)


@dataclass(frozen=True, kw_only=True)
class Task(TaskBase):
    """A windowed aggregate evaluated per tick into a table (and optionally a file)."""

    kind = "aggregate"
    window_table: str
    window_column: str
    width: float
    every: float | None
    target: tables.TableTarget
    evaluation_column: str = DEFAULT_EVALUATION_COLUMN
    file: bool = False
    lease: float = 600.0
    keep: float = KEEP  # evaluations of older ticks are forgotten (the table holds the latest)
    since_previous_tick: bool = False  # width = "schedule": [the cron schedule's previous tick, tick)

    def window(self, tick: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        """The window of ``tick``: ``[tick - width, tick)``, or from the schedule's previous tick
        (a daily schedule's local day: 23 or 25 hours when the clocks change)."""
        if self.since_previous_tick and self.schedule:
            return latest_tick(self.schedule, self.schedule_zone, tick - dt.timedelta(microseconds=1)), tick
        return tick - dt.timedelta(seconds=self.width), tick


def load(*, name: str, folder: Path, raw: Mapping[str, Any], settings: Settings) -> Task:
    """Read an aggregate task's ``task.toml``: ``every`` or ``schedule``, ``[window]``, ``[destination]``."""
    where = str(folder / "task.toml")
    validate.reject_unknown(raw, KEYS, where)
    window = raw.get("window")
    if not isinstance(window, dict):
        raise ConfigError(
            f'{where} [window]: missing; give table, column and width, e.g. table = "raw", '
            'column = "measurement_time_utc", width = "3h"'
        )
    validate.reject_unknown(window, WINDOW_KEYS, f"{where} [window]")
    for key in sorted(WINDOW_KEYS - set(window)):
        raise ConfigError(f"{where} [window] {key}: missing; the window needs table, column and width")
    every = _every(raw, where)
    width = _width(window["width"], every, raw.get("schedule"), where)
    fields = base_fields(name=name, folder=folder, raw=raw, settings=settings, default_path=DEFAULT_PATH)
    since_previous_tick = window["width"] == "schedule" and every is None  # a window: the gap before its tick
    now = dt.datetime.now(UTC)
    gap = _schedule_gap(raw, fields, now, where) if since_previous_tick else None
    task = Task(
        **fields,
        window_table=validate.table_name(window["table"], f"{where} [window] table"),
        window_column=validate.identifier(window["column"], f"{where} [window] column"),
        width=width,
        every=every,
        target=tables.load_target(
            raw.get("destination"),
            f"{where} [destination]",
            default_url=settings.source_url,
            root=settings.root,
        ),
        evaluation_column=validate.identifier(
            raw.get("evaluation_column", DEFAULT_EVALUATION_COLUMN), f"{where} evaluation_column"
        ),
        file="path" in raw,
        lease=validate.lease(raw.get("lease", settings.lease), f"{where} lease"),
        keep=keep_seconds(raw, where, width=width, gap=gap),
        since_previous_tick=since_previous_tick,
    )
    if every is None and task.schedule is None:
        raise ConfigError(
            f'{where}: give every = "5m" (or a cron schedule) for when the aggregate is evaluated'
        )
    if not reads_window(task.select_sql, tables.flavor_of(settings.source_url, "[source] url")):
        raise ConfigError(
            f"{folder / 'select.sql'}: the select does not read {IN_WINDOW}, so the window bounds nothing; "
            f"read the rows of {task.window_table} in the window as FROM {IN_WINDOW}"
        )
    check_file(task, raw, where)
    return task


def _width(value: Any, every: float | None, schedule: Any, where: str) -> float:
    """``[window] width`` in seconds. ``"schedule"`` is the time since the previous tick: ``every``,
    or for a cron schedule 0 here (``Task.window`` asks the schedule; ``keep`` is not checked)."""
    if value == "schedule":
        if every is not None:
            return every
        if not isinstance(schedule, str):
            raise ConfigError(f'{where} [window] width: "schedule" needs every or a cron schedule')
        return 0.0
    width = validate.parse_duration(value, where=f"{where} [window] width")
    if width <= 0:
        raise ConfigError(f'{where} [window] width: must be longer than 0, e.g. "3h" or "schedule"')
    if not width.is_integer():  # windows are read in whole seconds: they would overlap or leave gaps
        raise ConfigError(f'{where} [window] width: {value!r} is not whole seconds; use e.g. "3h"')
    return width


def _schedule_gap(raw: Mapping[str, Any], fields: Mapping[str, Any], now: dt.datetime, where: str) -> float:
    """A cron schedule's longest gap between ticks when longer than ``keep`` (30 days unless set)."""
    keep = validate.parse_duration(raw.get("keep", KEEP), where=f"{where} keep")
    return longest_gap(fields["schedule"], fields["schedule_zone"], now, beyond=keep)


def _every(raw: Mapping[str, Any], where: str) -> float | None:
    if "every" not in raw:
        return None
    if "schedule" in raw:
        raise ConfigError(f"{where}: give every or schedule, not both")
    every = validate.parse_duration(raw["every"], where=f"{where} every")
    if every < 1:
        raise ConfigError(f'{where} every: {raw["every"]!r} is too short; use at least "1s"')
    if not every.is_integer():  # windows are read in whole seconds: they would overlap
        raise ConfigError(f'{where} every: {raw["every"]!r} is not whole seconds; use e.g. "2s"')
    return every


def evaluation_sql(task: Task, flavor: tables.Flavor) -> str:
    """The select with the window as a CTE ``in_window`` before it; two placeholders: start, end."""
    table = tables.quote(flavor, task.window_table)
    cte = f"{IN_WINDOW} AS (SELECT * FROM {table} AS {WINDOW_ALIAS} WHERE {window_bound(task, flavor)})"
    # psycopg reads % as the start of a placeholder once there are parameters; the select has none.
    select = task.select_sql.replace("%", "%%") if flavor == "postgresql" else task.select_sql
    match = _LEADING_WITH.match(select)
    if match:
        return f"WITH{match.group(1) or ''} {cte},\n{select[match.end() :]}"
    return f"WITH {cte}\n{select}"


@dataclass(kw_only=True)
class Evaluation:
    """What one evaluation did (an entry of the run summary's ``aggregate`` list)."""

    tick: dt.datetime
    window_start: dt.datetime
    window_end: dt.datetime
    state: str  # done, superseded, failed, lost (given back), skipped (another worker's, or done)
    rows: int = 0
    seconds: float = 0.0
    path: str | None = None
    bytes: int = 0  # the file's, when the task writes one
    table: str = ""
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in vars(self).items()}


def evaluate(context: Context, task: Task, tick: dt.datetime, *, give_back: bool = False) -> Evaluation:
    """Claim ``tick`` of ``task`` and evaluate it: query, file (if any), table; record the outcome.
    ``give_back``: a select that loses the source gives the tick back, no attempt counted (lost)."""
    store = context.ledger.aggregates
    start, end = task.window(tick)
    result = Evaluation(
        tick=tick, window_start=start, window_end=end, state="skipped", table=task.target.display
    )
    token = str(uuid.uuid4())
    attempt = store.claim(task.name, tick, (start, end), token=token, lease=task.lease)
    if attempt is None:
        return result
    started, read = time.monotonic(), False
    try:
        columns, rows = evaluation_rows(context.project.settings.source_url, task, tick)
        read, result.rows = True, len(rows)
        cells = _table_rows(task, columns, rows)  # a value the table cannot hold: no file either
        if task.file:
            result.path, result.bytes = write_file(context, task, tick, columns, rows)
        result.state = _write_table(context, task, tick, token, columns, cells, result, started)
    except SluicegateError as exc:
        result.state, result.error = "failed", str(exc)
        result.seconds = time.monotonic() - started
        if isinstance(exc, LedgerError):
            raise
        if give_back and not read and isinstance(exc, SourceLost):  # no fault of the tick
            result.state = "lost"
            store.release(task.name, tick, token, error=str(exc), seconds=result.seconds)
            return result
        delay = min(context.project.settings.backoff * 2 ** (attempt - 1), MAX_DELAY)
        store.fail(task.name, tick, token, error=str(exc), seconds=result.seconds, delay=delay)
    return result


def evaluation_rows(url: str, task: Task, tick: dt.datetime) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run the evaluation's select of ``tick`` on the database at ``url``; return the column names
    and the rows, the tick added to each."""
    try:
        names, rows = _select(url, task, tick)
    except SluicegateError as exc:
        raise read_lost(exc) from exc.__cause__  # the driver error
    if (clash := column_clash(task, names)) is not None:
        raise DataError(clash)
    return names.plus(task.evaluation_column, "timestamptz"), [(*row, tick) for row in rows]


def _select(
    url: str, task: Task, tick: dt.datetime, *, forms: bool = True
) -> tuple[Names, list[tuple[Any, ...]]]:
    source = tables.TableDb(url)
    if source.flavor == "postgresql":  # json values as their text: psycopg cannot send a dict back
        from psycopg.types.string import TextLoader

        for name in ("json", "jsonb"):
            source.conn.adapters.register_loader(name, TextLoader)
        tabledb.read_times_leniently(source.conn)  # 'infinity' failed naming no column
    try:
        if forms and (problem := unreadable_times(source, task)):
            raise DataError(problem)
        start, end = task.window(tick)
        bounds = [tables.time_value(source.flavor, t, whole_seconds=True) for t in (start, end)]
        if forms and source.flavor == "sqlite" and (problem := sqlite_text_numbers(source, task, bounds)):
            raise DataError(problem)  # text in a number column: SQLite's avg read it as 0
        window = (start, end) if forms else None  # check names select.sql in its own words
        names, rows = window_query(source, task, evaluation_sql(task, source.flavor), bounds, window)
        tabledb.check_readable(names, rows)
        if forms and (problem := sqlite_infinity(source, task, bounds, names, rows)):
            raise DataError(problem)  # SQLite's sum past the largest double: Infinity, no error
        return names, rows
    finally:
        source.close()


def _write_table(
    context: Context,
    task: Task,
    tick: dt.datetime,
    token: str,
    columns: list[str],
    rows: list[tuple[Any, ...]],
    result: Evaluation,
    started: float,
) -> str:
    """Write the rows (:func:`_table_rows`) into the table sink and record the evaluation: in one
    transaction when the table is in the ledger database, else right after (the claim checked
    just before)."""
    store = context.ledger.aggregates
    shared = db.same_database(task.target.url, context.project.settings.ledger_url)
    recorded = False

    def before_commit(cur: Any) -> None:
        nonlocal recorded
        result.seconds = time.monotonic() - started
        # Under the table's write lock: a newer tick done (or under way) wins, though its rows may
        # be none (replace) or other keys (upsert), where the table holds no newer stamp to see.
        newer = store.newer(task.name, tick, cur=cur if shared else None)
        if newer is not None:
            raise tables.Superseded(
                f"{task.target.display}: the evaluation of {newer.isoformat()}, newer than "
                f"{tick.isoformat()}, is done or under way; kept its rows"
            )
        if shared and cur is not None:
            recorded = store.finish(
                task.name, tick, token, rows=len(rows), seconds=result.seconds, path=result.path, cur=cur
            )
            if not recorded:
                raise LedgerError(_lost(task, tick))
        elif not store.renew(task.name, tick, token, lease=task.lease):
            raise LedgerError(_lost(task, tick))

    with tables.TableSink(task.target, lease=task.lease) as sink:
        try:
            sink.write(columns, rows, stamp=(task.evaluation_column, tick), before_commit=before_commit)
        except tables.Superseded as exc:
            result.error = str(exc)
            store.finish(
                task.name, tick, token, state="superseded", rows=0, seconds=time.monotonic() - started,
                error=str(exc),
            )  # fmt: skip
            return "superseded"
    context.fault("after_aggregate_table_commit")  # the table committed; its record may not be
    if not recorded:
        store.finish(task.name, tick, token, rows=len(rows), seconds=result.seconds, path=result.path)
    store.prune(task.name, before=tick - dt.timedelta(seconds=task.keep))
    return "done"


def _table_rows(task: Task, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows (the tick last) as the table's database takes them; raises DataError for a value
    it cannot hold."""
    if (null := tables.null_key(task.target, columns, rows)) is not None:  # before the file is written
        raise DataError(null)
    flavor = tables.flavor_of(task.target.url)
    cell = _foreign_cell if flavor != "postgresql" else (lambda flavor, name, value: value)
    return [
        (*(cell(flavor, c, v) for c, v in zip(columns, row[:-1], strict=False)),
         tables.time_value(flavor, row[-1], whole_seconds=True))
        for row in rows
    ]  # fmt: skip


def _foreign_cell(flavor: tables.Flavor, name: str, value: Any) -> Any:
    """A value of column ``name`` as SQLite and MariaDB take it: a Decimal (PostgreSQL's avg of
    integers, MariaDB's of a DECIMAL) as its exact text, which a REAL or NUMERIC column stores as a
    number; a PostgreSQL array as JSON text (MariaDB's driver sent Python's repr, SQLite's none); a
    uuid as its text. Raises DataError for a value the table would store as NULL (NaN on SQLite) or
    not at all."""
    if isinstance(value, decimal.Decimal) and not value.is_finite():
        value = float(value)  # a numeric NaN went in as the text 'NaN', which REAL columns keep as text
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, list):
        return json.dumps(value, default=str, ensure_ascii=False)
    # sqlite3 binds NaN as NULL, silently; MariaDB holds neither NaN nor infinity
    if isinstance(value, float) and (math.isnan(value) if flavor == "sqlite" else not math.isfinite(value)):
        spelt = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[str(value)]
        raise DataError(
            f"column {name!r} holds {spelt}, which a {'SQLite' if flavor == 'sqlite' else 'MariaDB'} table "
            f"cannot store; make it NULL or a number in select.sql (from PostgreSQL: "
            f"NULLIF({name}, '{spelt}') AS {name})"
        )
    if flavor == "sqlite" and value is not None and not isinstance(value, _SQLITE_TYPES):
        raise DataError(
            f"column {name!r} holds a {type(value).__name__}, which a SQLite table cannot store; "
            f"cast it in select.sql: CAST({name} AS text) AS {name}"
        )
    return value


_SQLITE_TYPES = (int, float, str, bytes, bytearray, memoryview, dt.date)  # what sqlite3 binds


def _lost(task: Task, tick: dt.datetime) -> str:
    return (
        f"task {task.name}: the claim of tick {tick.isoformat()} ran out (lease {task.lease:g} s) and "
        "another worker took it; nothing was written. Raise lease if evaluations take that long"
    )


class Driver:
    """Runs aggregate tasks: each run evaluates the latest due tick, once among all workers."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def plan(self, task: Task, options: RunOptions, *, summary: TaskSummary, limit: int | None) -> None:
        """The tick the next run would evaluate, its window, and where the rows go."""
        tick = due_tick(task, dt.datetime.now(UTC))
        assert tick is not None
        start, end = task.window(tick)
        summary.plan.append(
            {"partition": {"t": tick.isoformat()}, "reason": "aggregate", "start": start.isoformat(),
             "end": end.isoformat(), "path": task.target.display}
        )  # fmt: skip

    def run(
        self,
        task: Task,
        options: RunOptions,
        *,
        summary: TaskSummary,
        budget: Budget,
        limit: int | None,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> int:
        """Evaluate the latest due tick unless it is done or another worker holds it; one whose select
        loses the source is given back uncharged, and once it is back evaluated again (or charged)."""
        outage = SourceOutage(lambda: wait_for_source(self.context.source, budget, stop, task.name))
        while True:
            tick = due_tick(task, dt.datetime.now(UTC))
            assert tick is not None
            result = evaluate(self.context, task, tick, give_back=not outage.before([str(tick)]))
            if result.state != "lost":
                break
            try:  # the source stays away: the task stops (Deadline, a stop or --max-runtime: the run ends)
                outage.wait([str(tick)], SourceLost(f"tick {tick.isoformat()}: {result.error}"))
            except Deadline:
                break
        summary.aggregate.append(result.as_dict())
        if result.state == "failed":
            summary.note_failure(f"t={tick.isoformat()}", result.error or "failed")
        elif result.state == "done":
            summary.exported += 1
            summary.rows += result.rows
            summary.bytes += result.bytes
        return 0 if result.state == "skipped" else 1


def check(task: Task, source: Source) -> list[str]:
    """Compile the evaluation's select (no rows read) and check the table sink's columns."""
    problems: list[str] = []
    tick = dt.datetime.now(UTC).replace(microsecond=0)
    try:
        no_rows = dataclasses.replace(task, width=0.000001, since_previous_tick=False)
        names, _ = _select(source.url, no_rows, tick, forms=False)  # no rows read
    except SluicegateError as exc:
        return [f"{task.folder / 'select.sql'}: the query failed: {exc}; fix the SQL"]
    if (clash := column_clash(task, names)) is not None:
        return [clash]
    if tables.flavor_of(source.url) != "postgresql":
        window = tables.TableDb(source.url)
        try:
            problems += [p for p in [unreadable_times(window, task)] if p]
        finally:
            window.close()
    try:
        with tables.TableSink(task.target) as sink:
            have = set(sink.db.table_columns(task.target.table))
            unkeyed = tables.unkeyed(task.target, sink.db)  # MariaDB added an upsert's rows again
    except SluicegateError as exc:
        return [f"{task.folder / 'task.toml'} [destination]: {task.target.display}: {exc}"]
    problems += [f"{task.folder / 'task.toml'} [destination]: {unkeyed}"] if unkeyed else []
    missing = [c for c in [*names, task.evaluation_column, *task.target.key] if c not in have]
    if missing:
        problems.append(
            f"{task.folder / 'task.toml'} [destination]: {task.target.display} has no column "
            f"{', '.join(sorted(set(missing)))}; it needs every column of the select, "
            f"and {task.evaluation_column}"
        )
    return problems


def status(task: Task, ledger: Ledger) -> dict[str, Any]:
    """The task's evaluations by state, the latest evaluated tick and the latest error."""
    return {"task": task.name, "kind": "aggregate", **ledger.aggregates.status(task.name)}


def describe(task: Task) -> dict[str, Any]:
    """The window, the schedule and the table, for ``sluicegate tasks``."""
    return {
        "keys": [],
        "time": task.window_column,
        "capture": None,  # no [capture]: partitioned tasks only
        "window": {
            "table": task.window_table,
            "column": task.window_column,
            "width": "schedule" if task.since_previous_tick else task.width,
        },
        "every": task.every,
        "table": task.target.table,
        "mode": task.target.mode,
        "file": task.file,
    }
