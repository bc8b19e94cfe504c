"""The Common Knowledge data-export service's four endpoints, unchanged for its clients."""

from __future__ import annotations

from fastapi import APIRouter

from ...drivers.archive import Task as ArchiveTask
from ...options import RunOptions
from ...specs import TaskBase
from ..deps import GUARD, ProjectDep, State, task_or_404
from ..models import ExportTask, StatusOk

router = APIRouter(tags=["compatible"])


def _export_task(task: TaskBase) -> ExportTask:
    delete = task.delete_sql if isinstance(task, ArchiveTask) else None
    return ExportTask(name=task.name, select_query=task.select_sql.strip(), delete_query=delete)


@router.get("/exports", response_model=list[ExportTask])
def list_exports(p: ProjectDep) -> list[ExportTask]:
    """Tasks with their select and delete queries (the Common Knowledge service's list)."""
    return [_export_task(t) for t in sorted(p.tasks.values(), key=lambda t: t.name)]


@router.get("/exports/{name}", response_model=ExportTask)
def get_export(name: str, p: ProjectDep) -> ExportTask:
    """One task; 404 when unknown, 409 with its error when its folder does not load."""
    return _export_task(task_or_404(p, name))


@router.post("/exports", response_model=StatusOk, dependencies=GUARD)
def run_all_exports(state: State) -> StatusOk:
    """Run every task in the background."""
    return StatusOk(run_id=state.runs.start([], RunOptions(), label="*"))


@router.post("/exports/{name}", response_model=StatusOk, dependencies=GUARD)
def run_export(name: str, state: State, p: ProjectDep) -> StatusOk:
    """Run one task in the background; 404 when unknown, 409 when its folder does not load."""
    task_or_404(p, name)  # a broken task was "not found", though /tasks/{name} gave its error
    return StatusOk(run_id=state.runs.start([name], RunOptions(), label=name))
