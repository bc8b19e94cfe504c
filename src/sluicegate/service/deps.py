"""What routes depend on: the service's state on ``app.state``, the project, the bearer token."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from ..config import load_project
from ..exceptions import SluicegateError
from ..specs import Project, TaskBase
from .metrics import Metrics
from .runs import RunManager


@dataclass(kw_only=True)
class ServiceState:
    """Everything the routes share, built once by ``create_app`` and kept on ``app.state.service``."""

    root: Path
    env: Mapping[str, str]
    token: str | None
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


def authorized(state: State, authorization: Annotated[str | None, Header()] = None) -> None:
    """Require ``Authorization: Bearer <token>`` (unless the service runs without a token)."""
    if state.token is None:
        return
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), state.token.encode()):
        raise HTTPException(
            status_code=401, detail="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


GUARD = [Depends(authorized)]


def task_or_404(p: Project, name: str) -> TaskBase:
    """The task called ``name``; 409 with its error when its folder does not load; else 404."""
    if name in p.tasks:
        return p.tasks[name]
    for problem in p.problems:
        if problem.name == name:
            raise HTTPException(status_code=409, detail=problem.message)
    raise HTTPException(status_code=404, detail="Task not found")


def library(call: Callable[[], object]) -> object:
    """Run a library call; a sluicegate error is a 422 with its message."""
    try:
        return call()
    except SluicegateError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
