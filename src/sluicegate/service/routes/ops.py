"""Operations: health, Prometheus metrics and the status page."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ... import operations
from ..deps import READ, ProjectDep, State, metrics_readable, project
from ..metrics import CONTENT_TYPE
from ..models import Health
from ..page import render_page

router = APIRouter(tags=["operations"])


# HEAD too: uptime monitors and some load balancers probe with it (405 read as "down"). Its
# own operation id: one route of two methods gave the OpenAPI schema a duplicate id (a warning).
@router.head("/healthz", response_model=Health, operation_id="healthz_head", include_in_schema=False)
@router.get("/healthz", response_model=Health)
def healthz(state: State) -> Any:
    """Check the source and ledger databases and the destination; 503 when one fails."""
    try:
        checks = operations.health(project(state))
    except HTTPException as exc:
        checks = {"config": str(exc.detail)}
    ok = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ok else "failing", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", dependencies=[Depends(metrics_readable)])
def metrics(state: State) -> Response:
    """Prometheus text: partitions by state, exports, rows, bytes, failures, durations, pending age."""
    return Response(content=state.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/", response_class=HTMLResponse, dependencies=READ)
def status_page(p: ProjectDep) -> str:
    """A small status page: counts, recent runs, and a grid of partitions by state."""
    return render_page(p)
