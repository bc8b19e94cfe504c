"""How the CLI prints run summaries and the demo's table."""

from __future__ import annotations

from typing import Any

import click

from ..options import TaskSummary
from .app import echo_json


def render_run(summaries: list[TaskSummary], as_json: bool, dry_run: bool) -> None:
    if as_json:
        echo_json([s.as_dict() for s in summaries])
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


def render_summaries(summaries: list[TaskSummary], statuses: list[dict[str, Any]]) -> None:
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
