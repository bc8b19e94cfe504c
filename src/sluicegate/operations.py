"""Library calls behind the CLI commands and the HTTP routes other than ``run``.

check, install, status, mark, reexport, reset, tasks, watermarks, runs, partitions, health: each
opens what it needs and returns plain data; the kind's driver module does the kind-specific parts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import capture, capture_triggers, db, partitions, validate
from .destination_id import bound_problems
from .destinations import open_destination
from .drivers import kind_module, require_source
from .drivers.partitioned import Task as PartitionedTask
from .exceptions import ConfigError, DataError, PermissionDenied, SluicegateError, UsageError
from .export_request import time_range
from .keytext import coerce_value, period_filter, reads_as
from .ledger import Ledger, open_ledger
from .ledger.watermarks import ENTITY_FIELDS
from .masking import mask_url
from .sources import open_source
from .specs import Project, TaskBase

if TYPE_CHECKING:
    from .drivers.incremental import Task as IncrementalTask
    from .ingest import IngestSummary


@contextlib.contextmanager
def ledger_of(project: Project) -> Iterator[Ledger]:
    """The project's ledger, its tables created or upgraded, closed after the block."""
    s = project.settings
    require_source(project, ledger=True)  # a ledger in the source would make a typo'd path's file
    ledger = open_ledger(s.ledger_url, s.ledger_schema)
    try:
        yield ledger
    finally:
        ledger.close()


def check_project(project: Project) -> list[str]:
    """Validate every task against the live databases; return one line per problem."""
    problems = [p.message for p in project.problems]
    s = project.settings
    toml = s.root / "sluicegate.toml"
    try:
        require_source(project)
        source = open_source(s.source_url)
    except SluicegateError as exc:
        return [*problems, f"[source] url {mask_url(s.source_url)}: {exc}"]
    try:
        for task in project.tasks.values():
            problems += kind_module(task.kind).check(task, source)
    finally:
        source.close()
    destination = None
    try:
        (destination := open_destination(s.destination)).check()
    except SluicegateError as exc:
        problems.append(f"{toml} [destination] url: {exc}")
    try:
        with ledger_of(project) as ledger:
            problems += _check_search_path(ledger, s.ledger_schema, toml)
            # a destination whose id the ledger does not record for its tasks: every run refuses
            problems += bound_problems(project, ledger, destination) if destination else []
    except SluicegateError as exc:
        problems.append(f"{toml} [ledger] url {mask_url(s.ledger_url)}: {exc}")
    return problems


def _check_search_path(ledger: Ledger, schema: str, toml: Any) -> list[str]:
    """A role named like the ledger schema sees the ledger schema first through "$user"."""
    if ledger.dialect is not db.POSTGRESQL:
        return []
    user, path = ledger.conn.execute("SELECT current_user, current_setting('search_path')").fetchone()
    if user == schema and "$user" in path:
        return [
            f"{toml} [ledger] schema: {schema!r} is also the name of the database role, so with search_path "
            f"{path!r} unqualified table names would resolve to the ledger schema first; "
            "pick another schema name"
        ]
    return []


def partitioned_task(project: Project, name: str, *, also: str = "") -> PartitionedTask:
    """The partitioned task called ``name`` (marks and re-exports apply only to those; ``also``:
    the other kind the command applies to, which the caller took already)."""
    task = project.task(name)
    if not isinstance(task, PartitionedTask):
        kinds = f"partitioned and {also}" if also else "partitioned"
        raise UsageError(
            f"task {name!r} is {validate.a_or_an(task.kind)} task; this applies to {kinds} tasks only"
        )
    return task


def install(project: Project, names: Sequence[str] = ()) -> dict[str, list[str]]:
    """Create the capture triggers of every trigger-mode task; return trigger names per task."""
    s = project.settings
    chosen = [partitioned_task(project, n) for n in names] if names else list(project.tasks.values())
    tasks = [t for t in chosen if isinstance(t, PartitionedTask) and (t.capture.mode == "trigger" or names)]
    with ledger_of(project) as ledger, Ledger(s.source_url, schema=s.ledger_schema) as inbox:
        return {t.name: capture_triggers.install(t, inbox, ledger) for t in tasks}


def status(project: Project, names: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Per task: its kind's counts (partitions by state, entities, ...), its failures, the
    changes waiting in its trigger inbox, and the error that stopped its last run, if any."""
    out = []
    with ledger_of(project) as ledger, inbox_of(project, ledger) as inbox:
        errors = ledger.runs.task_errors()
        for task in project.select(list(names)):
            row = kind_module(task.kind).status(task, ledger)
            if isinstance(task, PartitionedTask):  # claimed, yet no worker renews them
                count, left = ledger.partitions.stale_claims(task, lease=project.settings.lease)
                row["stale_claims"], row["stale_claims_end_in"] = count, left
            if inbox is not None and isinstance(task, PartitionedTask) and task.capture.mode == "trigger":
                row["inbox"] = inbox_count(inbox, task.name)
            if task.name in errors:
                row["task_error"] = errors[task.name]["error"]
                row["task_error_at"] = errors[task.name]["at"]
            out.append(row)
    for problem in project.problems:
        if not names or problem.name in names:
            out.append({"task": problem.name, "error": problem.message})
    return out


@contextlib.contextmanager
def inbox_of(project: Project, ledger: Ledger) -> Iterator[Ledger | None]:
    """The ledger tables in the source database (the trigger inbox), or None if unreachable."""
    s = project.settings
    if s.shared_database:
        yield ledger
        return
    try:
        inbox = Ledger(s.source_url, schema=s.ledger_schema)
    except SluicegateError:
        yield None
        return
    try:
        yield inbox
    finally:
        inbox.close()


def inbox_count(inbox: Ledger, task: str) -> int | None:
    """Changes of ``task`` waiting in the inbox (None when the inbox cannot be read)."""
    try:
        return inbox.capture.count_changes(task)[0]
    except SluicegateError:
        return None


def status_text(row: Mapping[str, Any]) -> str:
    """A status row of a kind without partitions as one line: ``entities 3, failed 0, ...``."""
    skip = {"task", "kind", "failures", "error", "task_error", "task_error_at", "by_stage"}
    shown = {k: ("yes" if v else "no") if isinstance(v, bool) else v for k, v in row.items()}  # not True
    return ", ".join(
        f"{k.replace('_', ' ')} {v}" for k, v in shown.items() if k not in skip and v is not None
    )


def mark(project: Project, task_name: str, assignments: Mapping[str, Any]) -> int:
    """Mark one partition of ``task_name`` changed; it is exported by the next run."""
    task = partitioned_task(project, task_name)
    source = open_source(project.settings.source_url)
    try:
        with ledger_of(project) as ledger:  # a partition's id is its keys in the order of keys
            partitions.check_key_order(task, ledger.partitions, str(task.folder / "task.toml"))
            return capture.mark(task, ledger, source, assignments)
    finally:
        source.close()


def reexport(
    project: Project,
    task_name: str,
    assignments: Mapping[str, str],
    *,
    time_min: dt.datetime | None = None,
    time_max: dt.datetime | None = None,
) -> int:
    """Queue exported partitions again (all, or those matching keys and a time range)."""
    task = partitioned_task(project, task_name)
    if (time_min or time_max) and task.time is None:
        raise UsageError(f"task {task.name!r} has no time key; time_min and time_max do not apply")
    time_range(time_min, time_max)
    when = task.time.name if task.time is not None and task.time.name in assignments else None
    period = period_filter(task.time, assignments[when]) if task.time is not None and when else None
    wanted = _typed_filter(project, task, texts := {k: v for k, v in assignments.items() if k != when})

    def accept(keys: dict[str, Any], start: dt.datetime | None, end: dt.datetime | None) -> bool:
        if not partitions.recorded_alike(task, keys):  # before a key was added or removed, or grain changed
            return False
        if any(keys.get(k) != v and not reads_as(keys.get(k), texts[k]) for k, v in wanted.items()):
            return False  # typed as the source has it, or as the partition holds it
        if period is not None and not period(keys.get(str(when)), start, end):
            return False
        if time_min and end and end <= time_min:
            return False
        return not (time_max and start and start >= time_max)

    with ledger_of(project) as ledger:
        if task.time is not None:  # a zone changed (the task's, or a key's zone_sql one): days are cut anew
            chosen = [row for row in ledger.partitions.partition_keys(task) if accept(*row[1:])]
            source = open_source(project.settings.source_url) if task.time.zone_sql else None
            try:
                capture.rezone(task, ledger, source, [row[1:] for row in chosen])
            finally:
                if source is not None:
                    source.close()
            if task.time.zone and ledger.partitions.other_zones(task, task.time.zone):  # days that kept
                ledger.partitions.relabel([row[0] for row in chosen], task.time.zone)  # their window
        return ledger.partitions.reexport(task, accept)


def _typed_filter(project: Project, task: PartitionedTask, wanted: dict[str, str]) -> dict[str, Any]:
    """``reexport``'s key values read as ``mark`` reads them (typed by the key's column)."""
    try:
        source = open_source(project.settings.source_url) if wanted else None
    except SluicegateError:  # the source is out of reach: read as integers or text
        return {k: coerce_value(v) for k, v in wanted.items()}
    with contextlib.closing(source) if source else contextlib.nullcontext():
        return capture.typed_keys(task, source, wanted) if source else {}


def reset_failed(project: Project, task_name: str) -> int:
    """Re-queue the parked (failed) partitions of ``task_name``, or clear an incremental task's attempts."""
    kind = project.task(task_name).kind
    if kind == "blocks":  # its parked blocks are run again by a request, as atd-mds's were
        raise UsageError(
            f"task {task_name!r} is a blocks task; run its parked blocks again with"
            f" `sluicegate blocks {task_name} --time-min ... --time-max ... --incomplete-only`"
        )
    keys = None if kind == "incremental" else partitioned_task(project, task_name, also="incremental")
    with ledger_of(project) as ledger:
        return ledger.partitions.reset_failed(keys) if keys else ledger.watermarks.reset_failed(task_name)


def describe_tasks(project: Project) -> list[dict[str, Any]]:
    """The tasks of the project, as JSON-ready dicts (broken ones with their error)."""
    out: list[dict[str, Any]] = [
        {
            "name": task.name,
            "kind": task.kind,
            "description": task.description,
            "format": task.format,
            **kind_module(task.kind).describe(task),
            "path": task.path,
            "schedule": task.schedule,
            "select": task.select_sql.strip(),
        }
        for task in project.tasks.values()
    ]
    out += [{"name": p.name, "error": p.message} for p in project.problems]
    return sorted(out, key=lambda t: t["name"])


def incremental_task(project: Project, name: str | None) -> IncrementalTask:
    """The incremental task called ``name``, or the only one when ``name`` is None."""
    from .drivers.incremental import Task as IncrementalTask

    if name is not None:
        task = project.task(name)
        if not isinstance(task, IncrementalTask):
            raise UsageError(f"task {name!r} is not an incremental task")
        return task
    found = [t for t in project.tasks.values() if isinstance(t, IncrementalTask)]
    if len(found) != 1:
        names = ", ".join(t.name for t in found) or "none"
        raise UsageError(f"name the incremental task; the project has: {names}")
    return found[0]


# What a run's limit counts; the other kinds' runs do not count anything it could cap.
LIMITED_KINDS = ("partitioned", "blocks")
_UNLIMITED = {
    "incremental": "an incremental run exports every entity's window; --entity/entities exports fewer",
    "aggregate": "an aggregate run evaluates the due ticks",
    "archive": "an archive run moves what its cutoff gives",
    "ingest": "an ingest run reads what it is given",
}


def check_limit(tasks: Sequence[TaskBase], limit: int | None, *, named: bool) -> None:
    """Refuse a run's ``limit`` for a task whose kind it does not apply to (a task the run names,
    or every task of the run): it counts partitions and blocks, and those kinds have neither."""
    other = [t for t in tasks if t.kind not in LIMITED_KINDS]
    if limit is not None and other and (named or len(other) == len(tasks)):
        task = other[0]
        raise UsageError(
            f"--limit/limit {limit} does not apply to {task.kind} task {task.name!r}: it counts"
            f" partitions and blocks, and {_UNLIMITED.get(task.kind, 'this kind has neither')}; leave it out"
        )


def watermarks(project: Project, task_name: str) -> list[dict[str, Any]]:
    """Every watermark of an incremental task, and each of its fixed ``entities`` that has none
    (never exported, or deleted: its next export starts from the bootstrap) with a null one."""
    task = incremental_task(project, task_name)
    with ledger_of(project) as ledger:
        rows = ledger.watermarks.entities(task.name)
    blank = dict.fromkeys(ENTITY_FIELDS) | dict.fromkeys(("claimed", "held", "parked"), False)
    known = {str(r["entity"]) for r in rows}
    return rows + [{**blank, "entity": e, "attempts": 0} for e in task.entities if e not in known]


def delete_watermark(project: Project, task_name: str, entity: str) -> bool:
    """Delete one entity's watermark; its next export starts from the bootstrap. A ledger that
    records nothing after it stays the destination's (engine.check_ledger_found)."""
    task = incremental_task(project, task_name)
    with ledger_of(project) as ledger:
        if not ledger.watermarks.delete(task.name, entity):
            return False
        with contextlib.suppress(PermissionDenied):  # such a role's runs skip the check
            if not ledger.found.has_records():
                ledger.found.mark_new_ledger()
        return True


def forget_reexport(project: Project, task_name: str, entity: str) -> dict[str, Any]:
    """Drop ``entity``'s owed failed re-export (one no retry can finish, such as one to a
    destination that is gone); its watermark stays. Return the row as it was."""
    from .watermarks import Window

    task = incremental_task(project, task_name)
    with ledger_of(project) as ledger:
        row = next((w for w in ledger.watermarks.entities(task.name) if w["entity"] == entity), None)
        if row is None or row["failed_mode"] != "reexport":
            raise UsageError(f"entity {entity!r} of task {task.name!r} owes no failed re-export to forget")
        window = Window(
            entity=entity, value=entity, start=row["failed_start"], end=row["failed_end"], claim=None,
            export_type=row["failed_type"], mode="reexport", destination=row["failed_destination"],
        )  # fmt: skip
        if not ledger.watermarks.clear_reexport(task.name, window):  # redriven or replaced meanwhile
            raise UsageError(f"entity {entity!r} of task {task.name!r} no longer owes that re-export")
    return row


def ingest(
    project: Project, task_name: str, lines: Iterable[str | bytes] | None = None, *, name: str = "-"
) -> IngestSummary:
    """Ingest JSON lines (``lines``, called ``name`` in messages; bytes are decoded line by line as
    UTF-8), else the task's SQS queue until empty."""
    from .drivers.ingest import Task as IngestTask

    task = project.task(task_name)
    if not isinstance(task, IngestTask):
        kind = validate.a_or_an(task.kind)
        raise UsageError(f"task {task_name!r} is {kind} task; ingest applies to ingest tasks only")
    if lines is None and task.sqs is None:
        raise UsageError(f"task {task_name!r} has no [sqs] queue; give a file of JSON lines, or - for stdin")
    from .drivers import ingest as driver

    driver.refuse_if_broken(task)
    try:
        return _ingest(project, task, lines, name)
    except DataError as exc:  # a column of the wrong type: a configuration error, named (not an outage)
        if problems := driver.check(task, None):  # type: ignore[arg-type]  # (it reads no source)
            raise ConfigError("; ".join(problems)) from exc
        raise


def _ingest(project: Project, task: Any, lines: Iterable[str | bytes] | None, name: str) -> IngestSummary:
    from .ingest import Ingestor, IngestSummary, drain, ingest_lines

    s = project.settings
    summary = IngestSummary(malformed_setting=task.malformed)
    with Ledger(s.source_url, schema=s.ledger_schema) as target:
        ingestor = Ingestor(task, target)
        if lines is not None:
            ingest_lines(ingestor, lines, name, summary)
            return summary
        from .faults import fault_point
        from .sqs import SqsQueue

        assert task.sqs is not None
        queue = SqsQueue(task.sqs)
        try:
            drain(ingestor, queue, summary, fault=fault_point(s.fault, s.root))
        finally:
            queue.close()
    return summary


# ---------------------------------------------------------------------------- runs, partitions, health


def list_runs(project: Project, *, limit: int = 50) -> list[dict[str, Any]]:
    """The most recent runs recorded on the ledger, newest first."""
    with ledger_of(project) as ledger:
        return ledger.runs.recent(limit=limit)


def get_run(project: Project, run_id: str) -> dict[str, Any] | None:
    """One recorded run, or None."""
    with ledger_of(project) as ledger:
        return ledger.runs.get(run_id)


def list_partitions(
    project: Project, task: TaskBase, *, state: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    """A page of a partitioned task's partitions (a blocks task's (block, stage) rows) with their state."""
    if task.kind == "blocks":
        with ledger_of(project) as ledger:
            return [
                block_row(r)
                for r in ledger.blocks.list_rows(task.name, status=state, limit=limit, offset=offset)
            ]
    if not isinstance(task, PartitionedTask):
        return []
    with ledger_of(project) as ledger:
        return ledger.partitions.list_partitions(task, state=state, limit=limit, offset=offset)


def block_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A (block, stage) row in the shape of a partition: its name, keys, state, counts and file."""
    name = " ".join(p for p in (row["key_value"], row["block"], row["stage"]) if p)
    return {
        "partition": name,
        "keys": {"key": row["key_value"], "block": row["block"], "stage": row["stage"]},
        "state": row["status"],
        "attempts": row["attempts"],
        "last_error": row["error"],
        "path": row["artifact"],
        "rows": row["records_processed"],
        "bytes": row["bytes"],
        "exported_at": row["finished_at"],
        "window_start": row["block_start"],
        "window_end": row["block_end"],
        "stage": row["stage"],
        "block": row["block"],
        "records_total": row["records_total"],
        "records_errors": row["records_errors"],
    }


def health(project: Project) -> dict[str, str]:
    """Check the source and ledger databases and the destination: ``{"source": "ok", ...}``."""
    s = project.settings
    checks: dict[str, str] = {}
    for label, url in (("source", s.source_url), ("ledger", s.ledger_url)):
        try:  # a typo'd SQLite source path, opened, would be a new, empty database
            require_source(project, ledger=label == "ledger")
            conn = db.connect(url)
            try:
                with db.wrap_errors(url):
                    conn.execute("SELECT 1")
            finally:
                conn.close()
            checks[label] = "ok"
        except SluicegateError as exc:
            checks[label] = str(exc)
    try:  # no probe objects: /healthz is open to anyone and polled every few seconds
        open_destination(s.destination).check(write=False)
        checks["destination"] = "ok"
    except SluicegateError as exc:
        checks["destination"] = str(exc)
    return checks
