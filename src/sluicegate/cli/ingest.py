"""``ingest``: measurement messages into an ingest task's table."""

from __future__ import annotations

import sys
from typing import Any

import click

from .. import operations
from .app import echo_json, handled, load, main, typed_here
from .render import ingest_text


@main.command()
@click.argument("task")
@click.argument("source", type=click.File("rb"), required=False)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@handled
def ingest(task: str, source: Any, as_json: bool) -> None:
    """Ingest measurement messages into TASK's table: JSON lines from SOURCE (- for stdin), or else
    the task's SQS queue until it is empty. Known message ids are left alone; malformed messages
    are reported by id and skipped or parked (exit 1)."""
    project = load()
    name = "stdin" if source is not None and source.name == "<stdin>" else getattr(source, "name", "-")
    summary = operations.ingest(project, task, source, name=name)
    if as_json:
        echo_json(summary.as_dict())
    else:
        click.echo(f"{task}: {ingest_text(summary.as_dict())}")
    for entry in summary.malformed:
        what = "skipped" if summary.malformed_setting != "park" else "parked"
        what += " before" if entry.get("parked_before") else ""  # sent again: it is parked once
        click.echo(typed_here(f"sluicegate: {what}: {entry['error']}"), err=True)
    if summary.malformed_count > len(summary.malformed):
        click.echo(f"sluicegate: ... and {summary.malformed_count - len(summary.malformed)} more", err=True)
    sys.exit(1 if summary.malformed_count else 0)
