"""The ``sluicegate`` command: a thin layer that parses, calls one library function, renders.

Exit codes: 0 ok; 1 some partitions failed (the rest were exported); 2 bad configuration
or usage. User errors print one line without a traceback; ``-v`` shows the traceback.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from . import operations
from .config import EXPORT_TYPES, Project, load_project, parse_duration
from .engine import Exporter, RunOptions, TaskSummary
from .exceptions import ConfigError, SluicegateError, UsageError
from .masking import ScrubFilter, mask_url, scrub
from .operations import incremental_task, request_from_options
from .partitions import parse_assignments
from .watermarks import load_request

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("sluicegate")

ENV_HELP = (
    "Settings come from sluicegate.toml; environment variables SLUICEGATE_SECTION__KEY override them "
    "(e.g. SLUICEGATE_SOURCE__URL, SLUICEGATE_DESTINATION__URL, SLUICEGATE_DEFAULTS__LIMIT). The OpenAQ "
    "exporter's LIMIT, WRITE_FILE_LOCATION, WRITE_FILE_FORMAT, OPEN_DATA_BUCKET, LOCAL_SAVE_DIRECTORY, "
    "LOG_LEVEL and DATABASE_* are accepted too."
)


def _process_started() -> float:
    """``time.monotonic()`` at the moment this process started (Linux), else now.

    ``--max-runtime`` counts from there, so interpreter start-up and imports are inside the
    budget, as they are inside a Lambda's or a cron job's time limit.
    """
    now = time.monotonic()
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return now
    return now - max(0.0, age)


class _State:
    verbose: bool = False
    project_dir: Path = Path(".")


def _fail(exc: BaseException, verbose: bool) -> None:
    if verbose:
        import traceback

        click.echo(scrub("".join(traceback.format_exception(exc))), err=True, nl=False)
    click.echo(f"sluicegate: error: {scrub(str(exc))}", err=True)
    sys.exit(2 if isinstance(exc, ConfigError | UsageError) else 1)


def handled(func: F) -> F:
    """Turn sluicegate errors into one line on stderr and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        state = click.get_current_context().find_object(_State) or _State()
        try:
            return func(*args, **kwargs)
        except SluicegateError as exc:
            _fail(exc, state.verbose)
        return None

    return wrapper  # type: ignore[return-value]


def _project() -> Project:
    state = click.get_current_context().find_object(_State) or _State()
    project = load_project(state.project_dir, os.environ)
    level = logging.DEBUG if state.verbose else getattr(logging, project.settings.log_level, logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # driver logs may echo a connection string
        handler.addFilter(ScrubFilter(project.settings.source_url, project.settings.ledger_url))
    log.debug(
        "source %s, ledger %s", mask_url(project.settings.source_url), mask_url(project.settings.ledger_url)
    )
    return project


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def _duration(_ctx: Any, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value, where=f"--{param.name.replace('_', '-') if param.name else 'duration'}")
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _timestamp(_ctx: Any, param: click.Parameter, value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time such as 2024-05-01T00:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@click.group(epilog=ENV_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-C",
    "--project",
    "project_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    envvar="SLUICEGATE_PROJECT",
    show_envvar=True,
    help="The project folder (holding sluicegate.toml).",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging, and tracebacks on errors.")
@click.version_option(package_name="sluicegate")
@click.pass_context
def main(ctx: click.Context, project_dir: Path, verbose: bool) -> None:
    """sluicegate: incremental, exactly-once exports from SQL databases to files."""
    state = ctx.ensure_object(_State)
    state.verbose = verbose
    state.project_dir = project_dir


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--example", default="openaq", show_default=True, help="Which example project to start from.")
@click.option("--force", is_flag=True, help="Overwrite an existing sluicegate.toml.")
@handled
def init(folder: Path, example: str, force: bool) -> None:
    """Create a working project skeleton in FOLDER."""
    from .scaffold import init_project

    for path in init_project(folder, example=example, force=force):
        click.echo(f"wrote {path}")
    click.echo(f"next: edit {folder / 'sluicegate.toml'}, then run 'sluicegate -C {folder} check'")


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default="demo")
@click.option(
    "--rows", type=click.IntRange(1), default=150_000, show_default=True, help="Measurements to generate."
)
@click.option(
    "--locations", type=click.IntRange(1), default=300, show_default=True, help="Monitoring locations."
)
@click.option("--force", is_flag=True, help="Rebuild the demo database and exports from scratch.")
@handled
def demo(folder: Path, rows: int, locations: int, force: bool) -> None:
    """Build an OpenAQ-like SQLite project in FOLDER and export it to FOLDER/exports."""
    from .scaffold import build_demo

    setup = build_demo(folder, rows=rows, locations=locations, force=force)
    click.echo(f"generated {setup.rows:,} measurements at {setup.locations} locations in {setup.database}")
    project = load_project(folder, {})
    with Exporter(project) as exporter:
        summaries = exporter.run_once(list(project.tasks.values()), RunOptions())
        statuses = operations.status(project)
    _render_summaries(summaries, statuses)
    click.echo(
        f"\nfiles are in {project.settings.destination.url}; the folder is a project: try\n"
        f"  sluicegate -C {folder} status\n"
        f"  sluicegate -C {folder} mark openaq location_id=1 day=<YYYY-MM-DD>\n"
        f"  sluicegate -C {folder} run"
    )


@main.command()
@click.argument("tasks", nargs=-1)
@handled
def install(tasks: tuple[str, ...]) -> None:
    """Create the change-capture triggers of trigger-mode TASKS (all by default)."""
    project = _project()
    installed = operations.install(project, tasks)
    for task, names in installed.items():
        click.echo(f"{task}: installed {', '.join(names)}")
    broken = [p for p in project.problems if not tasks or p.name in tasks]
    for problem in broken:
        click.echo(f"sluicegate: error: task {problem.name} not installed: {problem.message}", err=True)
    if broken:
        sys.exit(2)
    if not installed:
        click.echo("no trigger-mode task: nothing to install")


@main.command(name="tasks")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handled
def tasks_cmd(as_json: bool) -> None:
    """List the project's tasks (broken task folders with their error)."""
    tasks = operations.describe_tasks(_project())
    if as_json:
        _echo_json(tasks)
        return
    for t in tasks:
        if "error" in t:
            click.echo(f"{t['name']}: ERROR {t['error']}")
        else:
            click.echo(
                f"{t['name']}: {t['kind']}, {t['format']}, "
                f"keys {', '.join(t['keys'])}, capture {t['capture']}"
            )


@main.command()
@handled
def check() -> None:
    """Validate every task against the live databases; exit 2 listing each problem."""
    problems = operations.check_project(_project())
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        sys.exit(2)
    click.echo("ok: every task checked")


@main.command()
@click.argument("tasks", nargs=-1)
@click.option("--limit", type=click.IntRange(1), help="At most N partitions in this run (OpenAQ's LIMIT).")
@click.option("--batch-size", type=click.IntRange(1), help="Partitions claimed and read per query.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    help="Exporters working in parallel, each claiming its own batches (default: [defaults] workers, 1).",
)
@click.option(
    "--max-runtime",
    callback=_duration,
    help="Stop claiming in time and release what cannot finish (e.g. 14m).",
)
@click.option("--every", callback=_duration, help="Run again every DUR until SIGINT or SIGTERM.")
@click.option("--dry-run", is_flag=True, help="List what would be exported and why; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary per task.")
@click.option(
    "--type", "export_type", type=click.Choice(EXPORT_TYPES), help="Incremental tasks: the export type."
)
@click.option("--ignore-watermark", is_flag=True, help="Incremental tasks: re-export --time-min..--time-max.")
@click.option("--time-min", callback=_timestamp, help="Incremental tasks: window start (ISO 8601).")
@click.option("--time-max", callback=_timestamp, help="Incremental tasks: window end, exclusive (ISO 8601).")
@click.option("--entity", "entities", multiple=True, help="Incremental tasks: only these entities (repeat).")
@click.option("--destination", help="Incremental tasks: send a re-export to this URL; watermarks untouched.")
@click.option("--tag", help="Incremental tasks: a label stored on the run.")
@handled
def run(
    tasks: tuple[str, ...],
    limit: int | None,
    batch_size: int | None,
    workers: int | None,
    max_runtime: float | None,
    every: float | None,
    dry_run: bool,
    as_json: bool,
    export_type: str | None,
    ignore_watermark: bool,
    time_min: dt.datetime | None,
    time_max: dt.datetime | None,
    entities: tuple[str, ...],
    destination: str | None,
    tag: str | None,
) -> None:
    """Export every pending, complete partition of TASKS (all by default)."""
    project = _project()
    selected = project.select(list(tasks))
    request = request_from_options(
        export_type=export_type,
        ignore_watermark=ignore_watermark,
        time_min=time_min,
        time_max=time_max,
        entities=entities,
        destination=destination,
        tag=tag,
    )
    options = RunOptions(
        limit=limit,
        batch_size=batch_size,
        workers=workers,
        max_runtime=max_runtime,
        started=_process_started(),
        dry_run=dry_run,
        request=request,
    )
    _run_loop(project, selected, options, every=every, as_json=as_json, names=tasks)


@main.command()
@click.argument("source", type=click.File("r"))
@click.option("--task", "task_name", help="The incremental task (needed when the project has several).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@handled
def request(source: Any, task_name: str | None, as_json: bool) -> None:
    """Run one export request message (Bridge Exporter JSON) from a FILE or - for stdin."""
    project = _project()
    parsed = load_request(source.read())
    task = incremental_task(project, task_name)
    _run_loop(project, [task], RunOptions(request=parsed), every=None, as_json=as_json, names=(task.name,))


@main.command()
@click.argument("task")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@handled
def redrive(task: str, as_json: bool) -> None:
    """Re-run only the failed windows of the incremental TASK, each with its original window."""
    project = _project()
    spec = incremental_task(project, task)
    _run_loop(project, [spec], RunOptions(redrive=True), every=None, as_json=as_json, names=(task,))


@main.group()
def watermark() -> None:
    """Show or delete the per-entity watermarks of an incremental task."""


@watermark.command(name="list")
@click.argument("task")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handled
def watermark_list(task: str, as_json: bool) -> None:
    """List each entity's watermark, last export and recorded failure."""
    rows = operations.watermarks(_project(), task)
    if as_json:
        _echo_json(rows)
        return
    for r in rows:
        to = f" to {mask_url(r['failed_destination'])}" if r.get("failed_destination") else ""
        failed = (
            f", failed window {r['failed_start']}..{r['failed_end']}{to}: {r['last_error']}"
            if r["failed_end"]
            else ""
        )
        click.echo(f"{r['entity']}: watermark {r['watermark'] or '(none: bootstrap)'}{failed}")


@watermark.command(name="delete")
@click.argument("task")
@click.argument("entity")
@handled
def watermark_delete(task: str, entity: str) -> None:
    """Delete ENTITY's watermark: its next export starts from the bootstrap."""
    if not operations.delete_watermark(_project(), task, entity):
        raise UsageError(f"task {task!r} has no watermark for entity {entity!r}")
    click.echo(f"deleted the watermark of {task} {entity}")


def _run_loop(
    project: Project,
    selected: Sequence[Any],
    options: RunOptions,
    *,
    every: float | None,
    as_json: bool,
    names: Sequence[str],
) -> None:
    stop = _stop_on_signals() if every else None
    failed = False
    with Exporter(project) as exporter:
        while True:
            summaries = _run_with_progress(exporter, selected, options, stop, show=not as_json)
            failed = failed or not all(s.ok for s in summaries)
            _render_run(summaries, as_json, options.dry_run)
            if stop is None or stop.wait(every or 0):
                break
    broken = [p for p in project.problems if not names or p.name in names]
    for problem in broken:
        click.echo(f"sluicegate: task {problem.name} skipped: {problem.message}", err=True)
    sys.exit(2 if broken else 1 if failed else 0)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        click.echo(
            f"sluicegate: {signal.Signals(signum).name}: finishing the batch in hand, then stopping", err=True
        )
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _run_with_progress(
    exporter: Exporter, tasks: Sequence[Any], options: RunOptions, stop: threading.Event | None, *, show: bool
) -> list[TaskSummary]:
    if not (show and sys.stdout.isatty()) or options.dry_run:
        return exporter.run_once(tasks, options, stop=stop)
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        ids: dict[str, Any] = {}

        def progress(task: str, n: int) -> None:
            if task not in ids:
                ids[task] = bar.add_task(f"exporting {task}", total=None)
            bar.advance(ids[task], n)

        return exporter.run_once(tasks, options, stop=stop, progress=progress)


def _render_run(summaries: list[TaskSummary], as_json: bool, dry_run: bool) -> None:
    if as_json:
        _echo_json([s.as_dict() for s in summaries])
        return
    for s in summaries:
        if dry_run:
            click.echo(f"{s.task}: {len(s.plan)} partition(s) would be exported")
            for entry in s.plan:
                keys = " ".join(f"{k}={v}" for k, v in entry["partition"].items())
                window = f" [{entry['start']}, {entry['end']})" if "start" in entry else ""
                click.echo(
                    f"  {keys}{window}  ({entry['reason']}) -> {entry.get('path') or entry.get('error')}"
                )
            for note in s.entities:
                click.echo(f"  entity={note['entity']}: {note.get('note', '')}")
            continue
        click.echo(
            f"{s.task}: {s.exported} exported, {s.unchanged} unchanged, {s.failed} failed, "
            f"{s.released} released, {s.rows:,} rows, {s.bytes:,} bytes in {s.seconds:.2f}s"
        )
        for entry in s.entities:
            what = entry.get("note") or (
                f"failed: {entry['error']}"
                if entry.get("error")
                else f"{entry['rows']:,} rows -> {entry['file'] or 'no file (no rows)'}"
            )
            click.echo(f"  entity={entry['entity']}: {what}")
        for error in s.errors:
            click.echo(f"  error: {error}", err=True)
        for error in s.task_errors:
            click.echo(f"  task error: {error}", err=True)


def _render_summaries(summaries: list[TaskSummary], statuses: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sluicegate demo")
    for name in (
        "task",
        "exported",
        "unchanged",
        "failed",
        "waiting (incomplete)",
        "rows",
        "bytes",
        "seconds",
    ):
        table.add_column(name, justify="right" if name != "task" else "left")
    waiting = {st["task"]: st.get("waiting", 0) for st in statuses}
    for s in summaries:
        table.add_row(
            s.task,
            str(s.exported),
            str(s.unchanged),
            str(s.failed),
            str(waiting.get(s.task, 0)),
            f"{s.rows:,}",
            f"{s.bytes:,}",
            f"{s.seconds:.2f}",
        )
    Console().print(table)


@main.command()
@click.argument("task", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handled
def status(task: str | None, as_json: bool) -> None:
    """Per task: partitions pending, claimed, exported, failed, waiting, oldest pending change."""
    rows = operations.status(_project(), [task] if task else [])
    if as_json:
        _echo_json(rows)
        return
    for r in rows:
        if "error" in r:
            click.echo(f"{r['task']}: ERROR {r['error']}")
            continue
        if r.get("kind") == "incremental":
            click.echo(
                f"{r['task']}: {r['entities']} entities, {r['claimed']} claimed, {r['failed']} with a failed "
                f"window; oldest watermark {r['oldest_watermark'] or '-'}"
            )
            for f in r["failures"]:
                click.echo(f"  failed {f['partition']} after {f['attempts']} attempt(s): {f['error']}")
            continue
        age = r["oldest_pending_age"]
        oldest = "-" if age is None else f"{age / 3600:.1f}h ago"
        click.echo(
            f"{r['task']}: {r['pending']} pending, {r['claimed']} claimed, {r['exported']} exported, "
            f"{r['failed']} failed, {r['waiting']} waiting to complete; oldest pending change {oldest}"
        )
        for f in r["failures"]:
            click.echo(f"  failed {f['partition']} after {f['attempts']} attempt(s): {f['error']}")


@main.command()
@click.argument("task")
@click.argument("assignments", nargs=-1, required=True)
@handled
def mark(task: str, assignments: tuple[str, ...]) -> None:
    """Mark the partition TASK KEY=VALUE... changed, so the next run exports it."""
    project = _project()
    values = parse_assignments(project.task(task), assignments)
    operations.mark(project, task, values)
    click.echo(f"marked {task} {' '.join(assignments)}")


@main.command()
@click.argument("task")
@click.argument("assignments", nargs=-1)
@click.option("--time-min", callback=_timestamp, help="Only partitions ending after this time (ISO 8601).")
@click.option("--time-max", callback=_timestamp, help="Only partitions starting before this time (ISO 8601).")
@handled
def reexport(
    task: str, assignments: tuple[str, ...], time_min: dt.datetime | None, time_max: dt.datetime | None
) -> None:
    """Queue exported partitions of TASK again (filtered by KEY=VALUE and time); files are rewritten."""
    project = _project()
    values = parse_assignments(project.task(task), assignments)
    count = operations.reexport(project, task, values, time_min=time_min, time_max=time_max)
    click.echo(f"queued {count} partition(s) of {task} for re-export")


@main.command()
@click.argument("task")
@click.option("--failed", is_flag=True, required=True, help="Re-queue the partitions parked as failed.")
@handled
def reset(task: str, failed: bool) -> None:
    """Re-queue the failed partitions of TASK."""
    count = operations.reset_failed(_project(), task)
    click.echo(f"re-queued {count} failed partition(s) of {task}")


@main.command()
@click.option("--db", "url", required=True, help="sqlite:///file.db or postgresql://...")
@click.option("--rows", type=click.IntRange(1), help="Generate N rows in bulk.")
@click.option("--rate", help="Steady mode: rows per minute, e.g. 600/min.")
@click.option("--duration", callback=_duration, help="Steady mode: how long, e.g. 5m.")
@click.option("--locations", type=click.IntRange(1), default=300, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@handled
def generate(
    url: str, rows: int | None, rate: str | None, duration: float | None, locations: int, seed: int
) -> None:
    """Generate OpenAQ-like measurements (with late and out-of-order rows) into --db."""
    from .generate import generate as run_generate

    if (rows is None) == (rate is None):
        raise UsageError("give either --rows N or --rate N/min with --duration DUR")
    per_min = None
    if rate is not None:
        if duration is None:
            raise UsageError("--rate needs --duration, e.g. --rate 600/min --duration 5m")
        try:
            per_min = float(rate.removesuffix("/min"))
        except ValueError:
            raise UsageError(
                f"--rate {rate!r} is not a rate; use a number of rows per minute such as 600/min"
            ) from None
    try:
        result = run_generate(
            url, rows=rows, rate_per_min=per_min, duration_s=duration, locations=locations, seed=seed
        )
    except ValueError as exc:  # the generator names the bad URL or argument
        raise UsageError(str(exc)) from None
    click.echo(
        f"generated {result.rows:,} rows at {result.locations} locations in {result.seconds:.1f}s "
        f"into {mask_url(url)}"
    )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--insecure-no-auth", is_flag=True, help="Run without SLUICEGATE_API_TOKEN: anyone can start runs."
)
@handled
def serve(host: str, port: int, insecure_no_auth: bool) -> None:
    """Run the HTTP service (FastAPI): runs, status, metrics, schedules, the original's /exports."""
    try:
        import uvicorn

        from .service import create_app
    except ImportError:
        raise UsageError("the service needs its extra: pip install 'sluicegate[service]'") from None
    state = click.get_current_context().find_object(_State) or _State()
    token = os.environ.get("SLUICEGATE_API_TOKEN") or None
    app = create_app(state.project_dir, os.environ, token=token, insecure=insecure_no_auth and not token)
    if token is None:
        click.echo(
            "sluicegate: WARNING: --insecure-no-auth: NO AUTHENTICATION, anyone who reaches "
            f"{host}:{port} can start exports",
            err=True,
        )
    uvicorn.run(app, host=host, port=port, log_level="warning")
