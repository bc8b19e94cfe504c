"""``sluicegate serve``: bind the address, say what is being served, run the FastAPI app.

The socket is bound here, before uvicorn starts, so an address in use is one
``sluicegate: error:`` line and exit 2 like every other usage error. The service logs one
line when it starts (address, tasks, schedules, auth), one per run started and finished,
and one on shutdown; ``--log-format json`` writes them as JSON lines for log collectors.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import TYPE_CHECKING

import click

from ..config import dsl_folder
from ..exceptions import UsageError
from ..masking import ScrubFilter
from ..specs import Project
from .app import CliState, handled, load, main

if TYPE_CHECKING:
    import socket

DEFAULT_PORT = 8000
DSL_PORT = 8002  # the Common Knowledge data-export service's port
LOG_FIELDS = ("event", "run_id", "label", "tasks", "seconds", "exported", "failed")


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the record's known extras."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        out = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: getattr(record, k) for k in LOG_FIELDS if hasattr(record, k)})
        if record.exc_info or record.exc_text:  # exc_text: masked by ScrubFilter
            out["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(out, default=str, ensure_ascii=False)


def service_logging(project: Project, log_format: str) -> None:
    """Send the service's own lines (``sluicegate.service``) to stderr, at INFO, in ``log_format``."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s sluicegate serve: %(message)s"))
    handler.addFilter(ScrubFilter(project.settings.source_url, project.settings.ledger_url))
    logger = logging.getLogger("sluicegate.service")
    logger.handlers[:] = [handler]
    logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
    logger.propagate = False
    if log_format == "json":  # everything else (warnings of runs, drivers) as JSON lines too
        for root_handler in logging.getLogger().handlers:
            root_handler.setFormatter(JsonLines())


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port``; UsageError naming the address when it cannot."""
    import socket

    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
    except OSError as exc:
        raise UsageError(f"--host {host!r} is not an address this machine can bind: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; stop what uses it or pick another --port"
        ) from None
    sock.set_inheritable(True)
    return sock


def banner(project: Project, address: str, *, auth: str) -> str:
    """The start-up line: address, tasks, schedules, auth."""
    public_metrics = project.settings.service.public_metrics
    tasks = sorted(project.tasks)
    schedules = [f"{t.name} {t.schedule}" for t in project.tasks.values() if t.schedule]
    broken = f", {len(project.problems)} broken" if project.problems else ""
    return (
        f"listening on {address}; {len(tasks)} task(s){broken}: {', '.join(tasks) or 'none'}; "
        f"schedules: {'; '.join(schedules) or 'none'}; auth: {auth}; "
        f"/metrics: {'public' if public_metrics else 'token'}; "
        f"request bodies up to {project.settings.service.max_request_bytes:,} bytes"
    )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    envvar="PORT",
    show_envvar=True,
    help="Port (default 8000; 8002, the Common Knowledge service's, when serving a DSL_PATH folder).",
)
@click.option(
    "--insecure-no-auth", is_flag=True, help="Run without SLUICEGATE_API_TOKEN: anyone can start runs."
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="How the service logs: text lines, or JSON lines for log collectors.",
)
@handled
def serve(host: str, port: int | None, insecure_no_auth: bool, log_format: str) -> None:
    """Run the HTTP service (FastAPI): runs, status, metrics, schedules, the original's /exports."""
    try:
        import uvicorn

        from ..service import create_app
    except ImportError:
        raise UsageError("the service needs its extra: pip install 'sluicegate[service]'") from None
    state = click.get_current_context().find_object(CliState) or CliState()
    project = load()
    if port is None:
        dsl = not (state.project_dir / "sluicegate.toml").is_file() and dsl_folder(os.environ) is not None
        port = DSL_PORT if dsl else DEFAULT_PORT
    token = os.environ.get("SLUICEGATE_API_TOKEN") or None
    read_token = os.environ.get("SLUICEGATE_READ_TOKEN") or None
    if read_token and not token:
        raise UsageError("SLUICEGATE_READ_TOKEN is set without SLUICEGATE_API_TOKEN; set both, or neither")
    service_logging(project, log_format)
    auth = "on, with a read-only token" if read_token else "on"
    sock = bind(host, port)
    line = banner(project, f"http://{host}:{port}", auth=auth if token else "OFF (--insecure-no-auth)")
    app = create_app(
        state.project_dir,
        os.environ,
        token=token,
        read_token=read_token,
        insecure=insecure_no_auth,
        banner=line,
    )
    if token is None:
        logging.getLogger("sluicegate.service").warning(
            "--insecure-no-auth: NO AUTHENTICATION, anyone who reaches %s:%s can start exports", host, port
        )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
