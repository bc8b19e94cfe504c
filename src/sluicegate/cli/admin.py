"""The project commands: init, demo, install, tasks, check, status, mark, reexport, reset,
generate, serve, grants."""

from __future__ import annotations

import datetime as dt
import math
import shlex
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from .. import onboarding, operations
from ..config import load_project
from ..db import wrap_errors
from ..engine import Exporter
from ..exceptions import UsageError
from ..keytext import parse_assignments
from ..masking import mask_url
from ..options import RunOptions
from .app import CliState, duration, echo_json, handled, load, main, on_project, quoted, timestamp, typed_here
from .render import ScanBar, render_summaries


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--example", default="openaq", show_default=True, help="Which example project to start from.")
@click.option("--force", is_flag=True, help="Overwrite the files of the example that exist.")
@click.option("--source", "source_url", metavar="URL", help="Your database (written as [source] url).")
@handled
def init(folder: Path, example: str, force: bool, source_url: str | None) -> None:
    """Create a working project skeleton in FOLDER."""
    from ..scaffold import init_project

    for path in init_project(folder, example=example, force=force, source_url=source_url):
        click.echo(f"wrote {path}")
    me = on_project(folder)
    where = "[destination] url" if source_url else "[source] url (your database) and [destination] url"
    steps = {  # each example's own tasks (the openaq one's task is called openaq)
        "airmax": [
            f"{me} ingest measurements {shlex.quote(str(folder / 'messages.jsonl'))}  # a sample, or [sqs]",
            f"{me} run current_air_quality --every 30s  # or: {me} serve",
        ],
        "mds": [f"{me} blocks trips --time-min 2020-3-1-0 --time-max 2020-3-1-6  # see docs/blocks.md"],
    }.get(example, [
        f"{me} install           # capture triggers: changes from now on",
        f"{me} backfill {example}  # the rows that were there before install",
        f"{me} run",
    ])  # fmt: skip
    lines = [f"check {where} in {folder / 'sluicegate.toml'}, and the queries in {folder / 'tasks'}"]
    if example == "mds":  # no queries: the providers' APIs and the portal, placeholders on 127.0.0.1
        lines[0] = (
            f"check {where} in {folder / 'sluicegate.toml'}, and set each provider's MDS API url and "
            f"token and the portal's url in {folder / 'tasks' / 'trips' / 'task.toml'} (placeholders now)"
        )
    if example == "airmax":  # its tables and some data first, in the database the project reads
        lines.append(f"{me} generate --dataset airmax --db {_generate_db(folder, source_url)}")
    lines += [f"{me} check", *steps]
    click.echo("next:\n" + "\n".join(f"  {n}. {line}" for n, line in enumerate(lines, 1)))


def _generate_db(folder: Path, source_url: str | None) -> str:
    """``--db`` for ``generate`` (which reads a relative SQLite path from the current folder):
    the project's ``[source] url``, its password masked with a note to put it back."""
    url = source_url or "sqlite:///airmax.db"
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):  # relative to the project
        url = f"sqlite:///{folder / url[len('sqlite:///') :]}"
    masked = mask_url(url)
    return shlex.quote(masked) + " --rows 50000" + ("" if masked == url else "  # your password for ***")


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

    # FOLDER is the project here (not -C): a refusal's 'sluicegate run' names it, as typed_here does.
    click.get_current_context().ensure_object(CliState).project_dir = folder
    setup = build_demo(folder, rows=rows, locations=locations, force=force)
    click.echo(f"generated {setup.rows:,} measurements at {setup.locations} locations in {setup.database}")
    project = load_project(folder, {})
    with Exporter(project) as exporter:
        summaries = exporter.run_once(list(project.tasks.values()), RunOptions())
        statuses = operations.status(project)
    render_summaries(summaries, statuses)
    me = on_project(folder)
    click.echo(
        f"\nfiles are in {project.settings.destination.url}; the folder is a project: try\n"
        f"  {me} status\n"
        f"  {me} mark openaq location_id=1 day=<YYYY-MM-DD>\n"
        f"  {me} run"
    )


@main.command()
@click.argument("tasks", nargs=-1)
@handled
def install(tasks: tuple[str, ...]) -> None:
    """Create the change-capture triggers of trigger-mode TASKS (all by default)."""
    project = load()
    before = onboarding.uncaptured_rows(project, tasks)
    installed = operations.install(project, tasks)
    backfill = on_project(project.settings.root)
    for task, names in installed.items():
        click.echo(f"{task}: installed {', '.join(names)}")
        if before.get(task):
            click.echo(
                f"{task}: {before[task]:,} row(s) were there before the triggers, which will never see them; "
                f"run {quoted(f'{backfill} backfill {task}')} to mark their partitions"
            )
    broken = [p for p in project.problems if not tasks or p.name in tasks]
    for problem in broken:
        click.echo(
            typed_here(f"sluicegate: error: task {problem.name} not installed: {problem.message}"), err=True
        )
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
    else:
        for t in tasks:
            if "error" in t:
                click.echo(typed_here(f"{t['name']}: ERROR {t['error']}"))
            else:
                keys = f", keys {', '.join(t['keys'])}" if t["keys"] else ""  # archive, aggregate: none
                capture = f", capture {t['capture']}" if t["capture"] else ""  # partitioned tasks only
                click.echo(f"{t['name']}: {t['kind']}, {t['format']}{keys}{capture}")
    if any("error" in t for t in tasks):  # a broken task folder is a configuration error (monitoring)
        sys.exit(2)


@main.command()
@handled
def check() -> None:
    """Validate every task against the live databases; exit 2 listing each problem."""
    project = load()
    problems = operations.check_project(project)
    for problem in problems:  # check retries nothing: a database that is down is reported as it is
        click.echo(typed_here(problem.removesuffix("; will retry")), err=True)
    if problems:
        sys.exit(2)
    for warning in onboarding.check_warnings(project):
        click.echo(typed_here(f"warning: {warning}"), err=True)
    for note in onboarding.check_notes(project):  # information: a first run binds the destination
        click.echo(typed_here(f"note: {note}"), err=True)
    click.echo("ok: every task checked")


@main.command()
@click.argument("task", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handled
def status(task: str | None, as_json: bool) -> None:
    """Per task: partitions pending, claimed, exported, failed, waiting, oldest pending change."""
    project = load()
    if warning := onboarding.no_tasks(project):
        click.echo(typed_here(f"warning: {warning}"), err=True)
    rows = operations.status(project, [task] if task else [])
    if as_json:
        echo_json(rows)
    else:
        for r in rows:
            if "error" in r:
                click.echo(typed_here(f"{r['task']}: ERROR {r['error']}"))
                continue
            click.echo(typed_here(status_line(r)))
            if r.get("task_error"):
                click.echo(typed_here(f"  last run failed: {r['task_error']}"))
            for f in r.get("failures", []):
                click.echo(
                    typed_here(f"  failed {f['partition']} after {f['attempts']} attempt(s): {f['error']}")
                )
    if any("error" in r for r in rows):  # a broken task folder: exit 2, so monitoring sees it
        sys.exit(2)


def ago(seconds: float) -> str:
    """``42s ago``, ``17min ago``, ``5.2h ago``."""
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min ago"
    return f"{seconds / 3600:.1f}h ago"


def until(seconds: float) -> str:
    """``in 42s``, ``in 9min``, ``in 1.5h``."""
    return "in " + ago(seconds).removesuffix(" ago")


def status_line(r: dict[str, Any]) -> str:
    """One task's counts: for partitioned tasks pending first, the inbox, and the oldest pending age."""
    if r.get("kind", "partitioned") != "partitioned":
        return f"{r['task']}: {r['kind']}, {operations.status_text(r)}"
    line = (
        f"{r['task']}: {r['pending']} pending, {r['claimed']} claimed, {r['exported']} exported, "
        f"{r['failed']} failed, {r['waiting']} waiting to complete"
    )
    if r.get("stale_claims"):
        end = r["stale_claims_end_in"] or 0.0
        line += (
            f"; {r['stale_claims']} of the claimed not renewed for over half the lease: their worker "
            f"stopped or died, and a run takes them over once their leases end, {until(end)}"
        )
    if r.get("inbox"):
        line += f"; {r['inbox']} captured change(s) not yet folded in (the next run does)"
    age = r["oldest_pending_age"]
    if r["pending"] and age is not None:
        line += f"; oldest pending change {ago(age)}"
    if r.get("other_zone"):
        again = f"'sluicegate reexport {r['task']}' re-cuts them"
        line += f"; {r['other_zone']} partition(s) cut in another zone than the task's ({again})"
    return line


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
@click.option("--time-min", callback=timestamp, help="Only rows at or after this time (ISO 8601).")
@click.option("--time-max", callback=timestamp, help="Only rows before this time (ISO 8601).")
@handled
def backfill(task: str, time_min: dt.datetime | None, time_max: dt.datetime | None) -> None:
    """Mark every partition of TASK that has rows, e.g. the rows that were there before install."""
    project = load()
    with ScanBar(f"backfilling {task}") as bar:
        count = onboarding.backfill(project, task, time_min=time_min, time_max=time_max, progress=bar.update)
    me = on_project(project.settings.root)
    click.echo(f"marked {count:,} partition(s) of {task}; {quoted(f'{me} run')} exports them")


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
@click.option(
    "--failed", is_flag=True, required=True, help="Re-queue the partitions (entities) parked as failed."
)
@handled
def reset(task: str, failed: bool) -> None:
    """Re-queue the failed partitions of TASK; of an incremental task, its failed entities."""
    project = load()
    count = operations.reset_failed(project, task)
    entities = project.task(task).kind == "incremental"
    what = "partition(s)" if not entities else "entity" if count == 1 else "entities"
    click.echo(f"re-queued {count} failed {what} of {task}")


@main.command()
@click.option("--db", "url", required=True, help="sqlite:///file.db or postgresql://...")
@click.option("--rows", type=click.IntRange(1), help="Generate N rows in bulk.")
@click.option("--rate", help="Steady mode: rows per minute, e.g. 600/min.")
@click.option("--duration", callback=duration, help="Steady mode: how long, e.g. 5m.")
@click.option("--locations", type=click.IntRange(1), default=300, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--dataset",
    type=click.Choice(["openaq", "airmax"]),
    default="openaq",
    show_default=True,
    help="airmax: pm25 of eight Belgian cities into its raw table (also mariadb://); see docs/cli.md.",
)
@handled
def generate(
    url: str,
    rows: int | None,
    rate: str | None,
    duration: float | None,
    locations: int,
    seed: int,
    dataset: str,
) -> None:
    """Generate OpenAQ-like measurements (with late and out-of-order rows) into --db."""
    from ..generate import generate as run_generate

    if dataset == "openaq" and (rows is None) == (rate is None):
        raise UsageError("give either --rows N or --rate N/min with --duration DUR")
    per_min = None
    if rate is not None:
        sent_at_rate = dataset == "airmax" and rows is not None  # airmax's --rows: sent as if at --rate
        if duration is None and not sent_at_rate:
            raise UsageError("--rate needs --duration, e.g. --rate 600/min --duration 5m")
        try:
            per_min = float(rate.removesuffix("/min"))
        except ValueError:
            per_min = math.nan
        if not (math.isfinite(per_min) and per_min > 0):  # inf/min: a traceback (division by zero)
            raise UsageError(
                f"--rate {rate!r} is not a rate; use a number of rows per minute above 0 such as 600/min"
            )
    if dataset == "airmax":
        if click.get_current_context().get_parameter_source("locations") is not ParameterSource.DEFAULT:
            raise UsageError(  # it ran with the eight cities, saying nothing
                f"--locations {locations} applies to --dataset openaq; airmax's measurements are of its"
                " eight cities"
            )
        generate_airmax(url, rows=rows, per_min=per_min, duration=duration, seed=seed)
        return
    try:
        with wrap_errors(url):  # an unreachable server, a file that is no database: one line, as airmax's
            result = run_generate(
                url, rows=rows, rate_per_min=per_min, duration_s=duration, locations=locations, seed=seed
            )
    except ValueError as exc:  # the generator names the bad URL or argument
        raise UsageError(str(exc)) from None
    click.echo(
        f"generated {result.rows:,} rows at {result.locations} locations in {result.seconds:.1f}s "
        f"into {mask_url(url)}"
    )


def generate_airmax(
    url: str, *, rows: int | None, per_min: float | None, duration: float | None, seed: int
) -> None:
    """``generate --dataset airmax``: bulk (``--rows``) or steady (``--duration``, ``--rate`` or 100/min)."""
    from ..generate_airmax import generate as run_airmax

    if (rows is None) == (duration is None):
        raise UsageError("give either --rows N or --duration DUR (with --rate N/min, default 100/min)")
    result = run_airmax(url, rows=rows, rate_per_min=per_min, duration_s=duration, seed=seed)
    click.echo(f"generated {result.rows:,} airmax measurements in {result.seconds:.1f}s into {mask_url(url)}")


@main.command()
@click.argument("tasks", nargs=-1)
@click.option("--role", metavar="NAME", help="The role to grant to (default: the user of [source] url).")
@click.option("--read-only", is_flag=True, help="Only what `status` needs: SELECT on the ledger.")
@handled
def grants(tasks: tuple[str, ...], role: str | None, read_only: bool) -> None:
    """Print the PostgreSQL GRANTs a role needs to run TASKS (all by default); run them as the owner."""
    from ..grants import grants as grant_script

    click.echo(grant_script(load(), tasks, role=role, read_only=read_only), nl=False)
