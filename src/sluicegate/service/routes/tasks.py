"""Tasks: list them, one with its counts, a page of its partitions, start a run of it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query

from ... import block_requests, export_request, operations
from ...drivers.incremental import Task as IncrementalTask
from ...drivers.partitioned import Task as PartitionedTask
from ...exceptions import UsageError
from ...options import RunOptions
from ...specs import Project, TaskBase
from ..deps import BODY, ProjectDep, State, library, task_or_404
from ..models import MAX_COUNT, PartitionInfo, RunAccepted, RunRequest, TaskInfo

router = APIRouter()


def _task_info(described: dict[str, Any]) -> TaskInfo:
    if "error" in described:
        return TaskInfo(name=described["name"], error=described["error"])
    return TaskInfo(
        name=described["name"],
        kind=described["kind"],
        description=described["description"],
        format=described["format"],
        keys=described.get("keys") or [],
        capture=described.get("capture"),
        path=described["path"],
        schedule=described.get("schedule"),
    )


@router.get("/tasks", response_model=list[TaskInfo], tags=["tasks"])
def list_tasks(p: ProjectDep) -> list[TaskInfo]:
    """Every task; a broken task folder is listed with its error."""
    return [_task_info(t) for t in operations.describe_tasks(p)]


@router.get("/tasks/{name}", response_model=TaskInfo, tags=["tasks"])
def get_task(name: str, p: ProjectDep) -> TaskInfo:
    """One task with its ledger counts."""
    described = {t["name"]: t for t in operations.describe_tasks(p)}
    if name not in described:
        raise HTTPException(status_code=404, detail="Task not found")
    info = _task_info(described[name])
    if info.error is None:
        info.counts = operations.status(p, [name])[0]
    return info


@router.get("/tasks/{name}/partitions", response_model=list[PartitionInfo], tags=["tasks"])
def list_partitions(
    name: str,
    p: ProjectDep,
    state: Annotated[
        Literal["pending", "failed", "exported", "waiting", "claimed", "running", "done", "no_data"] | None,
        Query(),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_COUNT)] = 0,
) -> list[PartitionInfo]:
    """A page of a task's partitions (a blocks task's (block, stage) rows), optionally of one state."""
    task = task_or_404(p, name)
    rows = operations.list_partitions(p, task, state=state, limit=limit, offset=offset)
    return [PartitionInfo(**r) for r in rows]


@router.post(
    "/tasks/{name}/runs", response_model=RunAccepted, status_code=202, dependencies=BODY, tags=["runs"]
)
def start_run(name: str, state: State, p: ProjectDep, body: RunRequest | None = None) -> RunAccepted:
    """Start a run of one task with the options of ``sluicegate run``."""
    task = task_or_404(p, name)
    found = library(lambda: _run_options(p, task, body or RunRequest()))
    assert isinstance(found, tuple)
    options, warnings = found
    return RunAccepted(run_id=state.runs.start([name], options, label=name), warnings=warnings)


def _run_options(p: Project, task: TaskBase, body: RunRequest) -> tuple[RunOptions, list[str]]:
    """The run's options, and warnings about what it leaves out of the request."""
    operations.check_limit([task], body.limit, named=True)
    if body.reexport and not isinstance(task, PartitionedTask):  # it ran without it, saying nothing; the
        # real reason before dry_run's, which names a remedy (send it without dry_run) that fails too
        hint = " (send ignore_watermark with time_min and time_max to export a window again)"
        raise UsageError(
            f"reexport applies to partitioned tasks, not {task.kind} task {task.name!r}"
            + (hint if isinstance(task, IncrementalTask) else "")
        )
    if body.reexport and body.dry_run:  # the dry run planned without the re-export, saying nothing
        raise UsageError(
            "reexport and dry_run cannot be combined: a dry run changes nothing, so it cannot queue the"
            f" window again to plan it; see the window's exported partitions (GET /tasks/{task.name}"
            "/partitions?state=exported), or send reexport without dry_run to queue and export them"
        )
    ignored = [name for name in ("export_type", "ignore_watermark", "entities", "tag") if getattr(body, name)]
    if ignored and not isinstance(task, IncrementalTask):  # ignored: the run went on without them
        # (a blocks run too: entities did not choose its key values)
        raise UsageError(f"{ignored[0]} applies to incremental tasks, not {task.kind} task {task.name!r}")
    request, blocks, note = None, None, None
    if task.kind == "blocks":  # the range's blocks, as `sluicegate blocks TASK --time-min --time-max`
        if body.time_max is not None:
            blocks, note = block_requests.blocks_request(
                p,
                task,
                time_max=body.time_max.isoformat(),
                time_min=None if body.time_min is None else body.time_min.isoformat(),
            )
        elif body.time_min is not None:
            raise UsageError("time_min needs time_max: the range of blocks to run ends at time_max")
        return RunOptions(limit=body.limit, dry_run=body.dry_run, blocks=blocks), [note] if note else []
    if (body.time_min or body.time_max) and not (isinstance(task, IncrementalTask) or body.reexport):
        raise UsageError(
            f"time_min and time_max do not apply to {task.kind} task {task.name!r} "
            "(a partitioned task takes them with reexport)"
        )
    if isinstance(task, IncrementalTask):
        request = export_request.request_from_options(
            export_type=body.export_type,
            ignore_watermark=body.ignore_watermark,
            time_min=body.time_min,
            time_max=body.time_max,
            entities=body.entities or (),
            destination=None,
            tag=body.tag,
        )
    elif body.reexport:
        operations.reexport(p, task.name, {}, time_min=body.time_min, time_max=body.time_max)
    return RunOptions(limit=body.limit, dry_run=body.dry_run, request=request), []
