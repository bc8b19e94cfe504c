"""How the CLI prints run summaries and the demo's table."""

from __future__ import annotations

from typing import Any

import click

from ..exceptions import printable
from ..options import TaskSummary
from .app import echo_json, typed_here


def render_blocks_plan(s: TaskSummary) -> None:
    """A blocks task's dry run: each (block, stage) that would run, and why; those it would park."""
    parks = [e for e in s.plan if e.get("parks")]
    click.echo(f"{s.task}: {len(s.plan) - len(parks)} (block, stage) would run")
    for entry in s.plan:
        who = f"{printable(entry['key'])} " if entry["key"] else ""
        why = (
            f"parked, not run: {entry['reason']}; then 'sluicegate blocks {s.task} --time-max"
            f" {entry['end']} --incomplete-only' retries it"
            if entry.get("parks")
            else entry["reason"]
        )
        click.echo(typed_here(f"  {who}{entry['block']} {entry['stage']} ({why})"))
    for error in s.task_errors:  # why it would not run (exit 2): a bad key query, ...
        click.echo(typed_here(f"  task error: {error}"), err=True)


def render_run(summaries: list[TaskSummary], as_json: bool, dry_run: bool) -> None:
    if as_json:
        echo_json([s.as_dict() for s in summaries])
        return
    for s in summaries:
        if dry_run and s.plan and "stage" in s.plan[0]:  # a blocks task's (block, stage) rows
            render_blocks_plan(s)
            continue
        if dry_run:
            waiting = sum(1 for entry in s.plan if entry.get("waiting"))
            later = f"; {waiting} more wait until their period is complete" if waiting else ""
            due = len(s.plan) - waiting
            if s.plan_cut:  # the listing stopped at --limit: the count is a floor
                more = f" (the first {due} listed; --limit N lists more)"
                click.echo(f"{s.task}: at least {due} partition(s) would be exported{more}{later}")
            else:
                click.echo(f"{s.task}: {due} partition(s) would be exported{later}")
            for entry in s.plan:
                keys = " ".join(f"{k}={printable(v)}" for k, v in entry["partition"].items())
                window = f" [{entry['start']}, {entry['end']})" if "start" in entry else ""
                click.echo(
                    f"  {keys}{window}  ({entry['reason']}) -> {entry.get('path') or entry.get('error')}"
                )
            for note in s.entities:
                what = note.get("note") or f"error: {note.get('error')}"  # a failure: its reason, not a blank
                click.echo(f"  {entity_text(note)}{what}")
            for error in s.task_errors:  # why the task has no plan (its exit code is 2 or 1)
                click.echo(typed_here(f"  task error: {error}"), err=True)
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
            click.echo(f"  {entity_text(entry)}{what}")
        if s.ingest is not None:
            click.echo(f"  {ingest_text(s.ingest)}")
        for ev in s.aggregate:
            what = {
                "skipped": "already evaluated, or being evaluated by another worker",
                "superseded": f"superseded, {ev['rows']:,} rows not written: {ev['error']}",
                "lost": f"given back, no attempt counted (the run ended while it waited): {ev['error']}",
            }.get(ev["state"], f"{ev['state']}, {ev['rows']:,} rows into {ev['table']}")
            click.echo(f"  t={ev['tick']} [{ev['window_start']}, {ev['window_end']}): {what}")
        for error in s.errors:
            click.echo(typed_here(f"  error: {error}"), err=True)
        for error in s.task_errors:
            click.echo(typed_here(f"  task error: {error}"), err=True)


def entity_text(entry: dict[str, Any]) -> str:
    """``entity=NAME: `` before a line about one entity; nothing before one about the task (None)."""
    return "" if entry["entity"] is None else f"entity={printable(entry['entity'])}: "


def ingest_text(counts: dict[str, Any]) -> str:
    """An ingest's counts on one line (or why there was nothing to ingest)."""
    if counts.get("note"):
        return str(counts["note"])
    kept = "skipped"
    if counts.get("malformed_setting") == "park":
        before = counts.get("already_parked", 0)
        kept = f"{counts['parked']:,} parked, {before:,} parked before" if before else "parked"
    return (
        f"{counts['received']:,} messages received, {counts['inserted']:,} inserted, "
        f"{counts['duplicates']:,} duplicates, {counts['malformed_count']:,} malformed ({kept})"
    )


def render_summaries(summaries: list[TaskSummary], statuses: list[dict[str, Any]]) -> None:
    """The demo's table: short headers, numbers never cut (it fits 80 columns, and pipes)."""
    from rich.console import Console
    from rich.table import Table

    caption = "same: unchanged bytes, not rewritten; waiting: local day not over"
    table = Table(title="sluicegate demo", caption=caption)
    for name in ("task", "files", "same", "failed", "waiting", "rows", "MB", "s"):
        table.add_column(name, justify="left" if name == "task" else "right", no_wrap=True)
    waiting = {st["task"]: st.get("waiting", 0) for st in statuses}
    for s in summaries:
        table.add_row(
            s.task,
            f"{s.exported:,}",
            f"{s.unchanged:,}",
            f"{s.failed:,}",
            f"{waiting.get(s.task, 0):,}",
            f"{s.rows:,}",
            f"{s.bytes / 1e6:,.1f}",
            f"{s.seconds:.1f}",
        )
    Console(width=max(80, Console().width)).print(table)


class ProgressBars:
    """A Rich progress bar per task: units done of pending (counted when the task starts), rows, MB/s, ETA."""

    def __init__(self, exporter: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.exporter = exporter
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rows]} rows, {task.fields[rate]}"),
            TimeRemainingColumn(),
            transient=True,
        )
        self.ids: dict[str, Any] = {}
        self.started: dict[str, float] = {}

    def __enter__(self) -> ProgressBars:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def advance(self, summary: TaskSummary, claimed: int) -> None:
        """A batch of ``claimed`` units of ``summary.task`` was taken."""
        import time

        name = summary.task
        if name not in self.ids:
            self.started[name] = time.monotonic() - 1e-3
            total = claimed + self._pending(name)
            self.ids[name] = self.bar.add_task(f"exporting {name}", total=total, rows="0", rate="-")
        elapsed = time.monotonic() - self.started[name]
        rate = f"{summary.bytes / elapsed / 1e6:.1f} MB/s"
        self.bar.update(self.ids[name], advance=claimed, rows=f"{summary.rows:,}", rate=rate)

    def _pending(self, name: str) -> int:
        """What is still pending for the task, from the ledger (0 when it cannot tell)."""
        from ..exceptions import SluicegateError

        task = self.exporter.project.tasks.get(name)
        try:
            return int(self.exporter.context.ledger.partitions.status(task).pending)
        except (SluicegateError, AttributeError):
            return 0


class ScanBar:
    """A Rich progress bar for a long scan (``update(done, total)``); silent when not a terminal."""

    def __init__(self, description: str) -> None:
        import sys

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.show = sys.stdout.isatty()
        self.bar = Progress(
            TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
        )
        self.id: Any = None

    def __enter__(self) -> ScanBar:
        if self.show:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.show:
            self.bar.__exit__(*exc)

    def update(self, done: int, total: int) -> None:
        """``done`` of ``total`` steps (weeks of rows, for a backfill) are finished."""
        if not self.show:
            return
        if self.id is None:
            self.id = self.bar.add_task("", total=total)
        self.bar.update(self.id, completed=done, total=total)
