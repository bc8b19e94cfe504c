"""``blocks``: run a blocks task over a range of time blocks, with atd-mds's flags and semantics."""

from __future__ import annotations

from collections import Counter

import click

from .. import block_requests
from ..options import RunOptions, TaskSummary
from ..timeblocks import MAX_BLOCKS
from .app import handled, load, main, typed_here
from .run import run_loop


@main.command(name="blocks")
@click.argument("task")
@click.option(
    "--time-max",
    required=True,
    help="The end of the last block: yyyy-mm-dd-hh in the task's zone, or ISO 8601.",
)
@click.option("--time-min", help="Only blocks ending after this time (the range is exclusive here).")
@click.option(
    "--interval",
    type=click.IntRange(1, MAX_BLOCKS),
    default=1,
    show_default=True,
    help="Hours back from --time-max; ignored when --time-min is given.",
)
@click.option("--key", help="Only this key value, e.g. provider=lime.")
@click.option("--provider", hidden=True, help="atd-mds's name for --key.")
@click.option(
    "--force", is_flag=True, help="Re-run done stages: their status (and later stages') is reset first."
)
@click.option("--incomplete-only", is_flag=True, help="Also take blocks whose stages were parked as failed.")
@click.option(
    "--dry-run", is_flag=True, help="Print each (block, stage) that would run and why; change nothing."
)
@click.option("--no-extract", is_flag=True, help="Skip the extract stage.")
@click.option("--no-load", "--no-sync-db", "no_load", is_flag=True, help="Skip the load stage.")
@click.option("--no-publish", "--no-sync-socrata", "no_publish", is_flag=True, help="Skip the publish stage.")
@click.option("--stage", "stages", multiple=True, help="Run only this stage (repeat for several).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@handled
def blocks(
    task: str,
    time_max: str,
    time_min: str | None,
    interval: int,
    key: str | None,
    provider: str | None,
    force: bool,
    incomplete_only: bool,
    dry_run: bool,
    no_extract: bool,
    no_load: bool,
    no_publish: bool,
    stages: tuple[str, ...],
    as_json: bool,
) -> None:
    """Run the stages of TASK's time blocks ending in (--time-min, --time-max]."""
    project = load()
    spec = block_requests.blocks_task(project, task)
    skip = [
        name for name, off in (("extract", no_extract), ("load", no_load), ("publish", no_publish)) if off
    ]
    request, _ = block_requests.blocks_request(  # the warning is logged
        project,
        spec,
        time_max=time_max,
        time_min=time_min,
        interval=interval,
        key=key or provider,
        stages=stages,
        skip=skip,
        force=force,
        incomplete_only=incomplete_only,
    )
    options = RunOptions(blocks=request, dry_run=dry_run)
    run_loop(project, [spec], options, every=None, as_json=as_json, names=(task,), render=render_blocks)


def render_blocks(summaries: list[TaskSummary], as_json: bool, dry_run: bool) -> None:
    """One line per task (counts per stage), then each failure; the plan for a dry run."""
    from .render import render_blocks_plan, render_run

    if as_json:
        render_run(summaries, as_json, dry_run)
        return
    for s in summaries:
        if dry_run:
            render_blocks_plan(s)
            continue
        counts: dict[str, Counter[str]] = {}
        last = {(e["key"], e["block"], e["stage"]): e for e in s.stages}  # a failure retried since: its end
        for entry in last.values():
            counts.setdefault(entry["stage"], Counter())[entry["status"]] += 1
        per_stage = "; ".join(
            f"{stage} " + ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in c.items())
            for stage, c in counts.items()
        )
        click.echo(f"{s.task}: {per_stage or 'nothing to run'} in {s.seconds:.2f}s")
        for error in s.errors:
            click.echo(typed_here(f"  error: {error}"), err=True)
        for error in s.task_errors:
            click.echo(typed_here(f"  task error: {error}"), err=True)
