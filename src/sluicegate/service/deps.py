"""What routes depend on: the service's state on ``app.state``, the project, the bearer tokens.

Two tokens: the API token (``SLUICEGATE_API_TOKEN``) may do everything; the read-only token
(``SLUICEGATE_READ_TOKEN``, optional, for dashboards) may only read. Every route except
``/healthz`` needs one of them, and ``/metrics`` may be opened with ``[service] public_metrics``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from ..config import load_project
from ..exceptions import LedgerError, SluicegateError, TransientError
from ..specs import Project, TaskBase
from ..validate import RepeatedKey, unique_keys
from .metrics import Metrics
from .runs import RunManager


@dataclass(kw_only=True)
class ServiceState:
    """Everything the routes share, built once by ``create_app`` and kept on ``app.state.service``."""

    root: Path
    env: Mapping[str, str]
    token: str | None
    read_token: str | None
    public_metrics: bool
    metrics: Metrics
    runs: RunManager

    def load(self) -> Project:
        """The project as it is now on disk (task edits take effect without a restart)."""
        return load_project(self.root, self.env)


def service(request: Request) -> ServiceState:
    """The service state of the app serving ``request``."""
    state: ServiceState = request.app.state.service
    return state


State = Annotated[ServiceState, Depends(service)]


def project(state: State) -> Project:
    """The project, or 500 with the configuration error."""
    try:
        return state.load()
    except SluicegateError as exc:
        raise HTTPException(status_code=500, detail=str(exc)) from None


ProjectDep = Annotated[Project, Depends(project)]


def _bearer(authorization: str | None, *tokens: str | None) -> bool:
    scheme, _, value = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and any(
        hmac.compare_digest(value.encode(), t.encode()) for t in tokens if t
    )


def _refuse(detail: str, status: int = 401) -> HTTPException:
    return HTTPException(status_code=status, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def authorized(state: State, authorization: Annotated[str | None, Header()] = None) -> None:
    """Require ``Authorization: Bearer <API token>`` (unless the service runs without a token)."""
    if state.token is None or _bearer(authorization, state.token):
        return
    if _bearer(authorization, state.read_token):
        raise _refuse("the read-only token cannot start runs; use the API token", 403)
    raise _refuse("missing or wrong bearer token")


def readable(state: State, authorization: Annotated[str | None, Header()] = None) -> None:
    """Require the API token or the read-only token (unless the service runs without a token)."""
    if state.token is None or _bearer(authorization, state.token, state.read_token):
        return
    raise _refuse("missing or wrong bearer token")


def metrics_readable(state: State, authorization: Annotated[str | None, Header()] = None) -> None:
    """Like :func:`readable`, unless ``[service] public_metrics`` opens ``/metrics``."""
    if not state.public_metrics:
        readable(state, authorization)


async def fields_once(request: Request) -> None:
    """422 for a JSON body that names a field twice: JSON keeps the last, so
    ``{"dry_run": true, "dry_run": false}`` started a real run. A body that is not JSON is left
    to FastAPI, which names it."""
    try:
        json.loads(await request.body(), object_pairs_hook=unique_keys)
    except RepeatedKey as repeated:
        raise HTTPException(
            status_code=422,
            detail=f"the request body {repeated}; send each field once (the fields: docs/service.md)",
        ) from None
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep: FastAPI answers it
        return


def params_once(request: Request) -> None:
    """422 for a query string that names a parameter twice: the route saw only the last, so
    ``?state=failed&state=pending`` listed the pending partitions alone, saying nothing."""
    seen: set[str] = set()
    for key, _ in request.query_params.multi_items():
        if key in seen:
            raise HTTPException(
                status_code=422, detail=f"the query string names parameter {key!r} twice; send each once"
            )
        seen.add(key)


GUARD = [Depends(authorized), Depends(params_once)]
BODY = [*GUARD, Depends(fields_once)]
READ = [Depends(readable), Depends(params_once)]


def task_or_404(p: Project, name: str) -> TaskBase:
    """The task called ``name``; 409 with its error when its folder does not load; else 404."""
    if name in p.tasks:
        return p.tasks[name]
    for problem in p.problems:
        if problem.name == name:
            raise HTTPException(status_code=409, detail=problem.message)
    raise HTTPException(status_code=404, detail="Task not found")


def library(call: Callable[[], object]) -> object:
    """Run a library call; a sluicegate error is a 422 with its message. The ledger or a database
    out of reach is not the request's fault: it goes to the app's handler, a 503 (it was a 422)."""
    try:
        return call()
    except (TransientError, LedgerError):
        raise
    except SluicegateError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
