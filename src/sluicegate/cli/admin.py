"""The project commands: init, demo, install, tasks, check, status, mark, reexport, reset,
generate, serve."""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import click

from .. import operations
from ..config import dsl_folder, load_project
from ..engine import Exporter
from ..exceptions import UsageError
from ..masking import mask_url
from ..options import RunOptions
from ..partitions import parse_assignments
from .app import CliState, duration, echo_json, handled, load, main, timestamp
from .render import render_summaries

DEFAULT_PORT = 8000
DSL_PORT = 8002  # the Common Knowledge data-export service's port


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--example", default="openaq", show_default=True, help="Which example project to start from.")
@click.option("--force", is_flag=True, help="Overwrite an existing sluicegate.toml.")
@handled
def init(folder: Path, example: str, force: bool) -> None:
    """Create a working project skeleton in FOLDER."""
    from ..scaffold import init_project

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
    from ..scaffold import build_demo

    setup = build_demo(folder, rows=rows, locations=locations, force=force)
    click.echo(f"generated {setup.rows:,} measurements at {setup.locations} locations in {setup.database}")
    project = load_project(folder, {})
    with Exporter(project) as exporter:
        summaries = exporter.run_once(list(project.tasks.values()), RunOptions())
        statuses = operations.status(project)
    render_summaries(summaries, statuses)
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
    project = load()
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
    tasks = operations.describe_tasks(load())
    if as_json:
        echo_json(tasks)
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
    problems = operations.check_project(load())
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        sys.exit(2)
    click.echo("ok: every task checked")


@main.command()
@click.argument("task", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handled
def status(task: str | None, as_json: bool) -> None:
    """Per task: partitions pending, claimed, exported, failed, waiting, oldest pending change."""
    rows = operations.status(load(), [task] if task else [])
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        if "error" in r:
            click.echo(f"{r['task']}: ERROR {r['error']}")
            continue
        if r.get("kind", "partitioned") != "partitioned":
            click.echo(f"{r['task']}: {r['kind']}, {operations.status_text(r)}")
            for f in r.get("failures", []):
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
    project = load()
    values = parse_assignments(operations.partitioned_task(project, task), assignments)
    operations.mark(project, task, values)
    click.echo(f"marked {task} {' '.join(assignments)}")


@main.command()
@click.argument("task")
@click.argument("assignments", nargs=-1)
@click.option("--time-min", callback=timestamp, help="Only partitions ending after this time (ISO 8601).")
@click.option("--time-max", callback=timestamp, help="Only partitions starting before this time (ISO 8601).")
@handled
def reexport(
    task: str, assignments: tuple[str, ...], time_min: dt.datetime | None, time_max: dt.datetime | None
) -> None:
    """Queue exported partitions of TASK again (filtered by KEY=VALUE and time); files are rewritten."""
    project = load()
    values = parse_assignments(operations.partitioned_task(project, task), assignments)
    count = operations.reexport(project, task, values, time_min=time_min, time_max=time_max)
    click.echo(f"queued {count} partition(s) of {task} for re-export")


@main.command()
@click.argument("task")
@click.option("--failed", is_flag=True, required=True, help="Re-queue the partitions parked as failed.")
@handled
def reset(task: str, failed: bool) -> None:
    """Re-queue the failed partitions of TASK."""
    count = operations.reset_failed(load(), task)
    click.echo(f"re-queued {count} failed partition(s) of {task}")


@main.command()
@click.option("--db", "url", required=True, help="sqlite:///file.db or postgresql://...")
@click.option("--rows", type=click.IntRange(1), help="Generate N rows in bulk.")
@click.option("--rate", help="Steady mode: rows per minute, e.g. 600/min.")
@click.option("--duration", callback=duration, help="Steady mode: how long, e.g. 5m.")
@click.option("--locations", type=click.IntRange(1), default=300, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@handled
def generate(
    url: str, rows: int | None, rate: str | None, duration: float | None, locations: int, seed: int
) -> None:
    """Generate OpenAQ-like measurements (with late and out-of-order rows) into --db."""
    from ..generate import generate as run_generate

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
@handled
def serve(host: str, port: int | None, insecure_no_auth: bool) -> None:
    """Run the HTTP service (FastAPI): runs, status, metrics, schedules, the original's /exports."""
    try:
        import uvicorn

        from ..service import create_app
    except ImportError:
        raise UsageError("the service needs its extra: pip install 'sluicegate[service]'") from None
    state = click.get_current_context().find_object(CliState) or CliState()
    if port is None:
        dsl = not (state.project_dir / "sluicegate.toml").is_file() and dsl_folder(os.environ) is not None
        port = DSL_PORT if dsl else DEFAULT_PORT
    token = os.environ.get("SLUICEGATE_API_TOKEN") or None
    app = create_app(state.project_dir, os.environ, token=token, insecure=insecure_no_auth and not token)
    if token is None:
        click.echo(
            "sluicegate: WARNING: --insecure-no-auth: NO AUTHENTICATION, anyone who reaches "
            f"{host}:{port} can start exports",
            err=True,
        )
    uvicorn.run(app, host=host, port=port, log_level="warning")
