"""Library calls behind the CLI commands other than ``run``: check, install, status, mark,
reexport, reset, tasks. Each opens what it needs, does one thing, and returns plain data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from . import capture
from .config import Project, TaskSpec
from .destinations import open_destination
from .exceptions import SluicegateError, UsageError
from .ledger import Ledger, TaskStatus, WatermarkLedger
from .masking import mask_url
from .partitions import coerce_value, render_path, sample_values
from .sources import open_source
from .watermarks import ExportRequest


def _ledger(project: Project) -> Ledger:
    s = project.settings
    ledger = Ledger(s.ledger_url, schema=s.ledger_schema)
    ledger.ensure_schema()
    return ledger


def check_project(project: Project) -> list[str]:
    """Validate every task against the live databases; return one line per problem."""
    problems = [p.message for p in project.problems]
    s = project.settings
    try:
        source = open_source(s.source_url)
    except SluicegateError as exc:
        return [*problems, f"[source] url {mask_url(s.source_url)}: {exc}"]
    try:
        for task in project.tasks.values():
            problems += _check_task(task, source)
    finally:
        source.close()
    try:
        open_destination(s.destination).check()
    except SluicegateError as exc:
        problems.append(f"{s.root / 'sluicegate.toml'} [destination] url: {exc}")
    try:
        with _ledger(project) as ledger:
            problems += _check_search_path(ledger, s.ledger_schema, s.root / "sluicegate.toml")
    except SluicegateError as exc:
        problems.append(f"{s.root / 'sluicegate.toml'} [ledger] url {mask_url(s.ledger_url)}: {exc}")
    return problems


def _check_search_path(ledger: Ledger, schema: str, toml: Any) -> list[str]:
    """A role named like the ledger schema sees the ledger schema first through "$user"."""
    if ledger.dialect.name != "postgresql":
        return []
    user, path = ledger.conn.execute("SELECT current_user, current_setting('search_path')").fetchone()
    if user == schema and "$user" in path:
        return [
            f"{toml} [ledger] schema: {schema!r} is also the name of the database role, so with search_path "
            f"{path!r} unqualified table names would resolve to the ledger schema first; "
            "pick another schema name"
        ]
    return []


def _check_task(task: TaskSpec, source: Any) -> list[str]:
    if task.archive is not None:
        return _check_archive(task, source)
    toml = task.folder / "task.toml"
    try:
        columns = {c.name for c in source.describe(task)}
    except SluicegateError as exc:
        return [str(exc)]
    problems = _missing_columns(task, columns)
    if task.time and task.time.zone_sql:
        try:
            zones = source.zones(task)
            bad = sorted({z for z in zones.values() if not _is_zone(z)})
            if bad:
                problems.append(
                    f"{toml} [time] zone_sql: {bad[0]!r} is not an IANA time zone; fix the zone data"
                )
        except SluicegateError as exc:
            problems.append(f"{toml} [time] zone_sql: the query failed: {exc}")
    if task.incremental is None:  # incremental paths were rendered with a sample window at load
        try:
            render_path(task, sample_values(task))
        except SluicegateError as exc:
            problems.append(f"{toml} path: {exc}")
    cap = task.capture
    if cap.mode in ("trigger", "scan") and cap.table:
        wanted = [cap.keys[k] for k in task.keys] + [c for c in (cap.time, cap.cursor) if c]
        try:
            q = source.dialect.quote
            source.execute(f"SELECT {', '.join(q(c) for c in wanted) or '1'} FROM {q(cap.table)} WHERE 1 = 0")
        except SluicegateError as exc:
            problems.append(
                f"{toml} [capture]: table {cap.table!r} or its columns {wanted} are not readable: {exc}"
            )
    return problems


def _missing_columns(task: TaskSpec, columns: set[str]) -> list[str]:
    """One problem per declared column (keys, time, order_by, primary_key) the select lacks."""
    toml = task.folder / "task.toml"
    problems = [
        f"{toml} keys: {key!r} is not a column of select.sql's result ({', '.join(sorted(columns))})"
        for key in task.keys
        if key not in columns
    ]
    if task.time and task.time.column not in columns:
        problems.append(f"{toml} [time] column: {task.time.column!r} is not a column of select.sql's result")
    for field, names in (("order_by", task.order_by), ("primary_key", task.primary_key)):
        problems += [
            f"{toml} {field}: {name!r} is not a column of select.sql's result"
            for name in names
            if name not in columns
        ]
    return problems


def _check_archive(task: TaskSpec, source: Any) -> list[str]:
    """Compile select.sql and delete.sql with a boundary; nothing is read or deleted."""
    from .archive import _bind

    assert task.archive is not None
    params = {"export_boundary": dt.datetime.now(dt.UTC)}
    checks = [
        (task.folder / "select.sql", f"SELECT * FROM ({_bind(task.select_sql, source.dialect)}) AS q LIMIT 0")
    ]
    if task.archive.delete_sql:
        checks.append(
            (task.folder / "delete.sql", f"EXPLAIN {_bind(task.archive.delete_sql, source.dialect)}")
        )
    problems = []
    for path, query in checks:
        try:
            source.execute(query, params)
        except SluicegateError as exc:
            problems.append(f"{path}: the query failed: {exc}; fix the SQL")
    return problems


def _is_zone(name: str) -> bool:
    from .partitions import zone_of

    try:
        zone_of(name)
    except SluicegateError:
        return False
    return True


def install(project: Project, names: Sequence[str] = ()) -> dict[str, list[str]]:
    """Create the capture triggers of every trigger-mode task; return trigger names per task."""
    s = project.settings
    tasks = [t for t in project.select(list(names)) if t.capture.mode == "trigger" or names]
    _ledger(project).close()
    with Ledger(s.source_url, schema=s.ledger_schema) as inbox:
        return {t.name: capture.install(t, inbox) for t in tasks}


def status(project: Project, names: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Per task: partitions pending, claimed, exported, failed, waiting, and the oldest pending age."""
    out = []
    with _ledger(project) as ledger:
        for task in project.select(list(names)):
            if task.incremental is not None:
                out.append(_incremental_status(task, WatermarkLedger(ledger)))
                continue
            st: TaskStatus = ledger.status(task)
            row = asdict(st)
            row["failures"] = [
                {"partition": pkey, "attempts": attempts, "error": error}
                for pkey, attempts, error in ledger.failures(task, limit=10)
            ]
            out.append(row)
    for problem in project.problems:
        if not names or problem.name in names:
            out.append({"task": problem.name, "error": problem.message})
    return out


def _incremental_status(task: TaskSpec, wm: WatermarkLedger) -> dict[str, Any]:
    rows = wm.list(task)
    marks = [r["watermark"] for r in rows if r["watermark"] is not None]
    return {
        "task": task.name,
        "kind": "incremental",
        "entities": len(rows),
        "claimed": sum(r["claimed"] for r in rows),
        "failed": sum(r["failed_end"] is not None for r in rows),
        "oldest_watermark": min(marks).isoformat() if marks else None,
        "failures": [
            {"partition": r["entity"], "attempts": r["attempts"], "error": r["last_error"]}
            for r in rows
            if r["failed_end"] is not None
        ],
    }


def mark(project: Project, task_name: str, assignments: Mapping[str, Any]) -> int:
    """Mark one partition of ``task_name`` changed; it is exported by the next run."""
    task = project.task(task_name)
    source = open_source(project.settings.source_url)
    try:
        with _ledger(project) as ledger:
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
    task = project.task(task_name)
    if (time_min or time_max) and task.time is None:
        raise UsageError(f"task {task.name!r} has no time key; --time-min/--time-max do not apply")
    wanted = {k: str(coerce_value(v)) for k, v in assignments.items()}

    def accept(keys: dict[str, Any], start: dt.datetime | None, end: dt.datetime | None) -> bool:
        if any(str(keys.get(k)) != v for k, v in wanted.items()):
            return False
        if time_min and end and end <= time_min:
            return False
        return not (time_max and start and start >= time_max)

    with _ledger(project) as ledger:
        return ledger.reexport(task, accept)


def reset_failed(project: Project, task_name: str) -> int:
    """Re-queue the parked (failed) partitions of ``task_name``."""
    task = project.task(task_name)
    with _ledger(project) as ledger:
        return ledger.reset_failed(task)


def describe_tasks(project: Project) -> list[dict[str, Any]]:
    """The tasks of the project, as JSON-ready dicts (broken ones with their error)."""
    out: list[dict[str, Any]] = []
    for task in project.tasks.values():
        out.append(
            {
                "name": task.name,
                "kind": task.kind,
                "description": task.description,
                "format": task.format,
                "keys": list(task.key_names),
                "time": asdict(task.time) if task.time else None,
                "capture": task.capture.mode,
                "path": task.path,
                "schedule": task.schedule,
                "select": task.select_sql.strip(),
            }
        )
    out += [{"name": p.name, "error": p.message} for p in project.problems]
    return sorted(out, key=lambda t: t["name"])


def incremental_task(project: Project, name: str | None) -> TaskSpec:
    """The incremental task called ``name``, or the only one when ``name`` is None."""
    if name is not None:
        task = project.task(name)
        if task.incremental is None:
            raise UsageError(f"task {name!r} is not an incremental task")
        return task
    found = [t for t in project.tasks.values() if t.incremental is not None]
    if len(found) != 1:
        names = ", ".join(t.name for t in found) or "none"
        raise UsageError(f"name the incremental task with --task; the project has: {names}")
    return found[0]


def request_from_options(
    *,
    export_type: str | None,
    ignore_watermark: bool,
    time_min: dt.datetime | None,
    time_max: dt.datetime | None,
    entities: Sequence[str],
    destination: str | None,
    tag: str | None,
) -> ExportRequest | None:
    """Build an incremental export request from ``run`` options (None when none were given)."""
    if not (export_type or ignore_watermark or time_min or time_max or entities or destination or tag):
        return None
    if (time_min or time_max) and not (ignore_watermark or destination):
        raise UsageError(
            "--time-min/--time-max re-export a window: add --ignore-watermark (or --destination)"
        )
    if ignore_watermark and not (time_min and time_max):
        raise UsageError("--ignore-watermark needs --time-min and --time-max: the window to re-export")
    if time_min and time_max and time_min >= time_max:
        raise UsageError(
            f"--time-min {time_min.isoformat()} must be before --time-max {time_max.isoformat()}"
        )
    return ExportRequest(
        export_type=export_type,
        start=time_min,
        end=time_max,
        ignore_watermark=ignore_watermark,
        entities=tuple(entities),
        tag=tag,
        destination=destination,
    )


def watermarks(project: Project, task_name: str) -> list[dict[str, Any]]:
    """Every watermark of an incremental task."""
    task = incremental_task(project, task_name)
    with _ledger(project) as ledger:
        return WatermarkLedger(ledger).list(task)


def delete_watermark(project: Project, task_name: str, entity: str) -> bool:
    """Delete one entity's watermark; its next export starts from the bootstrap."""
    task = incremental_task(project, task_name)
    with _ledger(project) as ledger:
        return WatermarkLedger(ledger).delete(task, entity)
