"""Blocks tasks: time blocks per key value, each through an ordered list of stages.

A unit of work is one (block, stage): an hour (or day) block of one key value (a provider)
and one stage of the task (extract, load, publish, ...). Rows are created on the ledger when
a range is asked for (:class:`~sluicegate.timeblocks.BlockRequest`), never pre-filled. The
driver claims runnable rows in batches (a stage is runnable once the previous stage of its
block is ``done``), runs each stage over its claims (:mod:`.blocks_stages`) and records each
outcome, fenced by the claim; a failed stage is retried with backoff up to ``max_attempts``
without re-running the stages before it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import db, tables, validate
from ..config import read_select
from ..exceptions import BadPartitionValue, ConfigError, SluicegateError, UsageError, is_transient, printable
from ..ledger import Ledger, RangeQuery
from ..options import Budget, RunOptions, TaskSummary
from ..paths import check_template, render, template_fields
from ..sources import Source
from ..specs import Settings, TaskBase
from ..taskfields import BASE_KEYS
from ..timeblocks import (
    FIRST_YEAR,
    GRAINS,
    LAST_YEAR,
    Block,
    BlockRequest,
    Grain,
    blocks_between,
    check_distinct_paths,
    path_fields,
)
from ..work import Deadline
from . import Context, Progress, blocks_config
from .blocks_config import StageSpec
from .blocks_load import Loader
from .blocks_plan import check_claims, check_grain, ledger_blocks, plan_entries, settled_blocks
from .blocks_stages import StageRecorder, StageRunner, read_spec

log = logging.getLogger(__name__)

KEYS = (BASE_KEYS - {"format", "path"}) | {
    "grain", "zone", "key", "keys", "keys_sql", "stages", "config", "max_attempts", "backoff", "batch_size",
    "settle",
}  # fmt: skip
BLOCK_FIELDS = {"block", "start", "end", "label"}


@dataclass(frozen=True, kw_only=True)
class Task(TaskBase):
    """Time blocks of a grain per key value, each through the task's stages in order."""

    kind = "blocks"
    grain: Grain = "hour"
    zone: str = "UTC"
    key: str | None = None
    keys: tuple[str, ...] = ()
    keys_sql: str | None = None
    key_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)
    stages: tuple[StageSpec, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict, repr=False)
    max_attempts: int = 5
    backoff: float = 30.0
    batch_size: int = 50
    settle: float = 0.0  # seconds after its end before a block runs: late records

    def typed_key(self, value: str) -> Any:
        """A key value as the source compares it (text: PostgreSQL casts an untyped parameter)."""
        return value

    def config_for(self, stage: StageSpec, key_value: str) -> dict[str, Any]:
        """What a stage's callable is given, each over the one before: ``[config]``, the key value's
        ``[keys.<value>]``, the stage's ``[<stage>.config]``, the key value's ``[keys.<value>.<stage>]``."""
        names = {s.name for s in self.stages}
        own = self.key_config.get(key_value, {})
        per_stage = own.get(stage.name)
        shared = {k: v for k, v in own.items() if not (k in names and isinstance(v, dict))}
        return {**self.config, **shared, **stage.config, **(per_stage if isinstance(per_stage, dict) else {})}


def load(*, name: str, folder: Path, raw: Mapping[str, Any], settings: Settings) -> Task:
    """Read a blocks task's ``task.toml``."""
    where = str(folder / "task.toml")
    stages = blocks_config.stages(raw, folder, settings, where)  # first: an empty or repeated list is named
    validate.reject_unknown(raw, KEYS | {s.name for s in stages}, where)
    key = validate.identifier(raw["key"], f"{where} key") if "key" in raw else None
    extract = raw.get(stages[0].name, {})
    if key and "path" not in extract:  # the default artifact path, per key value
        path = f"{{stage}}/{{{key}}}/{{label}}.jsonl"
        stages = (dataclasses.replace(stages[0], path=path), *stages[1:])
    keys, key_config = blocks_config.key_values(raw, settings, where)
    keys_sql = raw.get("keys_sql")
    if key is None and (keys or keys_sql):
        raise ConfigError(f'{where} key: name the key that keys are values of, e.g. key = "provider"')
    if key is not None and bool(keys) == bool(keys_sql):
        raise ConfigError(
            f'{where} keys: give the values of {key} as keys = [...] or keys_sql = "SELECT ..."'
        )
    schedule, schedule_zone = validate.schedule(raw, where)
    task = Task(
        name=name,
        folder=folder,
        format="jsonl",
        path=stages[0].path or "",
        select_sql=read_select(folder) if (folder / "select.sql").is_file() else "",
        description=str(raw.get("description", "")),
        schedule=schedule,
        schedule_zone=schedule_zone,
        grain=validate.choice(raw.get("grain", "hour"), GRAINS, f"{where} grain"),  # type: ignore[arg-type]
        zone=validate.zone_name(raw.get("zone", "UTC"), f"{where} zone"),
        key=key,
        keys=keys,
        keys_sql=str(keys_sql) if keys_sql else None,
        key_config=key_config,
        stages=stages,
        config=blocks_config.resolve_values(raw.get("config", {}), settings, f"{where} config"),
        max_attempts=validate.whole_number(
            raw.get("max_attempts", settings.max_attempts), f"{where} max_attempts"
        ),
        backoff=validate.parse_duration(raw.get("backoff", settings.backoff), where=f"{where} backoff"),
        batch_size=validate.whole_number(raw.get("batch_size", 50), f"{where} batch_size"),
        settle=validate.parse_duration(raw.get("settle", 0), where=f"{where} settle"),
    )
    for stage in stages:
        if stage.path is not None:
            _check_path(task, stage, where)
    _check_stages_apart(task, where)
    return task


def _check_stages_apart(task: Task, where: str) -> None:
    """Two stages whose paths render alike would write over each other's file (a publish over
    the extract it reads)."""
    sample = dt.datetime(2024, 1, 15, tzinfo=dt.UTC)
    block = blocks_between(sample, sample + dt.timedelta(days=3), grain=task.grain, zone=task.zone)[0]
    owners: dict[str, str] = {}
    for stage in task.stages:
        if stage.path is None:
            continue
        path = _sample_path(task, stage, block)
        if path in owners:
            raise ConfigError(
                f"{where} [{stage.name}] path: it names the same file as [{owners[path]}] path ({path!r});"
                " give each stage its own path"
            )
        owners[path] = stage.name


def _sample_path(task: Task, stage: StageSpec, block: Block) -> str:
    """The stage's path for ``block`` and a sample key value (what load-time checks compare)."""
    fields = path_fields(task=task.name, stage=stage.name, key=task.key, key_value="k", block=block)
    return render(stage.path or "", fields | {"format": stage.format, "ext": stage.format})


def _check_path(task: Task, stage: StageSpec, where: str) -> None:
    """The stage's path template: known fields, the key, a block field, a distinct path per block."""
    folder, setting = task.folder, f"{where} [{stage.name}] path"
    allowed = BLOCK_FIELDS | {"task", "stage", "format", "ext"} | ({task.key} if task.key else set())
    assert stage.path is not None
    check_template(
        stage.path, folder, allowed=allowed, required=[task.key] if task.key else [], what="block field",
        where=setting, sharing="two key values", fmt=stage.format,
    )  # fmt: skip
    if not template_fields(stage.path) & BLOCK_FIELDS:
        raise ConfigError(
            f"{setting}: the template uses no block field ({{block}}, {{label}}, "
            "{start} or {end}), so every block's file would share a name"
        )
    try:
        check_distinct_paths(
            lambda b: _sample_path(task, stage, b), zone=task.zone, grain=task.grain, where=setting
        )
    except BadPartitionValue as exc:  # absolute, or escapes the destination: refused before any run
        raise ConfigError(f"{setting}: {exc}") from None


def chosen_stages(task: Task, request: BlockRequest | None) -> list[StageSpec]:
    """The stages a request runs: ``stages`` (all by default) less ``skip``."""
    names = [s.name for s in task.stages]
    wanted = request.stages if request and request.stages else names
    for name in wanted:
        if name not in names:
            raise UsageError(
                f"{name!r} is not a stage of task {task.name}; its stages are {', '.join(names)}"
            )
    skip = request.skip if request else ()
    chosen = [s for s in task.stages if s.name in wanted and s.name not in skip]
    if not chosen:
        raise UsageError(f"no stage of task {task.name} is left to run; its stages are {', '.join(names)}")
    return chosen


def key_values(task: Task, source_url: str, request: BlockRequest | None) -> list[str]:
    """The key values a request covers: the task's (or its ``keys_sql``'s), or the one asked for."""
    if task.key is None:
        if request and request.key_value:
            raise UsageError(f"task {task.name} has no key; run it without a key value")
        return [""]
    try:
        values = list(task.keys) if task.keys else _query_keys(source_url, task.keys_sql or "")
    except SluicegateError as exc:
        if is_transient(exc):
            raise
        raise ConfigError(f"{task.folder / 'task.toml'} keys_sql: {exc}; fix the query") from exc
    blocks_config.check_nul(values, f"{task.folder / 'task.toml'} keys_sql")
    if request and request.key_value is not None:
        if request.key_value not in values:
            known = ", ".join(printable(v) for v in values[:20]) or "none"
            raise UsageError(
                f"{task.key} {request.key_value!r} is not a key value of task {task.name}; known: {known}"
            )
        return [request.key_value]
    return values


def _query_keys(url: str, sql: str) -> list[str]:
    conn = db.connect(url)
    try:
        with db.wrap_errors(url):
            rows = conn.execute(sql).fetchall()
    finally:
        conn.close()
    return sorted({str(row[0]) for row in rows if row[0] is not None})


def range_of(task: Task, request: BlockRequest | None, keys: Sequence[str]) -> RangeQuery:
    """What the ledger calls of a run are about: the blocks of ``keys`` (the key values the task has
    now, from :func:`key_values`) in the request's range, or in any range without a request. Rows
    of a key value since removed from ``keys`` stay on the ledger (and in ``status``) untouched."""
    low, high = (request.time_min, request.time_max) if request is not None else (None, None)
    return RangeQuery(task=task.name, key_values=tuple(keys), time_min=low, time_max=high)


class Driver:
    """Runs blocks tasks: creates the asked range's rows, then claims and runs stages until none is left."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def plan(self, task: Task, options: RunOptions, *, summary: TaskSummary, limit: int | None) -> None:
        """Each (block, stage) the request (none: ``run``, the ledger's blocks) would run now, and why."""
        request, store = options.blocks, self.context.ledger.blocks
        chosen = chosen_stages(task, request)
        keys = key_values(task, self.context.project.settings.source_url, request)
        if request is None:
            blocks, rows = ledger_blocks(task, store, range_of(task, None, keys))
        else:
            request, blocks, _ = settled_blocks(task, request)
            check_grain(task, store, range_of(task, request, keys), blocks)
            rows = store.rows(range_of(task, request, keys))
        summary.plan = plan_entries(task, request, [s.name for s in chosen], keys, blocks, rows)[:limit]

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
        """Run every runnable (block, stage) of the request (or of the ledger); return how many ran."""
        ctx, settings = self.context, self.context.project.settings
        request, store = options.blocks, ctx.ledger.blocks
        if problems := select_problems(task, ctx.source, outage=True):  # before any claim
            raise ConfigError("; ".join(problems))
        chosen = chosen_stages(task, request)
        keys = key_values(task, settings.source_url, request)
        if request is not None:  # before any row: a block is done once, so only settled ones
            request, blocks, _ = settled_blocks(task, request)
            self._ask(task, request, chosen, keys, range_of(task, request, keys), blocks)
        where = range_of(task, None if request is not None and request.sweep else request, keys)
        recorder = StageRecorder(
            task, store, settings.lease, summary, delete=ctx.destination.delete, feed=ctx.feed(task)
        )
        runner = StageRunner(ctx, task, recorder, budget, Loader(ctx, recorder))
        claimed = 0
        try:
            while not (stop is not None and stop.is_set()) and (limit is None or claimed < limit):
                size = min(task.batch_size, limit - claimed) if limit else task.batch_size
                claims = self._claim(task, where, [s.name for s in chosen], size)
                if not claims:
                    break
                claimed += len(claims)
                if not self._batch(task, runner, claims):
                    break
                if progress is not None:
                    progress(summary, len(claims))
        finally:
            runner.close()
        return claimed

    def _claim(self, task: Task, where: RangeQuery, stages: list[str], size: int) -> list[Any]:
        """A batch of pending rows; when none is left, one row of a dead claim, in a batch of its own:
        a block that kills its worker (or whose stage crashed the run) then takes down no other."""
        lease = self.context.project.settings.lease
        for taken, limit in ((False, size), (True, 1)):
            if claims := self.context.ledger.blocks.claim(
                where, stages=stages, zone=task.zone, grain=task.grain, limit=limit, lease=lease, taken=taken
            ):
                return claims
        return []

    def _ask(
        self,
        task: Task,
        request: BlockRequest,
        chosen: Sequence[StageSpec],
        keys: Sequence[str],
        where: RangeQuery,
        blocks: list[Block],
    ) -> None:
        """The request's rows created, then its stages forced or unparked as asked."""
        store = self.context.ledger.blocks
        check_grain(task, store, where, blocks)
        store.ensure(task.name, keys, blocks, [s.name for s in task.stages])
        if request.force:
            position = min(task.stages.index(s) for s in chosen)
            store.reset(where, position=position)
            if busy := store.busy(where, position=position):
                log.warning(
                    "%s: %d block(s) not forced: a stage from %r on is running in another run; "
                    "run the same command again once that run ends",
                    task.name,
                    busy,
                    task.stages[position].name,
                )
        if request.incomplete_only:
            store.unpark(where, stages=[s.name for s in chosen])

    def _batch(self, task: Task, runner: StageRunner, claims: Sequence[Any]) -> bool:
        """Run a batch, stage by stage; False when the time budget ran out."""
        try:
            check_claims(task, claims)  # rows of another grain or zone: released, refused
            for stage in task.stages:
                group = [c for c in claims if c.stage == stage.name]
                if group:
                    runner.run(stage, group)
            return True
        except Deadline:
            return False
        finally:  # anything not recorded (the budget ran out) goes back without an attempt
            self.context.ledger.blocks.release(claims[0].token)


def select_problems(task: Task, source: Source, *, outage: bool = False) -> list[str]:
    """Problems of a blocks task's select (its key and ``[extract] time`` columns). ``outage``: a
    transient error (the database is down) is raised, not listed: a run checks this before any
    claim (a missing key column failed every block with "no such column: q.provider"). The key
    query needs no such check in a run: :func:`key_values` names its error itself."""
    extract = task.stages[0]
    if extract.time is None:
        return []
    try:
        columns = {c.name for c in source.describe(read_spec(task, extract))}
    except SluicegateError as exc:
        if outage and is_transient(exc):
            raise
        return [str(exc)]
    wanted = [("[extract] time", extract.time)] + ([("key", task.key)] if task.key else [])
    return [
        f"{task.folder / 'task.toml'} {f}: {n!r} is not a column of select.sql's result"
        for f, n in wanted
        if n not in columns
    ]


def timeless_rows(task: Task, source: Source) -> list[str]:
    """Rows of the select that no block holds: a NULL ``[extract] time``, on SQLite one that
    ``julianday()`` cannot read (blocks compare it so), on PostgreSQL ``±infinity``. Nothing
    else would say so: every block is exported and the rows are not in any."""
    extract = task.stages[0]
    assert extract.time is not None
    t = f"q.{source.dialect.quote(extract.time)}"
    # blocks read SQLite and PostgreSQL sources only; none reaches before the year 2 or after 9998
    low, high = f"'{FIRST_YEAR:04d}-01-01'", f"'{LAST_YEAR + 1}-01-01'"
    if source.dialect is db.SQLITE:
        j = f"julianday({t})"
        odd = f"{j} IS NULL OR {j} < julianday({low}) OR {j} >= julianday({high})"
    else:
        odd = f"NOT isfinite({t}) OR {t} < {low} OR {t} >= {high}"
    select = task.select_sql.rstrip().rstrip(";")
    try:
        nulls, others, example = source.execute(
            f"SELECT sum(CASE WHEN {t} IS NULL THEN 1 ELSE 0 END), sum(CASE WHEN {t} IS NULL THEN 0 ELSE 1"
            f" END), min(CAST({t} AS TEXT)) FROM ({select}) AS q WHERE {t} IS NULL OR {odd}"
        )[0]
    except SluicegateError as exc:  # such as a text column on PostgreSQL, which no block compares either
        return [f"{task.folder / 'task.toml'} [extract] time: {exc}"]
    where, out = f"{task.folder / 'select.sql'}", []
    if nulls:
        out.append(
            f"{where}: {nulls:,} row(s) have no {extract.time} (NULL), so no block holds them and they are"
            f" never extracted; give them a time, or leave them out in select.sql (WHERE {extract.time}"
            " IS NOT NULL) if that is meant"
        )
    if others:
        out.append(
            f"{where}: {others:,} row(s) have a time in {extract.time} that no block can hold (such as"
            f" {example!r}), so they are never extracted; write it as YYYY-MM-DD HH:MM:SS[.ffffff] with an"
            f" optional Z or ±HH:MM, a finite time in the years {FIRST_YEAR} to {LAST_YEAR}, or convert it"
            " (or leave it out) in select.sql"
        )
    return out


def check(task: Task, source: Source) -> list[str]:
    """Problems of a blocks task against the live databases: its select, its rows' times, key
    query and load tables."""
    problems = select_problems(task, source)
    if not problems and task.stages[0].time is not None:
        problems += timeless_rows(task, source)
    toml = task.folder / "task.toml"
    if task.keys_sql:
        try:
            _query_keys(source.url, task.keys_sql)
        except SluicegateError as exc:
            problems.append(f"{toml} keys_sql: {exc}")
    for stage in task.stages:
        if stage.target is not None and not stage.create:
            problems += [f"{toml} [{stage.name}] {p}" for p in _check_table(stage)]
    return problems


def _check_table(stage: StageSpec) -> list[str]:
    """Problems of a load's table: unreachable, missing, a column missing, a key folding ids or unkeyed."""
    assert stage.target is not None
    table = stage.target.table
    try:
        sink = tables.TableSink(stage.target)
    except SluicegateError as exc:
        return [f"url: {exc}"]
    try:  # unkeyed: MariaDB added a block's rows again
        have, unkeyed = set(sink.db.table_columns(table)), tables.unkeyed(stage.target, sink.db)
        folding = [
            (k, c) for k in sorted(have & set(stage.target.key)) if (c := sink.db.folding_collation(table, k))
        ]
    except SluicegateError as exc:
        return [str(exc)]
    finally:
        sink.close()
    return [f"table {table} has no column {name!r}" for name, _ in stage.columns if name not in have] + [
        f"table {table} compares {k} by {c}, which takes ids that differ only in case, accents or trailing"
        f" spaces for one (a record overwrites another); make {k}'s comparison exact (binary)"
        for k, c in folding
    ] + ([unkeyed] if unkeyed else [])  # fmt: skip


def status(task: Task, ledger: Ledger) -> dict[str, Any]:
    """Blocks per stage and status, and the parked (block, stage) rows with their errors."""
    current = {s.name for s in task.stages}  # a removed stage's rows are kept, not counted
    counts = {stage: row for stage, row in ledger.blocks.counts(task.name).items() if stage in current}
    blocks = sum(v for k, v in next(iter(counts.values()), {}).items() if k != "record_errors")
    parts = []
    for stage, row in counts.items():
        text = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in row.items() if n and s != "record_errors")
        errors = f", {row['record_errors']} records rejected" if row["record_errors"] else ""
        parts.append(f"{stage}: {text or 'none'}{errors}")
    return {
        "task": task.name,
        "kind": "blocks",
        "blocks": blocks,
        "stages": "; ".join(parts) or "no blocks yet",
        "failed": sum(row["failed"] for row in counts.values()),
        "by_stage": counts,
        "failures": [
            {
                "partition": " ".join(p for p in (printable(f["key_value"]), f["block"], f["stage"]) if p),
                "attempts": f["attempts"],
                "error": str(f["error"] or "").removesuffix("; will retry"),  # parked: nothing will
            }
            for f in ledger.blocks.failures(task.name)
            if f["stage"] in current
        ],
    }


def describe(task: Task) -> dict[str, Any]:
    """The key, grain, zone and stages, for ``sluicegate tasks``."""
    return {
        "keys": [task.key] if task.key else [],
        "time": None,
        "capture": None,  # no [capture]: its blocks are planned by time
        "grain": task.grain,
        "zone": task.zone,
        "stages": [s.name for s in task.stages],
        "settle": task.settle,
    }
