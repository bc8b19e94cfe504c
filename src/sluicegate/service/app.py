"""The FastAPI app: state built once, a lifespan that starts and stops the background parts, routers.

``create_app(project_dir, env, token=..., insecure=...)`` builds the app; ``sluicegate serve``
runs it with uvicorn. Routes (``service/routes/``) only call library functions, with their
dependencies read from ``app.state.service`` (``service/deps.py``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import operations
from ..config import load_project
from ..exceptions import ConfigError, LedgerError, PermissionDenied, SluicegateError, TransientError
from .deps import READ, ServiceState, authorized
from .metrics import Metrics
from .routes import exports, ops, runs, tasks
from .runs import RunManager
from .scheduler import Scheduler

log = logging.getLogger("sluicegate.service")


def create_app(
    project_dir: Path | str,
    env: Mapping[str, str],
    *,
    token: str | None,
    read_token: str | None = None,
    insecure: bool = False,
    scheduler: bool = True,
    banner: str | None = None,
) -> FastAPI:
    """Build the service for the project in ``project_dir``.

    Refuses (ConfigError) to build without a token unless ``insecure`` is set, and on a broken
    ``sluicegate.toml`` (broken task folders are reported by the routes). ``banner`` is logged
    when the service has started (``sluicegate serve`` passes the address it is bound to).
    """
    _check_tokens(token, read_token, insecure=insecure)
    root = Path(project_dir)
    settings = load_project(root, env).settings.service
    metrics = Metrics()
    state = ServiceState(
        root=root,
        env=env,
        token=token or None,
        read_token=(read_token or None) if token else None,
        public_metrics=settings.public_metrics,
        metrics=metrics,
        runs=RunManager(lambda: state.load(), metrics),
    )
    metrics.watch(lambda: _statuses(state))
    ticker = Scheduler(state.load, state.runs)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if scheduler:
            ticker.start()
        log.info(banner or "sluicegate service started", extra={"event": "start"})
        yield
        log.info("shutting down: waiting for the runs in hand", extra={"event": "stopping"})
        ticker.stop()
        state.runs.close()
        log.info("stopped", extra={"event": "stop"})

    app = FastAPI(
        title="sluicegate",
        version="0.1.0",
        lifespan=lifespan,
        description="Incremental, exactly-once exports from SQL databases to files.",
    )
    app.state.service = state
    _answer_errors(app)
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)  # inside the token check
    app.middleware("http")(_posts_need_the_api_token)
    for router in (exports.router, tasks.router, runs.router):
        app.include_router(router, dependencies=READ)
    app.include_router(ops.router)  # each route carries its own guard (/healthz has none)
    return app


def _statuses(state: ServiceState) -> list[dict[str, object]] | None:
    try:
        return operations.status(state.load())
    except SluicegateError:  # a scrape must not fail: sluicegate_ledger_up 0, the error in /healthz
        return None


def _check_tokens(token: str | None, read_token: str | None, *, insecure: bool) -> None:
    """Refuse to run without a token (unless ``insecure``), or with one that no client can send
    back (HTTP headers are read as Latin-1)."""
    if not token and not insecure:
        raise ConfigError(
            "SLUICEGATE_API_TOKEN is not set; set it (clients send 'Authorization: Bearer <token>') "
            "or pass --insecure-no-auth to run without authentication"
        )
    for name, value in (("SLUICEGATE_API_TOKEN", token), ("SLUICEGATE_READ_TOKEN", read_token)):
        if value and not (value.isascii() and value.isprintable() and " " not in value):
            raise ConfigError(
                f"{name} holds a space or a character outside printable ASCII; use a token such as "
                "the output of 'openssl rand -hex 32'"
            )


async def _posts_need_the_api_token(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Every POST starts a run and needs the API token, checked before the body is read: FastAPI
    reads a body before the route's guard, so a caller without a token got 422 (or 400) about
    its body instead of 401."""
    if request.method == "POST":
        try:
            authorized(request.app.state.service, request.headers.get("authorization"))
        except HTTPException as refused:
            return JSONResponse({"detail": refused.detail}, refused.status_code, refused.headers)
    return await call_next(request)


class BodyLimit:
    """413 with a sentence for a request body over ``[service] max_request_bytes``: by its
    Content-Length before any of it is read, or once the bytes read pass the limit. FastAPI's own
    limit answered plain text "Content Too Large", which named neither the limit nor what to do."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _refusal(self) -> HTTPException:
        return HTTPException(
            status_code=413,
            detail=f"the request body is larger than [service] max_request_bytes ({self.limit} bytes); "
            "send a smaller one (the fields: docs/service.md)",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            refused = self._refusal()
            await JSONResponse({"detail": refused.detail}, 413)(scope, receive, send)
            return
        read = 0

        async def limited() -> Message:
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            if read > self.limit:  # raised inside the route: the app's handler answers it
                raise self._refusal()
            return message

        await self.app(scope, limited, send)


def _answer_errors(app: FastAPI) -> None:
    """Answer invalid bodies and unanswered sluicegate errors with a message, never a bare 500."""
    app.add_exception_handler(RequestValidationError, _invalid_body)
    app.add_exception_handler(StarletteHTTPException, _unreadable_body)
    app.add_exception_handler(SluicegateError, _sluicegate_error)


async def _unreadable_body(request: Request, exc: Exception) -> Response:
    """A body FastAPI cannot decode (bytes that are not UTF-8, arrays nested too deep for Python's
    parser) is a 422 with a reason, as every other bad body; it was a 400 "There was an error
    parsing the body"."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        detail = (
            "the request body is not UTF-8 JSON, or is nested too deeply; send a JSON object in UTF-8"
            ' such as {"dry_run": true} (the fields: docs/service.md)'
        )
        return JSONResponse(status_code=422, content={"detail": detail})
    return await http_exception_handler(request, exc)


async def _invalid_body(request: Request, exc: Exception) -> JSONResponse:
    """422 with one sentence naming the first field that is wrong (``detail``, a string as in
    every other 422), and each error's place, message and type (``errors``). The value is not
    echoed: FastAPI's own answer repeats it, and a value JSON cannot hold (``1e400`` read as
    infinity) made that a 500."""
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
    detail = _sentence(errors)
    if errors and errors[0].get("type") == "json_invalid":  # its loc is the offset, no field
        where, reason = errors[0]["loc"][-1], exc.errors()[0].get("ctx", {}).get("error", "")
        detail = (
            f"the request body is not JSON ({reason} at character {where}); send a JSON object "
            'such as {"dry_run": true} (the fields: docs/service.md)'
        )
    sent = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if errors and errors[0].get("type") == "model_attributes_type" and "json" not in sent:
        # FastAPI reads a body of another type (curl -d sends a form's) as bytes: the JSON object
        # in it was answered "Input should be a valid dictionary".
        detail = (
            f"the request body was sent as {sent or 'no Content-Type'}, not JSON; send it with "
            "Content-Type: application/json (curl: -H 'Content-Type: application/json' or --json)"
        )
    return JSONResponse(status_code=422, content={"detail": detail, "errors": errors})


def _sentence(errors: list[dict[str, Any]]) -> str:
    """``field 'limit' of the request body: Input should be greater than 0; ...``."""
    if not errors:
        return "the request is not valid; see docs/service.md"
    place, *path = [str(p) for p in errors[0].get("loc", ())] or ["body"]
    where = {"body": "the request body", "query": "the query string", "path": "the URL"}.get(place, place)
    field = f"field {'.'.join(path)!r} of {where}" if path else where
    more = f" (and {len(errors) - 1} more problem(s), listed in 'errors')" if len(errors) > 1 else ""
    return f"{field}: {errors[0].get('msg', 'not valid')}{more}; fix it (the fields: docs/service.md)"


async def _sluicegate_error(_request: Request, exc: Exception) -> JSONResponse:
    """A sluicegate error a route did not answer itself (the ledger out of reach or locked, a
    broken ledger URL) gets its message: 503 when it may pass, else 500 (a role lacking its
    GRANTs is the deployment's to fix, not an outage to wait out)."""
    passing = isinstance(exc, TransientError | LedgerError) and not isinstance(exc, PermissionDenied)
    status = 503 if passing else 500
    return JSONResponse(status_code=status, content={"detail": str(exc)})
