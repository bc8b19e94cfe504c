"""Runs recorded on the ledger: any replica answers for any run."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from ... import operations
from ..deps import ProjectDep
from ..models import RunInfo

router = APIRouter(tags=["runs"])


@router.get("/runs", response_model=list[RunInfo])
def list_runs(p: ProjectDep, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[RunInfo]:
    """The most recent runs, from the ledger (any replica)."""
    return [RunInfo(**r) for r in operations.list_runs(p, limit=limit)]


@router.get("/runs/{run_id}", response_model=RunInfo)
def get_run(run_id: str, p: ProjectDep) -> RunInfo:
    """One run: state, per task counts and errors."""
    found = operations.get_run(p, run_id)
    if found is None:
        raise HTTPException(status_code=404, detail="Run not found")
    return RunInfo(**found)
