"""``changes``: what the change feed says changed since a time, a run or a manifest."""

from __future__ import annotations

import click

from ..changes import list_changes
from .app import echo_json, handled, load, main


@main.command()
@click.argument("task", required=False)
@click.option(
    "--since",
    required=True,
    metavar="TIME|RUN_ID|RUN_ID-SEQ",
    help="Changes written after this ISO 8601 time (UTC without an offset), after the last "
    "manifest of this run (the 32 hex digits of its manifests' names), or after this manifest "
    "(the run and seq of the last entry you saw: each later entry once).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
@handled
def changes(task: str | None, since: str, as_json: bool) -> None:
    """List the files published or deleted since a time or a run (of TASK, or of every task),
    from the manifests under _manifests/ in the destination: the latest entry per file, oldest
    first. The feed is at-least-once: skip what you have by (path, sha256, version)."""
    entries = list_changes(load(), since=since, task=task)
    if as_json:
        echo_json([e.as_json() for e in entries])
        return
    for e in entries:
        sha = (e.sha256 or "-")[:12]
        click.echo(f"{e.time}  {e.action:<9}  {e.path}  {e.rows} rows  {e.bytes} bytes  {sha}  run {e.run}")
    if not entries:
        click.echo(f"no changes since {since}", err=True)
