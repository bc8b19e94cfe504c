"""What a project needs before its first export, and what check warns about.

Capture triggers see only the changes made after ``sluicegate install``: :func:`uncaptured_rows`
counts the rows they will never see, :func:`backfill` marks the partitions of those rows, and
:func:`check_warnings` lists what would export nothing (or less safely) without failing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from . import capture, capture_triggers, partitions
from .destination_id import unbound_notes
from .destinations import open_destination
from .drivers import partitioned
from .drivers.partitioned import Task as PartitionedTask
from .exceptions import ConfigError, SluicegateError, UsageError
from .export_request import time_range
from .ledger import Ledger
from .operations import inbox_count, inbox_of, ledger_of, partitioned_task
from .sources import open_source
from .specs import Project


def no_tasks(project: Project) -> str | None:
    """Why ``run``, ``status`` and ``check`` of a project without a task do nothing, or None."""
    if project.tasks or project.problems:
        return None
    tasks = project.settings.root / "tasks"
    if tasks.exists() and not tasks.is_dir():
        root = project.settings.root
        return f"{root} has no tasks: {tasks} is a file, not a folder; make it a folder of tasks"
    stray = [tasks / name for name in ("task.toml", "select.sql") if (tasks / name).is_file()]
    if stray:  # the files of a task put straight into tasks/, not into a folder of their own
        return (
            f"{project.settings.root} has no tasks: {stray[0]} is not in a task folder; move "
            f"{' and '.join(p.name for p in stray)} into a folder named after the task, "
            f"such as {tasks / 'mytask'}/"
        )
    return (
        f"{project.settings.root} has no tasks: add a folder per task under its tasks/ folder"
        " (`sluicegate init FOLDER` writes an example to start from)"
    )


def check_warnings(project: Project) -> list[str]:
    """Things that are not errors but weaken or silence exports: a destination that cannot
    fence writes as strongly (see destinations), capture triggers not installed, or an empty
    ledger for a task whose source already has rows (run backfill)."""
    warnings = [warning] if (warning := no_tasks(project)) else []
    try:
        warnings += open_destination(project.settings.destination).warnings()
    except SluicegateError as exc:  # check_project reports an unreachable destination
        warnings.append(f"could not ask the destination what it guarantees: {exc}")
    zoned = [t for t in project.tasks.values() if isinstance(t, PartitionedTask) and t.time and t.time.zone]
    if zoned:
        with ledger_of(project) as ledger:
            warnings += [w for t in zoned if (w := _zone_warning(t, ledger))]
    warnings += _unused_triggers(project)
    triggered = [
        t for t in project.tasks.values() if isinstance(t, PartitionedTask) and t.capture.mode == "trigger"
    ]
    if not triggered:
        return warnings
    source = open_source(project.settings.source_url)
    try:
        with ledger_of(project) as ledger:
            for task in triggered:
                warnings += _capture_warnings(task, source, ledger)
    finally:
        source.close()
    return warnings


def check_notes(project: Project) -> list[str]:
    """Information for ``check``, neither a problem nor a warning: the tasks whose first run will
    bind them to the destination (see destination_id)."""
    try:
        destination = open_destination(project.settings.destination)
    except SluicegateError:  # check_project reports an unreachable destination
        return []
    with ledger_of(project) as ledger:
        return unbound_notes(project, ledger, destination)


def _unused_triggers(project: Project) -> list[str]:
    """Changes waiting in the inbox for a task that no longer reads it (``[capture] mode`` changed
    from trigger): its triggers go on recording every write, and the inbox grew for good."""
    tasks = [
        t for t in project.tasks.values() if isinstance(t, PartitionedTask) and t.capture.mode != "trigger"
    ]
    if not tasks:
        return []
    out = []
    with ledger_of(project) as ledger, inbox_of(project, ledger) as inbox:
        for task in tasks:
            if inbox is not None and (count := inbox_count(inbox, task.name)):
                out.append(
                    f"task {task.name}: {count} change(s) recorded by capture triggers wait in the inbox, but"
                    f" its [capture] mode is {task.capture.mode!r}, so no run reads them; drop its triggers"
                    f" ({', '.join(capture_triggers.trigger_names(task))}) from the table they are on"
                )
    return out


def _zone_warning(task: PartitionedTask, ledger: Ledger) -> str | None:
    """Partitions cut in another zone than the task's: their files overlap the new zone's periods."""
    assert task.time is not None and task.time.zone is not None
    count = ledger.partitions.other_zones(task, task.time.zone)
    if not count:
        return None
    return (
        f"task {task.name}: {count} partition(s) were cut in another zone than its zone {task.time.zone}, so "
        f"their files overlap the new zone's {task.time.grain}s; run 'sluicegate reexport {task.name}' to "
        "re-cut them, or keep those files as they are"
    )


def _capture_warnings(task: PartitionedTask, source: Any, ledger: Ledger) -> list[str]:
    out = []
    try:
        missing = capture_triggers.missing_triggers(task, source, ledger.schema)
        if missing:
            out.append(
                f"task {task.name}: capture triggers are not installed on {task.capture.table}"
                f" ({', '.join(missing)}), so those changes go unseen; run 'sluicegate install {task.name}'"
            )
        counts = ledger.partitions.status(task)
        known = counts.pending + counts.claimed + counts.exported + counts.failed + counts.waiting
        if not known and capture_triggers.existing_rows(task, source):
            out.append(
                f"task {task.name}: the ledger has no partition while {task.capture.table} has rows; "
                f"run 'sluicegate backfill {task.name}' to mark the rows that were there before install"
            )
    except SluicegateError as exc:
        out.append(f"task {task.name}: could not inspect its capture: {exc}")
    return out


def uncaptured_rows(project: Project, names: Sequence[str] = ()) -> dict[str, int]:
    """Per trigger task whose triggers are not installed yet: the rows its triggers will never see."""
    tasks = [partitioned_task(project, n) for n in names] if names else list(project.tasks.values())
    source = open_source(project.settings.source_url)
    out = {}
    try:
        for task in tasks:
            if not isinstance(task, PartitionedTask) or task.capture.mode != "trigger":
                continue
            if problems := capture_triggers.capture_problems(task, source):  # before any trigger is made
                raise ConfigError("; ".join(problems))
            if not capture_triggers.installed_triggers(task, source, project.settings.ledger_schema):
                out[task.name] = capture_triggers.existing_rows(task, source)
    finally:
        source.close()
    return out


def backfill(
    project: Project,
    task_name: str,
    *,
    time_min: dt.datetime | None = None,
    time_max: dt.datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Mark every partition of ``task_name`` that has rows (within the time range); return how many."""
    task = partitioned_task(project, task_name)
    if (time_min or time_max) and task.time is None:
        raise UsageError(f"task {task.name!r} has no time key; --time-min and --time-max do not apply")
    time_range(time_min, time_max)
    source = open_source(project.settings.source_url)
    try:
        if problems := partitioned.check(task, source):  # a misspelt column: exit 2, naming it
            raise ConfigError("; ".join(problems))
        with ledger_of(project) as ledger:  # a partition's id is its keys in the order of keys
            partitions.check_key_order(task, ledger.partitions, str(task.folder / "task.toml"))
            return capture.backfill(
                task, ledger, source, time_min=time_min, time_max=time_max, progress=progress
            )
    finally:
        source.close()
