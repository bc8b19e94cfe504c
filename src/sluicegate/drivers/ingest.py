"""Ingest tasks: measurement messages into a table of the source database, idempotently.

``sluicegate ingest TASK FILE`` reads JSON lines (``-``: stdin); ``sluicegate ingest TASK``,
``run`` and ``serve`` drain the task's SQS queue (``[sqs]``). Messages are checked one by one
(:mod:`sluicegate.messages`) and written in batches by :class:`~sluicegate.ingest.Ingestor`:
rows inserted unless their message id is already there, malformed messages reported by id
and skipped or parked, and a log row per batch, all in one transaction.

The table is in the project's source database (where aggregate and partitioned tasks read
it); the log lives next to it, like the capture inbox. ``[columns]`` maps each column of the
table to a message field; the default is airmax's ``raw`` table.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .. import mariadb_conn, tables, validate
from ..exceptions import ConfigError, SluicegateError, is_transient
from ..ingest import Ingestor, IngestSummary, drain
from ..ledger import Ledger
from ..messages import AIRMAX_COLUMNS, FIELDS, NUMBERS, TIMES
from ..options import Budget, RunOptions, TaskSummary
from ..sources import Source
from ..specs import Settings, TaskBase
from ..sqs import SqsQueue, SqsSpec, load_sqs
from . import Context, Progress

KEYS = frozenset({"kind", "description", "schedule", "schedule_zone", "table", "malformed", "batch_size"})
KEYS = KEYS | {"columns", "sqs"}


@dataclass(frozen=True, kw_only=True)
class Task(TaskBase):
    """Messages into ``table``; ``columns`` maps table columns to message fields."""

    kind = "ingest"
    url: str  # the database of the table: the project's source database
    table: str
    columns: tuple[tuple[str, str], ...]
    key: str  # the column holding the message id: a new id is inserted, a known one left alone
    malformed: Literal["skip", "park"] = "skip"
    batch_size: int = 500
    sqs: SqsSpec | None = None


def load(*, name: str, folder: Path, raw: Mapping[str, Any], settings: Settings) -> Task:
    """Read an ingest task's ``task.toml`` (no select.sql: it writes, it does not read)."""
    where = str(folder / "task.toml")
    validate.reject_unknown(raw, KEYS, where)
    if "table" not in raw:
        raise ConfigError(f'{where} table: missing; name the table messages go to, e.g. table = "raw"')
    columns = _columns(raw.get("columns", AIRMAX_COLUMNS), f"{where} [columns]")
    keys = [column for column, field in columns if field == "id"]
    if len(keys) != 1:
        raise ConfigError(f'{where} [columns]: map exactly one column to the field "id" (the message id)')
    schedule, schedule_zone = validate.schedule(raw, where)
    return Task(
        name=name,
        folder=folder,
        select_sql="",
        format=settings.format,
        path="",
        description=str(raw.get("description", "")),
        schedule=schedule,
        schedule_zone=schedule_zone,
        url=settings.source_url,
        table=validate.table_name(raw["table"], f"{where} table"),
        columns=columns,
        key=keys[0],
        malformed=validate.choice(raw.get("malformed", "skip"), ("skip", "park"), f"{where} malformed"),  # type: ignore[arg-type]
        batch_size=validate.whole_number(raw.get("batch_size", 500), f"{where} batch_size"),
        sqs=load_sqs(raw["sqs"], f"{where} [sqs]") if "sqs" in raw else None,
    )


def _columns(raw: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f'{where}: use a table of column = "field", e.g. message_id = "id"')
    pairs = []
    for column, field in raw.items():
        validate.identifier(column, where)
        pairs.append((str(column), validate.choice(field, FIELDS, f"{where} {column}")))
    return tuple(pairs)


# How to make a message id column compare exactly, per database.
_EXACT = {
    "mariadb": "ALTER TABLE {table} MODIFY {key} VARCHAR(255) NOT NULL COLLATE {exact}",
    "postgresql": 'ALTER TABLE {table} ALTER {key} TYPE text COLLATE "C"',
    "sqlite": "declare {key} TEXT without COLLATE NOCASE or RTRIM (SQLite cannot alter it: copy the table)",
}


def summarize(ingested: IngestSummary, summary: TaskSummary) -> None:
    """Put an ingest's counts into a run summary: malformed messages are its failed units."""
    summary.ingest = ingested.as_dict()
    summary.rows += ingested.inserted
    for entry in ingested.malformed:
        summary.note_failure(f"message {entry['id'] or '(no id)'}", str(entry["error"]))


class Driver:
    """Runs ingest tasks: ``run`` drains the task's SQS queue (JSON lines come through ``ingest``)."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def plan(self, task: Task, options: RunOptions, *, summary: TaskSummary, limit: int | None) -> None:
        """Where the messages would come from and go to."""
        origin = task.sqs.queue_url if task.sqs else "sluicegate ingest (JSON lines)"
        summary.plan.append({"partition": {"table": task.table}, "reason": "ingest", "path": origin})

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
        """Drain the task's SQS queue into its table; a task without ``[sqs]`` has nothing to do (the
        summary says so, and how messages get in)."""
        if task.sqs is None:
            note = (
                f"no [sqs] queue in {task.folder / 'task.toml'}, so a run has nothing to drain; "
                f"ingest JSON lines with `sluicegate ingest {task.name} FILE`, or add [sqs] queue_url"
            )
            summary.ingest = {**IngestSummary(malformed_setting=task.malformed).as_dict(), "note": note}
            return 0
        refuse_if_broken(task)
        ingested = IngestSummary(malformed_setting=task.malformed)
        queue = SqsQueue(task.sqs)
        try:
            drain(
                Ingestor(task, self.context.inbox), queue, ingested, fault=self.context.fault,
                stop=lambda: bool(stop and stop.is_set()) or not budget.can_start(0.0), left=budget.left,
            )  # fmt: skip
        finally:
            queue.close()
            summarize(ingested, summary)
        return ingested.batches


def check(task: Task, source: Source) -> list[str]:
    """The table exists and has every mapped column."""
    toml, table, key = task.folder / "task.toml", task.table, task.key
    target = tables.TableDb(task.url)
    try:
        have = set(target.table_columns(table))
        missing = sorted(column for column, _ in task.columns if column not in have)
        if missing:
            return [f"{toml} [columns]: table {table} has no column {', '.join(missing)}"]
        if refused := _refused_kind(task, target.column_kinds(table)):
            return [f"{toml} [columns]: {refused}"]
        mapped = {column for column, _ in task.columns}
        if unmapped := [c for c in target.required_columns(table) if c not in mapped]:
            return [
                f"{toml} [columns]: {table}.{unmapped[0]} needs a value (NOT NULL, without a default) and"
                " [columns] maps no field to it, so the table would refuse every message; map it to a field"
                f' ({unmapped[0]} = "location") or give the column a default'
            ]
        if not target.unique_on(table, key):  # each message is inserted once, by its id
            index = f"{table.rpartition('.')[2]}_{key}_key"
            return [
                f"{toml} table: {table} has no unique index on {key} alone, the message id column;"
                f" create one (CREATE UNIQUE INDEX {index} ON {table} ({key})): without it a"
                " redelivered message is refused, or inserted again"
            ]
        if collation := target.folding_collation(table, key):  # ABC = abc, cafe = café
            exact = mariadb_conn.exact_collation(target.conn) if target.flavor == "mariadb" else ""
            fix = _EXACT[target.flavor].format(table=table, key=key, exact=exact)
            return [
                f"{toml} table: {table}.{key} compares message ids by {collation}, which takes ids that"
                " differ in case, accents or trailing spaces for the same one (a message is lost as a"
                f" duplicate); make the comparison exact: {fix}"
            ]
    except SluicegateError as exc:
        if is_transient(exc):  # the database is down: an outage, not a problem of the task
            raise
        return [f"{toml} table: {exc}"]
    finally:
        target.close()
    return []


def _refused_kind(task: Task, kinds: Mapping[str, str]) -> str | None:
    """A mapped column whose type holds no value of its field (a number column for a time, a time
    column for a number or a text), so that the table would refuse every message."""
    for column, field in task.columns:
        kind = kinds.get(column)
        what = "time" if field in TIMES else "number" if field in NUMBERS else "text"
        if kind in ({"number", "boolean"} if what == "time" else {"time", "boolean"}):
            return (
                f"{task.table}.{column} is a {kind} column, which cannot hold {field} (a {what}), so the"
                f" table would refuse every message; map {column} to another field or change its type"
            )
    return None


def refuse_if_broken(task: Task) -> None:
    """Before any message is taken: the table, its columns and its unique index on the id column
    (without it MariaDB inserted every redelivered copy, PostgreSQL and SQLite refused every batch)."""
    if problems := check(task, None):  # type: ignore[arg-type]  # (it reads no source)
        raise ConfigError("; ".join(problems))


def status(task: Task, ledger: Ledger) -> dict[str, Any]:
    """Messages received, inserted, duplicates and malformed so far (from the log next to the table)."""
    if ledger.url == task.url:
        counts = ledger.ingest.status(task.name)
    else:
        with Ledger(task.url, schema=ledger.schema) as target:
            counts = target.ingest.status(task.name)
    return {"task": task.name, "kind": "ingest", "table": task.table, **counts}


def describe(task: Task) -> dict[str, Any]:
    """The table, its id column and where messages come from, for ``sluicegate tasks``."""
    return {
        "keys": [task.key],
        "time": None,
        "capture": None,  # no [capture]: partitioned tasks only
        "table": task.table,
        "malformed": task.malformed,
        "sqs": task.sqs.queue_url if task.sqs else None,
    }
