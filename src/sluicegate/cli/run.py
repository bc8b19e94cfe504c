"""``run`` and the incremental commands: ``request``, ``redrive``, ``watermark``."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import click

from .. import onboarding, operations
from ..engine import Exporter
from ..exceptions import StopNow, UsageError, printable
from ..export_request import EXPORT_TYPES, check_kinds, load_request, request_from_options
from ..masking import mask_url
from ..operations import check_limit, incremental_task
from ..options import RunOptions, TaskSummary
from ..specs import Project
from .app import duration, echo_json, handled, load, main, process_started, timestamp, typed_here
from .render import ProgressBars, render_run

COUNT = click.IntRange(1, 2**31 - 1)  # a count every ledger database stores as an integer


@main.command()
@click.argument("tasks", nargs=-1)
@click.option("--limit", type=COUNT, help="At most N partitions in this run (OpenAQ's LIMIT).")
@click.option("--batch-size", type=COUNT, help="Partitions claimed and read per query.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    help=(
        "Exporters working in parallel, each claiming its own batches"
        " (default: [defaults] workers: auto, 2 on PostgreSQL and MariaDB)."
    ),
)
@click.option(
    "--max-runtime",
    callback=duration,
    help="Stop claiming in time and release what cannot finish (e.g. 14m).",
)
@click.option("--every", callback=duration, help="Run again every DUR until SIGINT or SIGTERM.")
@click.option("--dry-run", is_flag=True, help="List what would be exported and why; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary per task.")
@click.option(
    "--type", "export_type", type=click.Choice(EXPORT_TYPES), help="Incremental tasks: the export type."
)
@click.option("--ignore-watermark", is_flag=True, help="Incremental tasks: re-export --time-min..--time-max.")
@click.option("--time-min", callback=timestamp, help="Incremental tasks: window start (ISO 8601).")
@click.option("--time-max", callback=timestamp, help="Incremental tasks: window end, exclusive (ISO 8601).")
@click.option("--entity", "entities", multiple=True, help="Incremental tasks: only these entities (repeat).")
@click.option("--destination", help="Incremental tasks: send a re-export to this URL; watermarks untouched.")
@click.option("--tag", help="Incremental tasks: a label stored on the run.")
@click.option(
    "--new-ledger",
    is_flag=True,
    help="Run on a ledger that records nothing although the destination holds a change feed.",
)
@click.option(
    "--move-destination",
    is_flag=True,
    help="Let TASKS export to this destination, not the one their ledger records.",
)
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
    new_ledger: bool,
    move_destination: bool,
) -> None:
    """Export every pending, complete partition of TASKS (all by default)."""
    project = load()
    if warning := onboarding.no_tasks(project):  # else it exits 0 without a word (or loops, with --every)
        click.echo(typed_here(f"warning: {warning}"), err=True)
    selected = project.runnable(list(tasks))  # a broken one named is skipped, reported at the end
    check_limit(selected, limit, named=bool(tasks))
    given = (export_type, ignore_watermark, time_min, time_max, entities, tag)
    check_kinds(selected, any(given) or destination is not None, named=bool(tasks))
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
        started=process_started(),
        dry_run=dry_run,
        request=request,
        new_ledger=new_ledger,
        move_destination=move_destination,
    )
    run_loop(project, selected, options, every=every, as_json=as_json, names=tasks)


@main.command()
@click.argument("source", type=click.File("rb"))
@click.option("--task", "task_name", help="The incremental task (needed when the project has several).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@handled
def request(source: Any, task_name: str | None, as_json: bool) -> None:
    """Run one export request message (Bridge Exporter JSON) from a FILE or - for stdin."""
    project = load()
    data = source.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"the request is not UTF-8 text (byte 0x{data[exc.start]:02x} at byte {exc.start + 1})"
        ) from None
    parsed = load_request(text)
    task = incremental_task(project, task_name)
    run_loop(project, [task], RunOptions(request=parsed), every=None, as_json=as_json, names=(task.name,))


@main.command()
@click.argument("task")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@handled
def redrive(task: str, as_json: bool) -> None:
    """Re-run only the failed windows of the incremental TASK, each with its original window."""
    project = load()
    spec = incremental_task(project, task)
    run_loop(project, [spec], RunOptions(redrive=True), every=None, as_json=as_json, names=(task,))


@main.group()
def watermark() -> None:
    """Show or delete the watermarks of an incremental task; forget a failed re-export."""


@watermark.command(name="list")
@click.argument("task")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handled
def watermark_list(task: str, as_json: bool) -> None:
    """List each entity's watermark, last export and recorded failure."""
    rows = operations.watermarks(load(), task)
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        to = f" to {mask_url(r['failed_destination'])}" if r.get("failed_destination") else ""
        failed = (
            f", failed window {r['failed_start']}..{r['failed_end']}{to}: {r['last_error']}"
            if r["failed_end"]
            else ""
        )
        redo = ""
        if r["pending_end"]:  # held by a live claim: being exported now; else left by a failure or crash
            what = "being exported" if r["claimed"] else "to redo"
            redo = f", window {r['pending_start']}..{r['pending_end']} {what}"
        mark = r["watermark"] or "(none: bootstrap)"
        click.echo(f"{printable(r['entity'])}: watermark {mark}{redo}{failed}")


@watermark.command(name="delete")
@click.argument("task")
@click.argument("entity")
@handled
def watermark_delete(task: str, entity: str) -> None:
    """Delete ENTITY's watermark: its next export starts from the bootstrap."""
    if not operations.delete_watermark(load(), task, entity):
        raise UsageError(f"task {task!r} has no watermark for entity {entity!r}")
    click.echo(f"deleted the watermark of {task} {entity}")


@watermark.command(name="forget")
@click.argument("task")
@click.argument("entity")
@handled
def watermark_forget(task: str, entity: str) -> None:
    """Drop ENTITY's owed failed re-export (one no retry can finish); its watermark stays."""
    row = operations.forget_reexport(load(), task, entity)
    where = mask_url(row["failed_destination"]) if row["failed_destination"] else "the project's destination"
    click.echo(
        f"forgot the failed {row['failed_type']} re-export of {task} {entity}"
        f" [{row['failed_start'].isoformat()}, {row['failed_end'].isoformat()}) to {where}"
    )


def run_loop(
    project: Project,
    selected: Sequence[Any],
    options: RunOptions,
    *,
    every: float | None,
    as_json: bool,
    names: Sequence[str],
    render: Callable[[list[TaskSummary], bool, bool], None] = render_run,
) -> None:
    stop, received = stop_on_signals()  # a plain run too: claims left held waited out their lease
    failed = config = False
    with Exporter(project) as exporter:
        while True:
            summaries = run_with_progress(exporter, selected, options, stop, show=not as_json)
            failed = failed or not all(s.ok for s in summaries)
            config = config or any(s.config_error for s in summaries)
            render(summaries, as_json, options.dry_run)
            if every is None or stop.wait(every):
                break
    broken = [p for p in project.problems if not names or p.name in names]
    for problem in broken:
        click.echo(typed_here(f"sluicegate: task {problem.name} skipped: {problem.message}"), err=True)
    code = 2 if broken or config else 1 if failed else 0
    if received and every is None and not code:  # stopped short: what is left is still pending
        code = 128 + received[0]
    sys.exit(code)


def stop_on_signals() -> tuple[threading.Event, list[int]]:
    """SIGINT and SIGTERM set the event: the run finishes the batch in hand (its files placed, its
    claims committed or given back), then stops; a second one stops it at once. Also the signals
    received, first first."""
    stop, received = threading.Event(), []

    def say(text: str) -> None:  # not click.echo: the handler may run inside a write to stderr
        with contextlib.suppress(OSError):
            os.write(2, f"sluicegate: {text}\n".encode())

    def handler(signum: int, _frame: Any) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) > 1:  # asked twice: stop now, as on any error (see docs/guarantees.md)
            say(f"{name} again: stopping now")
            raise StopNow(128 + signum)
        say(f"{name}: finishing the batch in hand, then stopping (again: now)")
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop, received


def run_with_progress(
    exporter: Exporter, tasks: Sequence[Any], options: RunOptions, stop: threading.Event | None, *, show: bool
) -> list[TaskSummary]:
    """Run, with a progress bar per task in a terminal (partitions done of pending, rows, MB/s, ETA)."""
    if not (show and sys.stdout.isatty()) or options.dry_run:
        return exporter.run_once(tasks, options, stop=stop)
    with ProgressBars(exporter) as bars:
        return exporter.run_once(tasks, options, stop=stop, progress=bars.advance)
