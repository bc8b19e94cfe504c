"""FastAPI routes: the Common Knowledge service's four endpoints, then ours."""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query
from fastapi.responses import HTMLResponse, PlainTextResponse
from pydantic import BaseModel, Field

from .. import operations
from ..config import Project, load_project
from ..db import connect, dialect_of
from ..destinations import open_destination
from ..engine import RunOptions
from ..exceptions import ConfigError, SluicegateError
from ..ledger import Ledger
from . import metrics as metrics_text
from .page import render_page
from .runs import Metrics, RunManager
from .scheduler import Scheduler

# ---------------------------------------------------------------------------- models


class ExportTask(BaseModel):
    """A task as the Common Knowledge service listed it."""

    name: str
    select_query: str
    delete_query: str | None = None


class StatusOk(BaseModel):
    """The original's answer, plus the id of the run it started."""

    status: Literal["Ok"] = "Ok"
    run_id: str


class TaskInfo(BaseModel):
    """A task with its configuration, ledger counts, or the error that keeps it from loading."""

    name: str
    kind: str | None = None
    description: str | None = None
    format: str | None = None
    keys: list[str] = Field(default_factory=list)
    capture: str | None = None
    path: str | None = None
    schedule: str | None = None
    error: str | None = None
    counts: dict[str, Any] | None = None


class RunRequest(BaseModel):
    """The options of ``sluicegate run``."""

    limit: int | None = Field(default=None, ge=1)
    dry_run: bool = False
    reexport: bool = Field(default=False, description="Partitioned tasks: queue the time window again first.")
    time_min: dt.datetime | None = None
    time_max: dt.datetime | None = None
    ignore_watermark: bool = False
    export_type: Literal["daily", "hourly", "instant"] | None = None
    entities: list[str] | None = None
    tag: str | None = None


class RunAccepted(BaseModel):
    """A run was recorded and started."""

    run_id: str


class RunInfo(BaseModel):
    """A run as recorded on the ledger."""

    id: str
    task: str
    tag: str | None = None
    state: Literal["running", "succeeded", "failed", "abandoned"]
    request: dict[str, Any] | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    summary: list[dict[str, Any]] | None = None


class PartitionInfo(BaseModel):
    """One partition and its state."""

    partition: str
    keys: dict[str, Any]
    state: str
    version: int
    exported_version: int
    attempts: int
    last_error: str | None = None
    path: str | None = None
    rows: int | None = None
    bytes: int | None = None
    exported_at: dt.datetime | None = None
    window_start: dt.datetime | None = None
    window_end: dt.datetime | None = None


class Health(BaseModel):
    """What /healthz checked."""

    status: Literal["ok", "failing"]
    checks: dict[str, str]


# ---------------------------------------------------------------------------- the app


def create_app(  # noqa: C901 - the routes are small closures over this app's state
    project_dir: Path | str,
    env: Mapping[str, str],
    *,
    token: str | None,
    insecure: bool = False,
    scheduler: bool = True,
) -> FastAPI:
    """Build the service for the project in ``project_dir``.

    Refuses (ConfigError) to build without a token unless ``insecure`` is set.
    """
    if not token and not insecure:
        raise ConfigError(
            "SLUICEGATE_API_TOKEN is not set; set it (clients send 'Authorization: Bearer <token>') "
            "or pass --insecure-no-auth to run without authentication"
        )
    root = Path(project_dir)
    load_project(root, env)  # fail at start-up on a broken sluicegate.toml; broken tasks are reported later
    metrics = Metrics()

    def load() -> Project:
        return load_project(root, env)

    runs = RunManager(load, metrics)
    ticker = Scheduler(load, runs)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if scheduler:
            ticker.start()
        yield
        ticker.stop()
        runs.close()

    app = FastAPI(
        title="sluicegate",
        version="0.1.0",
        lifespan=lifespan,
        description="Incremental, exactly-once exports from SQL databases to files.",
    )
    app.state.token = token
    app.state.runs = runs

    def authorized(authorization: Annotated[str | None, Header()] = None) -> None:
        if app.state.token is None:
            return
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), app.state.token.encode()):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    guard = [Depends(authorized)]

    def project() -> Project:
        try:
            return load()
        except SluicegateError as exc:
            raise HTTPException(status_code=500, detail=str(exc)) from None

    # -------------------------------------------------------------- the original's endpoints

    @app.get("/exports", response_model=list[ExportTask], tags=["compatible"])
    def list_exports() -> list[ExportTask]:
        """Tasks with their select and delete queries (the Common Knowledge service's list)."""
        p = project()
        return [_export_task(t) for t in sorted(p.tasks.values(), key=lambda t: t.name)]

    @app.get("/exports/{name}", response_model=ExportTask, tags=["compatible"])
    def get_export(name: str) -> ExportTask:
        """One task; 404 when unknown."""
        p = project()
        if name not in p.tasks:
            raise HTTPException(status_code=404, detail="Task not found")
        return _export_task(p.tasks[name])

    @app.post("/exports", response_model=StatusOk, dependencies=guard, tags=["compatible"])
    def run_all_exports() -> StatusOk:
        """Run every task in the background."""
        return StatusOk(run_id=runs.start([], RunOptions(), label="*"))

    @app.post("/exports/{name}", response_model=StatusOk, dependencies=guard, tags=["compatible"])
    def run_export(name: str) -> StatusOk:
        """Run one task in the background; 404 when unknown."""
        if name not in project().tasks:
            raise HTTPException(status_code=404, detail="Task not found")
        return StatusOk(run_id=runs.start([name], RunOptions(), label=name))

    # -------------------------------------------------------------- ours

    @app.get("/tasks", response_model=list[TaskInfo], tags=["tasks"])
    def list_tasks() -> list[TaskInfo]:
        """Every task; a broken task folder is listed with its error."""
        return [_task_info(t) for t in operations.describe_tasks(project())]

    @app.get("/tasks/{name}", response_model=TaskInfo, tags=["tasks"])
    def get_task(name: str) -> TaskInfo:
        """One task with its ledger counts."""
        p = project()
        described = {t["name"]: t for t in operations.describe_tasks(p)}
        if name not in described:
            raise HTTPException(status_code=404, detail="Task not found")
        info = _task_info(described[name])
        if info.error is None:
            info.counts = operations.status(p, [name])[0]
        return info

    @app.get("/tasks/{name}/partitions", response_model=list[PartitionInfo], tags=["tasks"])
    def list_partitions(
        name: str,
        state: Annotated[
            Literal["pending", "failed", "exported", "waiting", "claimed"] | None, Query()
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> list[PartitionInfo]:
        """A page of a partitioned task's partitions, optionally of one state."""
        p = project()
        task = _task_or_404(p, name)
        s = p.settings
        with Ledger(s.ledger_url, schema=s.ledger_schema) as ledger:
            ledger.ensure_schema()
            rows = ledger.list_partitions(task, state=state, limit=limit, offset=offset)
        return [PartitionInfo(**r) for r in rows]

    @app.post(
        "/tasks/{name}/runs", response_model=RunAccepted, status_code=202, dependencies=guard, tags=["runs"]
    )
    def start_run(name: str, body: RunRequest | None = None) -> RunAccepted:
        """Start a run of one task with the options of ``sluicegate run``."""
        body = body or RunRequest()
        p = project()
        task = _task_or_404(p, name)
        try:
            options = _run_options(p, task, body)
        except SluicegateError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return RunAccepted(run_id=runs.start([name], options, label=name))

    @app.get("/runs", response_model=list[RunInfo], tags=["runs"])
    def list_runs(limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[RunInfo]:
        """The most recent runs, from the ledger (any replica)."""
        s = project().settings
        with Ledger(s.ledger_url, schema=s.ledger_schema) as ledger:
            ledger.ensure_schema()
            return [RunInfo(**r) for r in ledger.list_runs(limit=limit)]

    @app.get("/runs/{run_id}", response_model=RunInfo, tags=["runs"])
    def get_run(run_id: str) -> RunInfo:
        """One run: state, per task counts and errors."""
        s = project().settings
        try:
            with Ledger(s.ledger_url, schema=s.ledger_schema) as ledger:
                ledger.ensure_schema()
                found = ledger.get_run(run_id)
        except ValueError:
            found = None
        if found is None:
            raise HTTPException(status_code=404, detail="Run not found")
        return RunInfo(**found)

    @app.get("/healthz", response_model=Health, tags=["operations"])
    def healthz() -> Any:
        """Check the source and ledger databases and the destination."""
        checks: dict[str, str] = {}
        try:
            s = project().settings
        except HTTPException as exc:
            return _health({"config": str(exc.detail)})
        for label, url in (("source", s.source_url), ("ledger", s.ledger_url)):
            try:
                dialect_of(url)
                conn = connect(url)
                conn.execute("SELECT 1")
                conn.close()
                checks[label] = "ok"
            except SluicegateError as exc:
                checks[label] = str(exc)
        try:
            open_destination(s.destination).check()
            checks["destination"] = "ok"
        except SluicegateError as exc:
            checks["destination"] = str(exc)
        return _health(checks)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
    def metrics_endpoint() -> str:
        """Prometheus text: partitions by state, exports, rows, bytes, failures, durations, pending age."""
        p = project()
        return metrics_text.render(operations.status(p), metrics)

    @app.get("/", response_class=HTMLResponse, tags=["operations"])
    def status_page() -> str:
        """A small status page: counts, recent runs, and a grid of partitions by state."""
        return render_page(project())

    return app


def _health(checks: dict[str, str]) -> Any:
    from fastapi.responses import JSONResponse

    ok = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ok else "failing", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


def _export_task(task: Any) -> ExportTask:
    return ExportTask(
        name=task.name,
        select_query=task.select_sql.strip(),
        delete_query=task.archive.delete_sql if task.archive else None,
    )


def _task_info(described: dict[str, Any]) -> TaskInfo:
    if "error" in described:
        return TaskInfo(name=described["name"], error=described["error"])
    return TaskInfo(
        name=described["name"],
        kind=described["kind"],
        description=described["description"],
        format=described["format"],
        keys=described["keys"],
        capture=described["capture"],
        path=described["path"],
        schedule=described.get("schedule"),
    )


def _task_or_404(p: Project, name: str) -> Any:
    if name in p.tasks:
        return p.tasks[name]
    for problem in p.problems:
        if problem.name == name:
            raise HTTPException(status_code=409, detail=problem.message)
    raise HTTPException(status_code=404, detail="Task not found")


def _run_options(p: Project, task: Any, body: RunRequest) -> RunOptions:
    request = None
    if task.incremental is not None:
        request = operations.request_from_options(
            export_type=body.export_type,
            ignore_watermark=body.ignore_watermark,
            time_min=body.time_min,
            time_max=body.time_max,
            entities=body.entities or (),
            destination=None,
            tag=body.tag,
        )
    elif body.reexport and not body.dry_run:
        operations.reexport(p, task.name, {}, time_min=body.time_min, time_max=body.time_max)
    return RunOptions(limit=body.limit, dry_run=body.dry_run, request=request)
